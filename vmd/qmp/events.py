"""Broadcasting QMP events to every negotiated client.

Events are emitted from anywhere in vmd: the event loop, and later vCPU and
I/O worker threads. The message is stamped with the wall clock where it is
emitted, then handed to the loop thread, which alone touches connections.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Protocol

from vmd.qmp.json_writer import encode_message


class EventSink(Protocol):
    """A client connection as the broadcaster sees it."""

    def send_event(self, encoded: bytes) -> None: ...


class EventBroadcaster:
    """The ``emitter`` the generated ``qapi_event_send_*`` functions call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._sinks: set[EventSink] = set()

    def add(self, sink: EventSink) -> None:
        self._sinks.add(sink)

    def remove(self, sink: EventSink) -> None:
        self._sinks.discard(sink)

    def emit(self, name: str, data: dict[str, Any] | None) -> None:
        """Send event ``name`` to every client; callable from any thread."""
        seconds, microseconds = divmod(time.time_ns() // 1000, 1_000_000)
        message: dict[str, Any] = {
            "timestamp": {"seconds": seconds, "microseconds": microseconds},
            "event": name,
        }
        if data is not None:
            message["data"] = data
        encoded = encode_message(message)
        if threading.get_ident() == self._loop_thread:
            self._deliver(encoded)
        else:
            self._loop.call_soon_threadsafe(self._deliver, encoded)

    def _deliver(self, encoded: bytes) -> None:
        for sink in list(self._sinks):
            sink.send_event(encoded)
