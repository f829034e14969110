"""PCI configuration space: 256 bytes with per-byte write rules.

A device's configuration space is QEMU's trio of arrays: the bytes, a
write mask (bits the guest may change) and a write-1-to-clear mask
(status bits). Everything the guest writes passes through ``write``, so a
read-only field stays read-only whatever the guest does. Capabilities are
allocated upwards from 0x40 and linked at the head of the list, as QEMU's
``pci_add_capability`` does.
"""

from __future__ import annotations

CONFIG_SPACE_SIZE = 0x100

VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09
CLASS_DEVICE = 0x0A
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BASE_ADDRESS_0 = 0x10
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D

COMMAND_IO = 0x1
COMMAND_MEMORY = 0x2
COMMAND_MASTER = 0x4
COMMAND_SERR = 0x100
COMMAND_INTX_DISABLE = 0x400

STATUS_INTERRUPT = 0x08
STATUS_CAP_LIST = 0x10
#: Error bits the guest clears by writing 1 (QEMU's pci_init_w1cmask).
STATUS_W1C = 0xF900

HEADER_TYPE_MULTI_FUNCTION = 0x80

BAR_SPACE_IO = 0x1
BAR_MEM_TYPE_64 = 0x4
BAR_MEM_PREFETCH = 0x8

CAP_ID_VNDR = 0x09
CAP_ID_MSIX = 0x11
CAP_START = 0x40

#: QEMU's default subsystem ids (Red Hat / QEMU).
SUBSYSTEM_VENDOR_QEMU = 0x1AF4
SUBSYSTEM_QEMU = 0x1100


class ConfigSpace:
    """The bytes of one function's configuration space and their rules."""

    def __init__(self) -> None:
        self.data = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        self.w1cmask = bytearray(CONFIG_SPACE_SIZE)
        self._next_cap = CAP_START
        self.set_word(COMMAND, 0, wmask=COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER
                      | COMMAND_SERR | COMMAND_INTX_DISABLE)
        self.w1cmask[STATUS:STATUS + 2] = STATUS_W1C.to_bytes(2, "little")
        self.wmask[CACHE_LINE_SIZE] = 0xFF
        self.wmask[INTERRUPT_LINE] = 0xFF

    # -- device-side setters (the guest cannot undo these) --------------------

    def set_byte(self, offset: int, value: int, wmask: int | None = None) -> None:
        self._set(offset, 1, value, wmask)

    def set_word(self, offset: int, value: int, wmask: int | None = None) -> None:
        self._set(offset, 2, value, wmask)

    def set_long(self, offset: int, value: int, wmask: int | None = None) -> None:
        self._set(offset, 4, value, wmask)

    def _set(self, offset: int, size: int, value: int, wmask: int | None) -> None:
        self.data[offset:offset + size] = value.to_bytes(size, "little")
        if wmask is not None:
            self.wmask[offset:offset + size] = wmask.to_bytes(size, "little")

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def add_capability(self, cap_id: int, size: int) -> int:
        """Reserve ``size`` bytes for a capability; returns its offset."""
        offset = self._next_cap
        if offset + size > CONFIG_SPACE_SIZE:
            raise ValueError("PCI configuration space full")
        self._next_cap = (offset + size + 3) & ~3
        self.data[offset] = cap_id
        self.data[offset + 1] = self.data[CAPABILITY_LIST]
        self.data[CAPABILITY_LIST] = offset
        self.data[STATUS] |= STATUS_CAP_LIST
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """``(offset, id)`` of each capability, in list order."""
        found: list[tuple[int, int]] = []
        offset = self.data[CAPABILITY_LIST]
        while offset and len(found) < 48:
            found.append((offset, self.data[offset]))
            offset = self.data[offset + 1]
        return found

    # -- guest accesses --------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read; accesses past the end read as all ones."""
        if offset + size > CONFIG_SPACE_SIZE:
            return (1 << (8 * size)) - 1
        return self.get(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write: only writable bits change, W1C bits clear on 1."""
        for i in range(size):
            at = offset + i
            if at >= CONFIG_SPACE_SIZE:
                return
            byte = (value >> (8 * i)) & 0xFF
            wmask, w1c = self.wmask[at], self.w1cmask[at]
            self.data[at] = (self.data[at] & ~wmask) | (byte & wmask)
            self.data[at] &= ~(byte & w1c) & 0xFF
