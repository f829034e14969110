"""Loading a guest kernel: what goes where in memory, and the entry state.

``-kernel`` takes what QEMU takes: a multiboot (v1) image (``multiboot``)
or a Linux bzImage (``linux``). A loader returns a ``BootImage``: the blobs
to copy into guest memory and the boot CPU's entry state. The board applies
it at start and again at every reset, as QEMU's ROM blobs and option ROM
reload the kernel on each boot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmd.machine.x86 import EntryState


class BootError(Exception):
    """The kernel image or an initrd cannot be loaded; QEMU's wording."""


@dataclass
class BootImage:
    entry: EntryState
    blobs: list[tuple[int, bytes]] = field(default_factory=list)


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise BootError(f"could not load {what} '{path}': {error.strerror}") from None
