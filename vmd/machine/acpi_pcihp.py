"""ACPI PCI hotplug of the ``pc`` (QEMU's PIIX4 "acpi-pcihp" interface at 0xae00).

The guest's ACPI code (or a test guest) and vmd meet at six 32-bit
registers (QEMU's docs/specs/acpi_pci_hotplug.rst, 7.2 layout):

==========  =====================================================================
0xae00 UP    slots with a device added since the last read (reading clears it)
0xae04 DOWN  slots whose device the host asked to remove (``device_del``)
0xae08 EJ    write a slot bit: eject that slot's devices (the lowest bit set only)
0xae0c RMV   slots whose devices may be removed (the chipset's slot 0/1 not)
0xae10 SEL   the bus the other registers are about (0: ``pci.0``; writable)
0xae14 AIDX  the acpi-index of a slot (vmd's devices have none: reads 0)
==========  =====================================================================

Only 4-byte accesses count: others read 0 and do nothing, as QEMU's
``valid`` access sizes make them. A plug or an unplug request sets the
slot's bit and raises GPE0 status bit 1 (``ACPI_PCI_HOTPLUG_STATUS``), which
the SCI carries to the guest while the guest has enabled it. An eject
clears the slot's UP and DOWN bits and removes every function of the slot
that may be removed, whether or not the host asked (QEMU does not check),
through the ``eject`` callback the board gives. RMV is computed at reset,
as QEMU's ``acpi_pcihp_reset``: devices added later are removable.

Runs with the BQL held (vCPU threads, and the loop for QMP commands).
"""

from __future__ import annotations

from collections.abc import Callable

PCIHP_BASE = 0xAE00
PCIHP_SIZE = 0x18
UP, DOWN, EJECT, REMOVABLE, SELECT, ACPI_INDEX = range(0, PCIHP_SIZE, 4)
#: The GPE0 status bit of a PCI hotplug event (QEMU's ACPI_PCI_HOTPLUG_STATUS).
GPE_PCI_HOTPLUG = 1 << 1
#: Bus selectors QEMU has room for (ACPI_PCIHP_MAX_HOTPLUG_BUS).
MAX_BUSES = 256
ALL_SLOTS = 0xFFFFFFFF


class AcpiPciHotplug:
    """The register block for bus 0 (``pci.0``, bus selector 0).

    ``event()`` raises the GPE; ``eject(slot)`` removes a slot's devices;
    ``fixed_slots()`` are the slots holding devices that cannot be removed.
    """

    def __init__(self, event: Callable[[], None], eject: Callable[[int], None],
                 fixed_slots: Callable[[], set[int]]) -> None:
        self._event = event
        self._eject = eject
        self._fixed_slots = fixed_slots
        self.up = 0
        self.down = 0
        self.removable = ALL_SLOTS
        self.select = 0

    def reset(self) -> None:
        """Requests still pending are carried out (QEMU ejects them at reset)."""
        while self.down:
            self._eject_lowest(self.down)
        self.removable = ALL_SLOTS
        for slot in self._fixed_slots():
            self.removable &= ~(1 << slot)

    # -- the host side ----------------------------------------------------------

    def plugged(self, slot: int) -> None:
        """A device was added to ``slot`` of a running machine."""
        self.up |= 1 << slot
        self._event()

    def unplug_request(self, slot: int) -> None:
        """``device_del``: ask the guest to eject ``slot``."""
        self.down |= 1 << slot
        self._event()

    # -- the guest side (IoHandler) ------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size != 4 or self.select >= MAX_BUSES:
            return 0
        if offset == SELECT:
            return self.select
        if offset == REMOVABLE:
            return self.removable if self.select == 0 else ALL_SLOTS
        if self.select != 0 or offset not in (UP, DOWN):
            return 0
        if offset == UP:
            value, self.up = self.up, 0
            return value
        return self.down

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 4:
            return
        if offset == SELECT:
            self.select = value
        elif offset == EJECT and self.select == 0 and value:
            self._eject_lowest(value)

    def _eject_lowest(self, slots: int) -> None:
        slot = (slots & -slots).bit_length() - 1
        self.up &= ~(1 << slot)
        self.down &= ~(1 << slot)
        self._eject(slot)
