"""Guest RAM as devices see it: bounds-checked, zero-copy views.

``GuestMemory`` knows the guest-physical ranges backed by RAM (on ``pc``:
``ram-below-4g`` and ``ram-above-4g``, both windows onto one anonymous
mapping) and hands out ``memoryview`` slices of that mapping. Every
address a guest gives a device goes through ``view``, which refuses
anything not wholly inside one RAM range: a request never reaches ROM,
MMIO holes or host memory outside the guest. The views stay valid for the
life of the VM (guest RAM is never remapped).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


class GuestMemoryError(Exception):
    """A guest-supplied address range is not guest RAM."""


@dataclass(frozen=True)
class RamRange:
    start: int
    data: memoryview

    @property
    def end(self) -> int:
        return self.start + len(self.data)


class GuestMemory:
    """The RAM ranges of a guest, sorted and non-overlapping."""

    def __init__(self, ranges: list[tuple[int, memoryview]]) -> None:
        self._ranges = sorted((RamRange(start, data.cast("B")) for start, data in ranges),
                              key=lambda r: r.start)
        self._starts = [r.start for r in self._ranges]

    def view(self, address: int, length: int) -> memoryview:
        """``length`` bytes of RAM at ``address``, shared with the guest."""
        if length < 0 or address < 0:
            raise GuestMemoryError(f"bad guest range {address:#x}+{length:#x}")
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0:
            ram = self._ranges[index]
            if address + length <= ram.end:
                offset = address - ram.start
                return ram.data[offset:offset + length]
        raise GuestMemoryError(f"guest range {address:#x}+{length:#x} is not RAM")

    def read(self, address: int, length: int) -> bytes:
        return bytes(self.view(address, length))

    def write(self, address: int, data: bytes) -> None:
        self.view(address, len(data))[:] = data
