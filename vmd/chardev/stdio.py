"""The ``stdio`` chardev (QEMU's char-stdio.c): the daemon's fd 0 and 1.

Only one chardev may use stdio at a time. The fds are reopened through
/proc/self/fd where possible, so that O_NONBLOCK is set on vmd's own open
file description rather than on the terminal or pipe it shares with its
parent (QEMU sets it on fd 0 itself; a socket cannot be reopened and gets
a dup with O_NONBLOCK, which is shared). Unlike QEMU, which closes fd 0
and 1 on ``chardev-remove``, vmd closes only its copies, so stdio can be
added again.

When stdin is a terminal it is put in QEMU's character mode (no echo, no
line editing, 8 bits) while the chardev exists, and with ``signal: false``
also without ISIG, so Ctrl-C reaches the guest instead of killing vmd. The
old settings are restored at close and, should vmd exit without closing,
at exit.
"""

from __future__ import annotations

import atexit
import os
import stat
import sys
import termios
from typing import Any

from vmd.chardev.base import Chardev, ChardevError
from vmd.chardev.fdstream import FdChardev
from vmd.chardev.registry import ChardevRegistry, backend

_in_use = False
_saved_termios: list[Any] | None = None
#: The open stdio chardev, if any (text for the process's stdout goes through it).
_current: StdioChardev | None = None


def write_process_stdout(text: str) -> None:
    """What QEMU prints on its stdout (qemu-io's reports, "Formatting ..."):
    through the stdio chardev when one owns fd 1, so it stays in order with
    that chardev's output (a -qmp stdio monitor's replies), else directly."""
    if _current is not None:
        _current.write(text.encode())
        return
    sys.stdout.write(text)
    sys.stdout.flush()


def _private_fd(fd: int, flags: int) -> int:
    """A non-blocking fd for what ``fd`` refers to, not shared if possible.

    A regular file is shared as it is (a dup): reopening it would start a
    new file offset at 0 and overwrite what the parent wrote before vmd,
    and O_NONBLOCK means nothing for it anyway."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return os.dup(fd)
    try:
        return os.open(f"/proc/self/fd/{fd}", flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        copy = os.dup(fd)
        os.set_blocking(copy, False)
        return copy


def _restore_termios() -> None:
    global _saved_termios
    if _saved_termios is not None:
        try:
            termios.tcsetattr(StdioChardev.STDIN_FD, termios.TCSANOW, _saved_termios)
        except (OSError, termios.error):
            pass
        _saved_termios = None


atexit.register(_restore_termios)


class StdioChardev(FdChardev):
    kind = "stdio"
    STDIN_FD = 0
    STDOUT_FD = 1

    def __init__(self, chardev_id: str, signal: bool = True) -> None:
        super().__init__(chardev_id)
        self.signal = signal
        self._owner = False

    async def open(self) -> None:
        global _in_use
        if _in_use:
            raise ChardevError("cannot use stdio by multiple character devices")
        try:
            in_fd = _private_fd(self.STDIN_FD, os.O_RDONLY)
        except OSError as error:
            raise ChardevError(f"Failed to set FD nonblocking: {os.strerror(error.errno or 0)}") from None
        try:
            out_fd = _private_fd(self.STDOUT_FD, os.O_WRONLY)
        except OSError as error:
            os.close(in_fd)
            raise ChardevError(f"Failed to set FD nonblocking: {os.strerror(error.errno or 0)}") from None
        global _current
        _in_use = self._owner = True
        _current = self
        self._set_terminal_mode()
        self._start(in_fd, out_fd)
        self.set_connected(True)

    def _set_terminal_mode(self) -> None:
        global _saved_termios
        fd = self.STDIN_FD
        if not os.isatty(fd):
            return
        try:
            old = termios.tcgetattr(fd)
        except termios.error:
            return
        iflag, oflag, cflag, lflag = (int(flag) for flag in old[:4])
        ispeed, ospeed, cc = old[4], old[5], list(old[6])
        iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                   | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        oflag |= termios.OPOST
        lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
        if not self.signal:
            lflag &= ~termios.ISIG
        cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        cc[termios.VMIN] = 1
        cc[termios.VTIME] = 0
        _saved_termios = old
        termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])

    async def close(self) -> None:
        global _in_use, _current
        await super().close()
        if self._owner:
            _restore_termios()
            _in_use = self._owner = False
            _current = None


@backend("stdio")
def _create(chardev_id: str, options: Any, registry: ChardevRegistry) -> Chardev:
    signal = getattr(options, "signal", None)
    return StdioChardev(chardev_id, True if signal is None else signal)
