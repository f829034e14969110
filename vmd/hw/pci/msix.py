"""MSI-X: the capability, the vector table and pending-bit array in a BAR.

The guest programs each vector's address/data and mask bit in the table;
``notify(vector)`` delivers it: through ``MsiRoutes`` (on KVM a GSI route
plus an irqfd, so delivery is one eventfd write from any thread) when the
vector and the function are unmasked, otherwise by setting the vector's
pending bit, delivered when the guest unmasks (PCI spec 6.8.3.5). The
route of a vector is (re)programmed lazily at delivery when its
address/data changed. Table and PBA accesses come from vCPU threads,
``notify`` from any thread; all with the BQL held.
"""

from __future__ import annotations

from typing import Protocol

from vmd.hw.pci import config as cfg
from vmd.hw.pci.device import Bar, PciDevice

ENTRY_SIZE = 16
ENTRY_VECTOR_CTRL = 12
VECTOR_MASKED = 0x1
CONTROL_ENABLE = 0x8000
CONTROL_MASKALL = 0x4000
CAP_SIZE = 12
#: QEMU's virtio-pci layout of the exclusive MSI-X BAR.
TABLE_OFFSET = 0
PBA_OFFSET = 0x800
BAR_SIZE = 0x1000


class MsiVector(Protocol):
    """One interrupt source bound to an MSI message."""

    def fire(self, address: int, data: int) -> None:
        """Deliver the message (reprogramming the route if it changed)."""

    def release(self) -> None:
        """Give back the route and eventfd."""


class MsiRoutes(Protocol):
    """Where MSI vectors come from (``vmd.machine.msi`` on KVM)."""

    def vector(self) -> MsiVector:
        """A new, unrouted vector."""


class Msix:
    """The MSI-X state of one function with ``count`` vectors in BAR ``bar_index``."""

    def __init__(self, device: PciDevice, count: int, bar_index: int) -> None:
        self.device = device
        self.count = count
        self.table = bytearray(count * ENTRY_SIZE)
        self.pba = bytearray((count + 63) // 64 * 8)
        self._vectors: dict[int, MsiVector] = {}
        self.cap = device.config.add_capability(cfg.CAP_ID_MSIX, CAP_SIZE)
        device.config.set_word(self.cap + 2, count - 1, wmask=CONTROL_ENABLE | CONTROL_MASKALL)
        device.config.set_long(self.cap + 4, TABLE_OFFSET | bar_index)
        device.config.set_long(self.cap + 8, PBA_OFFSET | bar_index)
        self.bar = device.add_bar(Bar(bar_index, BAR_SIZE, io=False, handler=self, name="msix"))
        self.reset()

    # -- state ----------------------------------------------------------------

    @property
    def control(self) -> int:
        return self.device.config.get(self.cap + 2, 2)

    @property
    def enabled(self) -> bool:
        return bool(self.control & CONTROL_ENABLE)

    def masked(self, vector: int) -> bool:
        if self.control & CONTROL_MASKALL:
            return True
        return bool(self._entry(vector, ENTRY_VECTOR_CTRL) & VECTOR_MASKED)

    def _entry(self, vector: int, field: int) -> int:
        at = vector * ENTRY_SIZE + field
        return int.from_bytes(self.table[at:at + 4], "little")

    def message(self, vector: int) -> tuple[int, int]:
        return self._entry(vector, 0) | self._entry(vector, 4) << 32, self._entry(vector, 8)

    def reset(self) -> None:
        """All vectors masked, nothing pending, MSI-X disabled."""
        self.table[:] = bytes(len(self.table))
        for vector in range(self.count):
            self.table[vector * ENTRY_SIZE + ENTRY_VECTOR_CTRL] = VECTOR_MASKED
        self.pba[:] = bytes(len(self.pba))
        control = self.device.config.get(self.cap + 2, 2)
        self.device.config.set_word(self.cap + 2, control & ~(CONTROL_ENABLE | CONTROL_MASKALL))
        for routed in self._vectors.values():
            routed.release()
        self._vectors.clear()

    # -- delivery ----------------------------------------------------------------

    def notify(self, vector: int) -> None:
        """Signal ``vector`` (ignored when out of range, as QEMU's msix_notify)."""
        if not 0 <= vector < self.count or not self.enabled:
            return
        if self.masked(vector):
            self.pba[vector // 8] |= 1 << (vector % 8)
            return
        self._fire(vector)

    def _fire(self, vector: int) -> None:
        routes = self.device.msi_routes
        if routes is None:
            return
        routed = self._vectors.get(vector)
        if routed is None:
            routed = self._vectors[vector] = routes.vector()
        routed.fire(*self.message(vector))

    def _deliver_pending(self) -> None:
        if not self.enabled:
            return
        for vector in range(self.count):
            if self.pba[vector // 8] & (1 << (vector % 8)) and not self.masked(vector):
                self.pba[vector // 8] &= ~(1 << (vector % 8))
                self._fire(vector)

    def control_written(self) -> None:
        """The guest wrote the capability: unmasking delivers what is pending."""
        self._deliver_pending()

    # -- the BAR (table at 0, PBA at 0x800) ----------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset < PBA_OFFSET:
            source, at = self.table, offset - TABLE_OFFSET
        else:
            source, at = self.pba, offset - PBA_OFFSET
        return int.from_bytes(source[at:at + size].ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= len(self.table):
            return  # the PBA is read-only; the hole between them ignores writes
        data = value.to_bytes(size, "little")[:len(self.table) - offset]
        self.table[offset:offset + len(data)] = data
        self._deliver_pending()
