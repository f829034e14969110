"""fd sets: ``-add-fd fd=N,set=M`` and the ``/dev/fdset/M`` paths that use them.

A management tool that may not let vmd open a file itself (libvirt with
root-squashed NFS, or a confined vmd) opens it and passes the fd; every
place vmd opens a file by name accepts ``/dev/fdset/M`` instead and gets a
duplicate of the set's fd whose access mode (read, write, read-write)
matches, as QEMU's qemu_open() does: no such set is ENOENT, no fd with
the right mode is EACCES.

Threads: the sets are filled once at start-up, before any thread that
opens files exists, and only read afterwards (there is no ``add-fd``
command yet), so worker threads may open through them without a lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmd.cli.config import FdSetEntry

PREFIX = "/dev/fdset/"

_sets: dict[int, list[int]] = {}


def install(entries: list[FdSetEntry]) -> None:
    """Take the ``-add-fd`` fds (inherited from the parent, still open)."""
    for entry in entries:
        os.set_inheritable(entry.fd, False)
        _sets.setdefault(entry.fdset, []).append(entry.fd)


def open_path(path: str, flags: int, mode: int = 0o666) -> int:
    """``os.open``, or a duplicate from the fd set that ``path`` names."""
    if not path.startswith(PREFIX):
        return os.open(path, flags, mode)
    try:
        fds = _sets[int(path[len(PREFIX):])]
    except (ValueError, KeyError):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
    for fd in fds:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == flags & os.O_ACCMODE:
            dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)
            if flags & os.O_NONBLOCK:
                os.set_blocking(dup, False)
            return dup
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
