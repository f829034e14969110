"""The ``pc`` board's PCI chipset: i440FX host bridge and the PIIX3 functions.

As QEMU's ``pc``: ``i440FX-pcihost`` on the system bus owns ``pci.0`` and
the configuration ports; 00.0 is the i440FX (8086:1237), 01.0 the PIIX3
ISA bridge (8086:7000, owner of ``isa.0``), 01.1 its IDE function
(8086:7010, no drives: its BAR decodes nothing) and 01.3 the PIIX4 power
management function (8086:7113). ``-device`` functions go from slot 2.

INTx: the PIIX3 maps a function's pin to one of four PIRQ lines (QEMU's
``pci_slot_get_pirq``: (pin + slot - 1) mod 4) and each PIRQ to the ISA
IRQ in its route register (0x60..0x63, bit 7 = disabled); the ISA IRQ is
the GSI of the in-kernel PIC and IOAPIC. vmd has no firmware, so at reset
it does what SeaBIOS does: routes PIRQ A..D to IRQ 10, 10, 11, 11 and
writes each function's interrupt line register (9 for the PM function,
the SCI). It does not assign BARs: a guest sizes and places them itself
(QEMU's SeaBIOS would have placed them; a guest that always assigns
works on both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmd.hw.pci import config as cfg
from vmd.hw.pci.bus import ConfigPorts, PciBus
from vmd.hw.pci.device import TYPE_PCI_BUS, TYPE_PCI_DEVICE, Bar, PciDevice
from vmd.qom.device import Device
from vmd.qom.types import TYPE_SYS_BUS_DEVICE, TYPES, TypeInfo, device_type

if TYPE_CHECKING:
    from vmd.hw.context import DeviceContext
    from vmd.hw.irq import IrqLine

PIRQ_ROUTE = 0x60
PIRQ_DISABLED = 0x80
#: SeaBIOS's PIRQ A..D routing on the i440FX (``pci_irqs``).
FIRMWARE_PIRQ_IRQS = (10, 10, 11, 11)
PM_SCI_IRQ = 9


#: QEMU's abstract parents of the chipset types (``qom-list-types`` shows them).
for _info in (TypeInfo("pci-host-bridge", TYPE_SYS_BUS_DEVICE, abstract=True),
              TypeInfo("pci-piix3", TYPE_PCI_DEVICE, abstract=True, bus_type=TYPE_PCI_BUS),
              TypeInfo("pci-ide", TYPE_PCI_DEVICE, abstract=True, bus_type=TYPE_PCI_BUS)):
    TYPES.register(_info)


@device_type("i440FX-pcihost", "pci-host-bridge", user_creatable=False)
class I440fxHost(Device):
    """The host bridge device on the system bus; its child bus is ``pci.0``."""

    def __init__(self, props: dict[str, Any], dev_id: str | None = None) -> None:
        super().__init__(props, dev_id)
        self.ports: ConfigPorts | None = None

    def attach_bus(self, bus: PciBus) -> None:
        self.child_buses.append(bus)
        self.ports = ConfigPorts(bus)

    def reset(self) -> None:
        if self.ports is not None:
            self.ports.reset()


@device_type("i440FX", TYPE_PCI_DEVICE, user_creatable=False)
class I440fx(PciDevice):
    vendor_id, device_id, revision, class_id = 0x8086, 0x1237, 0x02, 0x060000


@device_type("PIIX3", "pci-piix3", user_creatable=False)
class Piix3(PciDevice):
    """The ISA bridge and the PIRQ router (``IntxRouter`` of ``pci.0``)."""

    vendor_id, device_id, class_id = 0x8086, 0x7000, 0x060100

    def __init__(self, props: dict[str, Any], dev_id: str | None = None) -> None:
        super().__init__({**props, "multifunction": True}, dev_id)
        self.config.set_long(PIRQ_ROUTE, 0x80808080, wmask=0xFFFFFFFF)
        self.irq_lines: dict[int, IrqLine] = {}
        self._pirq_levels = [0, 0, 0, 0]
        self._asserted: dict[tuple[int, int], int] = {}
        self._isa_levels: dict[int, int] = {}
        self.config_watchers.append((PIRQ_ROUTE, PIRQ_ROUTE + 4, self._update_isa_irqs))

    def realize(self, ctx: DeviceContext) -> None:
        self.irq_lines = {irq: ctx.irq(irq) for irq in range(16)}
        super().realize(ctx)

    def reset(self) -> None:
        super().reset()
        self.config.set_long(PIRQ_ROUTE, 0x80808080)
        self._update_isa_irqs()

    @staticmethod
    def pirq(slot: int, pin: int) -> int:
        return (pin + slot - 1) & 3

    def route(self, pirq: int) -> int | None:
        value = self.config.data[PIRQ_ROUTE + pirq]
        return None if value & PIRQ_DISABLED or value & 0xF >= 16 else value & 0xF

    def set_intx(self, slot: int, pin: int, level: int) -> None:
        self._asserted[(slot, pin)] = level
        pirq = self.pirq(slot, pin)
        self._pirq_levels[pirq] = int(any(lvl for (s, p), lvl in self._asserted.items()
                                          if self.pirq(s, p) == pirq))
        self._update_isa_irqs()

    def _update_isa_irqs(self) -> None:
        wanted: dict[int, int] = {}
        for pirq in range(4):
            irq = self.route(pirq)
            if irq is not None:
                wanted[irq] = wanted.get(irq, 0) | self._pirq_levels[pirq]
        for irq in set(wanted) | set(self._isa_levels):
            level = wanted.get(irq, 0)
            if self._isa_levels.get(irq, 0) != level and irq in self.irq_lines:
                self.irq_lines[irq].set_level(level)
            self._isa_levels[irq] = level

    def firmware_routes(self) -> None:
        """What SeaBIOS programs: PIRQ A..D to IRQ 10, 10, 11, 11."""
        for pirq, irq in enumerate(FIRMWARE_PIRQ_IRQS):
            self.config.data[PIRQ_ROUTE + pirq] = irq
        self._update_isa_irqs()


class _NoDecode:
    """A BAR whose function has nothing behind it (an IDE channel without drives)."""

    def read(self, offset: int, size: int) -> int:
        del offset
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        del offset, size, value


@device_type("piix3-ide", "pci-ide", user_creatable=False)
class Piix3Ide(PciDevice):
    vendor_id, device_id, class_id = 0x8086, 0x7010, 0x010180

    def __init__(self, props: dict[str, Any], dev_id: str | None = None) -> None:
        super().__init__(props, dev_id)
        self.add_bar(Bar(4, 16, io=True, handler=_NoDecode(), name="piix-bmdma-container"))


@device_type("PIIX4_PM", TYPE_PCI_DEVICE, user_creatable=False)
class Piix4Pm(PciDevice):
    """The ACPI function; vmd's PM registers stay at 0x600 (``vmd.machine.acpi_pm``)."""

    vendor_id, device_id, revision, class_id = 0x8086, 0x7113, 0x03, 0x068000
    interrupt_pin = 1


def firmware_setup(bus: PciBus, piix3: Piix3) -> None:
    """SeaBIOS's interrupt set-up after a reset (see the module docstring)."""
    piix3.firmware_routes()
    for device in bus.functions.values():
        if not device.interrupt_pin:
            continue
        if isinstance(device, Piix4Pm):
            line = PM_SCI_IRQ
        else:
            line = piix3.route(piix3.pirq(device.slot, device.interrupt_pin - 1)) or 0
        device.config.data[cfg.INTERRUPT_LINE] = line
