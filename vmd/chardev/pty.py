"""The ``pty`` chardev (QEMU's char-pty.c).

A pseudo-terminal pair in raw mode; the guest side is the master, users
open the slave, reported as ``{"pty": "/dev/pts/N"}`` by ``chardev-add``.
QEMU closes its slave fd and counts the pty as connected only while
someone has the slave open, and so does vmd: a master whose slave is
closed polls with POLLHUP and reads fail with EIO. On EIO (or at open when
nobody has the slave) the chardev is disconnected, its output dropped,
and the master is polled every ``POLL_INTERVAL`` seconds with
``loop.call_later`` until the slave is open again (QEMU's pty_chr_timer).
As in QEMU, a write while disconnected looks for a slave opened since the
last poll and sends to it (so a guest that prints right after a user
opens the pty loses nothing); the poll still reports the connection.
"""

from __future__ import annotations

import asyncio
import os
import select
import termios
from typing import Any

from vmd.chardev.base import Chardev, ChardevError
from vmd.chardev.fdstream import FdChardev
from vmd.chardev.registry import ChardevRegistry, backend


def _make_raw(fd: int) -> None:
    """cfmakeraw(3)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
               | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class PtyChardev(FdChardev):
    kind = "pty"
    POLL_INTERVAL = 1.0

    def __init__(self, chardev_id: str) -> None:
        super().__init__(chardev_id)
        self.path = ""
        self._master = -1
        self._timer: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        try:
            master, slave = os.openpty()
        except OSError as error:
            raise ChardevError(f"Failed to create PTY: {os.strerror(error.errno or 0)}") from None
        try:
            _make_raw(slave)
            self.path = os.ttyname(slave)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        os.set_inheritable(master, False)
        self._master = master
        stream = self._start(master, master, on_error=self._hangup, on_eof=self._hangup)
        stream.enable_input(False)
        self._poll()

    def filename(self) -> str:
        return f"pty:{self.path}"

    def extra_return(self) -> dict[str, str]:
        return {"pty": self.path}

    def _slave_open(self) -> bool:
        poller = select.poll()
        poller.register(self._master, select.POLLOUT)
        return not any(events & select.POLLHUP for _, events in poller.poll(0))

    def write(self, data: bytes) -> int:
        """QEMU's char_pty_chr_write: a slave may be back before the poll sees it."""
        if not self.connected and self.stream is not None and self._slave_open():
            return self._write(data)
        return super().write(data)

    def _poll(self) -> None:
        self._timer = None
        if self.stream is None:
            return
        if self._slave_open():
            self.stream.enable_input(True)
            self.set_connected(True)
        else:
            self._timer = asyncio.get_running_loop().call_later(self.POLL_INTERVAL, self._poll)

    def _hangup(self, error: OSError | None = None) -> None:
        if self.stream is None:
            return
        self.stream.enable_input(False)
        self.stream.discard_output()
        self.set_connected(False)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.POLL_INTERVAL, self._poll)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await super().close()


@backend("pty")
def _create(chardev_id: str, options: Any, registry: ChardevRegistry) -> Chardev:
    return PtyChardev(chardev_id)
