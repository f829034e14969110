"""An I/O bus: address ranges mapped to device handlers.

``IoBus`` maps ``[base, base + size)`` to a handler and dispatches an
access to it with the offset inside the range. An access wider than the
handler takes (``max_access``, QEMU's ``impl.max_access_size``) is split
into narrower ones, little-endian, as QEMU's ``access_with_adjusted_size``
does; each piece is dispatched on its own, so a wide access that runs past
a device reaches whatever is next. Nobody owns an address: the access is
traced (logger ``vmd.hw.bus``, debug level) and reads return what QEMU
returns there, all ones for port I/O and zero for memory.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class IoHandler(Protocol):
    """What a device (or one of its regions) implements."""

    def read(self, offset: int, size: int) -> int:
        """The value at ``offset`` in the region, ``size`` bytes wide."""

    def write(self, offset: int, size: int, value: int) -> None:
        """Store ``value`` (``size`` bytes wide) at ``offset``."""


@dataclass(frozen=True)
class Mapping:
    """One claimed range."""

    base: int
    size: int
    handler: IoHandler
    name: str
    max_access: int = 1

    @property
    def end(self) -> int:
        return self.base + self.size


class BusError(Exception):
    """A mapping overlaps another one (a wiring bug of the machine)."""


class IoBus:
    """A port-I/O or MMIO address space; mapping changes happen under the BQL."""

    def __init__(self, name: str, unassigned_all_ones: bool) -> None:
        self.name = name
        self._all_ones = unassigned_all_ones
        self._bases: list[int] = []
        self._mappings: list[Mapping] = []

    def map(self, base: int, size: int, handler: IoHandler, name: str,
            max_access: int = 1) -> Mapping:
        """Claim ``[base, base + size)`` for ``handler``."""
        if size <= 0:
            raise BusError(f"{self.name}: empty region '{name}'")
        mapping = Mapping(base, size, handler, name, max_access)
        index = bisect.bisect_left(self._bases, base)
        neighbours = self._mappings[max(index - 1, 0):index + 1]
        for other in neighbours:
            if base < other.end and other.base < mapping.end:
                raise BusError(f"{self.name}: '{name}' at 0x{base:x} overlaps "
                               f"'{other.name}' at 0x{other.base:x}")
        self._bases.insert(index, base)
        self._mappings.insert(index, mapping)
        return mapping

    def unmap(self, mapping: Mapping) -> None:
        index = self._mappings.index(mapping)
        del self._bases[index]
        del self._mappings[index]

    def mappings(self) -> list[Mapping]:
        return list(self._mappings)

    def find(self, addr: int) -> Mapping | None:
        """The mapping that contains ``addr``, if any."""
        index = bisect.bisect_right(self._bases, addr) - 1
        if index >= 0 and addr < self._mappings[index].end:
            return self._mappings[index]
        return None

    def read(self, addr: int, size: int) -> int:
        mapping = self.find(addr)
        if mapping is not None and self._fits(mapping, addr, size):
            return mapping.handler.read(addr - mapping.base, size)
        if mapping is None and size == 1:
            log.debug("%s: read of unassigned 0x%x", self.name, addr)
            return 0xFF if self._all_ones else 0
        value = 0
        for i in range(size):
            value |= self.read(addr + i, 1) << (8 * i)
        return value

    def write(self, addr: int, size: int, value: int) -> None:
        mapping = self.find(addr)
        if mapping is not None and self._fits(mapping, addr, size):
            mapping.handler.write(addr - mapping.base, size, value)
        elif mapping is None and size == 1:
            log.debug("%s: write 0x%x to unassigned 0x%x", self.name, value, addr)
        else:
            for i in range(size):
                self.write(addr + i, 1, (value >> (8 * i)) & 0xFF)

    @staticmethod
    def _fits(mapping: Mapping, addr: int, size: int) -> bool:
        return size <= mapping.max_access and addr + size <= mapping.end
