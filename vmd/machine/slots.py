"""Keeping KVM memory slots equal to the RAM and ROM of a flat view.

Each flat range backed by host memory is one slot (ROM read-only, so guest
writes to it exit as MMIO and are dropped, as on a PC). When the view
changes, slots that no longer match are deleted before new ones are added,
because KVM refuses overlapping slots.
"""

from __future__ import annotations

from vmd.accel import abi
from vmd.accel.kvm import Vm
from vmd.machine.memory import FlatRange

SlotKey = tuple[int, int, int, int]  # guest address, size, host address, flags


class KvmSlots:
    """The listener an ``AddressSpace`` calls with each new flat view."""

    def __init__(self, vm: Vm) -> None:
        self._vm = vm
        self._slots: dict[SlotKey, int] = {}
        self._free: list[int] = []
        self._next = 0

    def update(self, view: list[FlatRange]) -> None:
        wanted = {self._key(flat) for flat in view if flat.region.backing is not None}
        for key in [key for key in self._slots if key not in wanted]:
            slot = self._slots.pop(key)
            self._vm.set_memory_region(slot, key[0], 0, 0)
            self._free.append(slot)
        for key in sorted(wanted - self._slots.keys()):
            slot = self._free.pop() if self._free else self._allocate()
            self._vm.set_memory_region(slot, key[0], key[1], key[2], key[3])
            self._slots[key] = slot

    def slots(self) -> dict[SlotKey, int]:
        return dict(self._slots)

    def _allocate(self) -> int:
        self._next += 1
        return self._next - 1

    @staticmethod
    def _key(flat: FlatRange) -> SlotKey:
        flags = abi.MEM_READONLY if flat.region.kind == "rom" else 0
        return (flat.start, flat.end - flat.start, flat.region.host_address + flat.offset, flags)
