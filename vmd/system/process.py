"""Process-level duties: ``-daemonize`` and ``-pidfile``.

``-daemonize`` forks before the event loop exists; the parent waits until
the child reports that it is ready (or that start-up failed: the child dies
and the parent exits 1, the child's error message already on stderr) and
exits with the matching status, so ``vmd -daemonize ...; qmp-shell`` in a
script never races the socket's creation, as with QEMU.

Under systemd (``Type=notify``) the parent is the main process systemd
knows. It announces the daemon with ``MAINPID=`` and ``READY=1`` before it
exits, and the daemon sends nothing to systemd until the parent is gone, so
that with ``NotifyAccess=main`` every later message comes from the main pid.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import stat
import sys

from vmd.system.sd_notify import Notifier


class StartupError(Exception):
    """Start-up failed; the message is printed as ``vmd: <message>``."""


class Daemonizer:
    """The child's end of the start-up handshake with its parent."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    async def ready(self) -> None:
        """Tell the parent start-up succeeded, wait until it has exited
        (having announced us to systemd), then detach from the terminal."""
        loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        await loop.sock_sendall(self._sock, f"{os.getpid()}\n".encode())
        await loop.sock_recv(self._sock, 1)  # end of file: the parent is gone
        self._sock.close()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)


def daemonize(notifier: Notifier) -> Daemonizer:
    """Fork; the parent exits when the child says ready (or dies)."""
    parent_end, child_end = socket.socketpair()
    if os.fork() > 0:
        child_end.close()
        reply = parent_end.recv(32)
        if not reply.endswith(b"\n"):
            os._exit(1)
        notifier.send(MAINPID=int(reply), READY=1)
        os._exit(0)
    parent_end.close()
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    return Daemonizer(child_end)


class PidFile:
    """A locked pid file, removed when the daemon exits (QEMU's -pidfile).

    Only a regular file is ever written or removed: ``-pidfile /dev/null``
    fails at start-up instead of deleting /dev/null at exit.
    """

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
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(self._fd)
            raise StartupError("cannot create PID file: Failed to write pid file: not a regular file")
        self._inode = (info.st_dev, info.st_ino)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def remove(self) -> None:
        """Unlink the file, unless the path names another file by now."""
        try:
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError as error:
            print(f"vmd: could not remove PID file: {error}", file=sys.stderr)
        os.close(self._fd)
