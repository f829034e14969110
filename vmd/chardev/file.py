"""The ``file`` and ``pipe`` chardevs (QEMU's char-file.c, char-pipe.c).

``file`` writes output to ``out`` (truncated, or appended to with
``append``) and reads input from the optional ``in``. ``pipe`` opens
``DEVICE.in`` and ``DEVICE.out`` when both exist, else ``DEVICE`` for
both directions, read-write as QEMU does.

Everything is opened with O_NONBLOCK so that a FIFO never blocks the loop:
QEMU would wait in open(2) for the other end of a FIFO ``in`` or ``out``;
here an ``out`` FIFO without a reader fails with ENXIO instead, and an
``in`` FIFO simply has no input until a writer comes. As in QEMU, input
ends at EOF (vmd keeps the chardev connected, so output continues).
"""

from __future__ import annotations

import os
from typing import Any

from vmd.chardev.base import Chardev
from vmd.chardev.fdstream import FdChardev, open_fd
from vmd.chardev.registry import ChardevRegistry, backend


class FileChardev(FdChardev):
    kind = "file"

    def __init__(self, chardev_id: str, out: str, in_: str | None = None, append: bool = False) -> None:
        super().__init__(chardev_id)
        self.out_path = out
        self.in_path = in_
        self.append = append

    async def open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.append else os.O_TRUNC)
        out_fd = open_fd(self.out_path, flags)
        in_fd = None
        if self.in_path is not None:
            try:
                in_fd = open_fd(self.in_path, os.O_RDONLY)
            except BaseException:
                os.close(out_fd)
                raise
        self._start(in_fd, out_fd)
        self.set_connected(True)


class PipeChardev(FdChardev):
    kind = "pipe"

    def __init__(self, chardev_id: str, device: str) -> None:
        super().__init__(chardev_id)
        self.device = device

    async def open(self) -> None:
        fds = []
        try:
            for suffix in (".in", ".out"):
                fds.append(open_fd(self.device + suffix, os.O_RDWR))
        except Exception:
            for fd in fds:
                os.close(fd)
            fd = open_fd(self.device, os.O_RDWR)
            fds = [fd, fd]
        self._start(fds[0], fds[1])
        self.set_connected(True)


@backend("file")
def _create_file(chardev_id: str, options: Any, registry: ChardevRegistry) -> Chardev:
    return FileChardev(chardev_id, options.out, options.in_, bool(options.append))


@backend("pipe")
def _create_pipe(chardev_id: str, options: Any, registry: ChardevRegistry) -> Chardev:
    return PipeChardev(chardev_id, options.device)
