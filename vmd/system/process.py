"""Process-level duties: ``-daemonize`` and ``-pidfile``.

``-daemonize`` forks before the event loop exists; the parent waits until
the child reports that its monitors are listening (or that start-up failed)
and exits with the matching status, so ``vmd -daemonize ...; qmp-shell``
in a script never races the socket's creation, as with QEMU.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys


class StartupError(Exception):
    """Start-up failed; the message is printed as ``vmd: <message>``."""


class Daemonizer:
    """The child's end of the start-up handshake with its parent."""

    def __init__(self, write_fd: int) -> None:
        self._write_fd = write_fd

    def ready(self) -> None:
        """Tell the parent start-up succeeded; detach from the terminal."""
        os.write(self._write_fd, b"\0")
        os.close(self._write_fd)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)


def daemonize() -> Daemonizer:
    """Fork; the parent exits when the child says ready (or dies)."""
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        status = os.read(read_fd, 1)
        os._exit(0 if status == b"\0" else 1)
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    return Daemonizer(write_fd)


class PidFile:
    """A locked pid file, removed when the daemon exits (QEMU's -pidfile)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StartupError(
                f"cannot create PID file: Cannot open pid file: "
                f"{error.strerror}") from None
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(self._fd)
            reason = os.strerror(error.errno or errno.EAGAIN)
            raise StartupError(
                f"cannot create PID file: Cannot lock pid file: {reason}"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError as error:
            print(f"vmd: could not remove PID file: {error}", file=sys.stderr)
        os.close(self._fd)
