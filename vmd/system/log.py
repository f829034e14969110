"""Logging: one line per message, to stderr, the journal or a ``-D`` file.

* On a terminal lines read ``vmd: warning: text``, like QEMU's
  error_report(); trace events (``vmd.trace``) print bare, as QEMU's log
  backend prints them.
* Under systemd stderr is the journal and ``$JOURNAL_STREAM`` names it
  (``device:inode``); then each line starts with a ``<N>`` syslog priority,
  which journald turns into the record's priority.
* ``-D FILE`` sends the same lines to FILE instead; SIGHUP reopens it, so
  logrotate can move it away.

Every message is one line: newlines inside a message (a traceback, a
multi-line error) are written as ``\\n``, so journald and ``grep`` see one
record per message.

Threads: records are formatted where they are logged and queued; one
writer thread does the writes, so a slow terminal, a full pipe or a slow
disk never blocks the event loop. ``shutdown_logging`` drains the queue.
This is what ``logging.handlers``' QueueHandler and QueueListener do; they
are not used because that module (with ``pickle``, which it imports) costs
some 3 ms of every start.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from typing import TextIO

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
             logging.ERROR: 3, logging.CRITICAL: 2}


class _LineFormatter(logging.Formatter):
    """``vmd: level: text`` (or ``<N>text`` for the journal), on one line."""

    def __init__(self, journal: bool, timestamp: bool = False) -> None:
        super().__init__()
        self._journal = journal
        self._timestamp = timestamp

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\r", "").replace("\n", "\\n")
        if self._journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        if record.name != "vmd.trace":
            text = f"vmd: {record.levelname.lower()}: {text}"
        return f"{_utc_time(record.created)} {text}" if self._timestamp else text


def _utc_time(created: float) -> str:
    """``-msg timestamp=on``'s prefix, as QEMU's: 2026-12-02T04:45:13.117123Z."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{stamp}.{int(created % 1 * 1_000_000):06d}Z"


class _ReopenableStream(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stderr or to a file that ``reopen`` opens anew (SIGHUP)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        super().__init__(self._open() if path else sys.stderr)

    def _open(self) -> TextIO:
        assert self.path is not None
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def reopen(self) -> None:
        if self.path is None:
            return
        try:
            fresh = self._open()
        except OSError as error:
            logging.getLogger("vmd").error("cannot reopen log file %s: %s", self.path, error.strerror)
            return
        old = self.setStream(fresh)
        if old is not None:
            old.close()

    def close(self) -> None:
        if self.path is not None and self.stream is not None:
            self.stream.close()
        super().close()


class LogFileError(Exception):
    """``-D FILE`` cannot be opened; QEMU's wording."""


class _Logging:
    """The handler chain while vmd runs."""

    def __init__(self, path: str | None, timestamp: bool) -> None:
        try:
            self.output = _ReopenableStream(path)
        except OSError as error:
            raise LogFileError(f"Error opening logfile {path}: {error.strerror}") from None
        journal = path is None and _stderr_is_journal()
        self.output.setFormatter(_LineFormatter(journal, timestamp))
        self.enqueue = _Enqueue()
        self.listener = _Writer(self.enqueue.records, self.output)


class _Enqueue(logging.Handler):
    """Queues each record for the writer thread, its message made here.

    The arguments (which may change later) and any traceback are merged
    into the message where the record is made; the writer formats the line.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()

    def emit(self, record: logging.LogRecord) -> None:
        record.msg = record.message = self.format(record)
        record.args = record.exc_info = record.exc_text = record.stack_info = None
        self.records.put(record)


class _Writer:
    """The writer thread: hands queued records to the output handler."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None],
                 output: logging.Handler) -> None:
        self._records = records
        self._output = output
        self._thread = threading.Thread(target=self._run, name="vmd-log", daemon=True)

    def _run(self) -> None:
        while (record := self._records.get()) is not None:
            self._output.handle(record)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self._records.put(None)
        self._thread.join()


_active: _Logging | None = None


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        info = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


#: Loggers behind ``-d`` items, off unless asked for: devices report what a
#: guest does wrong to ``vmd.guest_errors``, what vmd lacks to ``vmd.unimp``.
LOG_ITEM_LOGGERS = {"guest_errors": "vmd.guest_errors", "unimp": "vmd.unimp"}


def setup_logging(logfile: str | None = None, log_items: list[str] | None = None,
                  timestamp: bool = False) -> None:
    """Send vmd's log records through the writer thread; raises LogFileError.

    ``timestamp`` (``-msg timestamp=on``) starts each line with the UTC time.
    """
    global _active
    shutdown_logging()
    active = _Logging(logfile, timestamp)
    root = logging.getLogger("vmd")
    root.addHandler(active.enqueue)
    root.setLevel(logging.INFO)
    root.propagate = False
    logging.getLogger("vmd.trace").setLevel(logging.DEBUG)  # each event has its own switch
    for item, name in LOG_ITEM_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.DEBUG if item in (log_items or []) else logging.CRITICAL + 1)
    active.listener.start()
    _active = active


def reopen_log_file() -> None:
    """SIGHUP: reopen the ``-D`` file; blocks on open(), so not on the loop."""
    if _active is not None:
        _active.output.reopen()  # swaps streams under the handler's lock


def shutdown_logging() -> None:
    """Write out what is queued and stop the writer thread."""
    global _active
    if _active is None:
        return
    active, _active = _active, None
    logging.getLogger("vmd").removeHandler(active.enqueue)
    active.listener.stop()
    active.output.close()
