"""The ACPI power-management ports the FADT points at (PIIX4 PM at 0x600).

PM1 status/enable (0x600/0x602), PM1 control (0x604) and the 24-bit PM
timer (0x608, 3.579545 MHz), as QEMU's piix4 PM serves them: setting
SLP_EN with SLP_TYP 0 powers the machine off (``guest-shutdown``);
``system_powerdown`` presses the power button, which sets PWRBTN_STS if the
guest enabled it and raises the SCI (IRQ 9) while status & enable is set.
SCI_EN reads as set: there is no SMI command port to switch ACPI mode on.

The GPE0 block (0xafe0: two status bytes, write 1 to clear, then two
enable bytes) carries general-purpose events such as PCI hotplug
(``gpe_event``); as in QEMU's ``acpi_update_sci``, the SCI is also raised
while a status bit of the first byte is set and enabled.
Runs with the BQL held; ``power_button`` is called by the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from vmd.hw.irq import IrqLine

PM_BASE = 0x600
PM_SIZE = 12
GPE0_BASE = 0xAFE0
GPE0_SIZE = 4
SCI_IRQ = 9
PWRBTN = 1 << 8
SCI_EN = 1 << 0
SLP_EN = 1 << 13
TIMER_HZ = 3579545


class AcpiPm:
    """The PM1 event, control and timer registers (one 12-byte port range)."""

    def __init__(self, sci: IrqLine, shutdown: Callable[[], None]) -> None:
        self._sci = sci
        self._shutdown = shutdown
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.enable = 0
        self.control = SCI_EN
        self.gpe_status = 0
        self.gpe_enable = 0
        self._sci.set_level(0)

    def power_button(self) -> None:
        if self.enable & PWRBTN:
            self.status |= PWRBTN
            self.update_sci()

    def read(self, offset: int, size: int) -> int:
        registers = (self.status | self.enable << 16 | self.control << 32
                     | (self._timer() << 64))
        return (registers >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        for index in range(size):
            self._write_byte(offset + index, (value >> (8 * index)) & 0xFF)

    def _write_byte(self, offset: int, byte: int) -> None:
        shift = 8 * (offset & 1)
        if offset < 2:  # status: write 1 to clear
            self.status &= ~(byte << shift)
        elif offset < 4:
            self.enable = (self.enable & ~(0xFF << shift)) | (byte << shift)
        elif offset < 6:
            control = (self.control & ~(0xFF << shift)) | (byte << shift)
            if control & SLP_EN and (control >> 10) & 7 == 0:
                self._shutdown()
            self.control = control & ~SLP_EN
        self.update_sci()

    def gpe_event(self, bits: int) -> None:
        """Set GPE0 status ``bits`` (QEMU's acpi_send_gpe_event)."""
        self.gpe_status |= bits
        self.update_sci()

    def update_sci(self) -> None:
        pending = self.status & self.enable & PWRBTN or self.gpe_status & self.gpe_enable & 0xFF
        self._sci.set_level(1 if pending else 0)

    @staticmethod
    def _timer() -> int:
        return (time.monotonic_ns() * TIMER_HZ // 1_000_000_000) & 0xFFFFFF


class Gpe0Block:
    """The GPE0 ports of an ``AcpiPm``: status at 0..1, enable at 2..3 (byte-wide, as QEMU's)."""

    def __init__(self, pm: AcpiPm) -> None:
        self._pm = pm

    def read(self, offset: int, size: int) -> int:
        del size  # mapped with max_access 1
        pm = self._pm
        register = pm.gpe_status if offset < 2 else pm.gpe_enable
        return (register >> (8 * (offset & 1))) & 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        del size
        pm, shift = self._pm, 8 * (offset & 1)
        if offset < 2:
            pm.gpe_status &= ~((value & 0xFF) << shift)
        else:
            pm.gpe_enable = (pm.gpe_enable & ~(0xFF << shift)) | ((value & 0xFF) << shift)
        pm.update_sci()
