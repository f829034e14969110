"""Logging set-up: plain lines on a terminal, priorities under journald.

Under systemd, stderr is connected to the journal and ``JOURNAL_STREAM``
names it; then each line starts with a ``<N>`` syslog priority prefix, which
journald turns into the record's priority. Elsewhere lines read
``vmd: warning: text``, like QEMU's error_report().
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
             logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.level = record.levelname.lower()
        return super().format(record)


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        info = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def setup_logging(verbose: bool = False) -> None:
    """Send vmd's log records to stderr in the right format."""
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(_PlainFormatter("vmd: %(level)s: %(message)s"))
    root = logging.getLogger("vmd")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
