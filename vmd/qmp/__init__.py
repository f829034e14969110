"""QMP: the JSON control protocol (framing, dispatch, server, events)."""
