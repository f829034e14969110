"""Background jobs (QEMU's job.c): the state machine, verbs and events.

``core.Job`` is the base of every job (blockdev-create, and later commit,
stream, mirror, backup); ``registry.JobRegistry`` holds the daemon's jobs;
``commands`` serves the generic ``job-*`` QMP commands.
"""
