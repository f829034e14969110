"""The PCI bus: functions by device/function number, config access, BAR mapping.

``PciBus`` is bus ``pci.0`` of ``info qtree``. It places functions
(``addr=slot[.fn]`` or the first free slot, with QEMU's errors for a taken
slot and for multifunction mix-ups), answers configuration mechanism #1
(``ConfigPorts`` at 0xcf8/0xcfc: absent functions read all ones), maps
each BAR on the port or memory bus when the guest enables decoding, and
hands INTx levels to the interrupt router the board installs (the PIIX3's
PIRQ routing on ``pc``). All of it runs with the BQL held.

A guest may place two BARs on top of each other or over another device:
the later one then simply does not decode (logged), as when QEMU's
lower-priority region is hidden; vmd never fails because of it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from vmd.hw.bus import BusError, IoBus, Mapping
from vmd.hw.pci import config as cfg
from vmd.hw.pci.device import BAR_UNMAPPED, TYPE_PCI_BUS, Bar, PciDevice
from vmd.qom.device import Device
from vmd.qom.errors import QOMError
from vmd.qom.qtree import Bus

log = logging.getLogger(__name__)

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_DATA_PORT = 0xCFC
CONFIG_ENABLE = 0x80000000


class IntxRouter(Protocol):
    """Turns a function's INTx pin level into an interrupt (the board's chipset)."""

    def set_intx(self, slot: int, pin: int, level: int) -> None:
        """``pin`` is 0 for INTA#; ``level`` the OR of every function on that pin."""


class BarListener(Protocol):
    """Told about each BAR (un)mapping, e.g. to keep ``info mtree`` in step."""

    def __call__(self, io: bool, name: str, address: int, size: int, mapped: bool) -> None: ...


class PciBus(Bus):
    """Bus 0 of the host bridge."""

    def __init__(self, name: str, pio: IoBus, mmio: IoBus) -> None:
        super().__init__(name, TYPE_PCI_BUS)
        self.pio = pio
        self.mmio = mmio
        self.functions: dict[int, PciDevice] = {}
        self.router: IntxRouter | None = None
        self.bar_listeners: list[BarListener] = []
        self._mappings: dict[int, Mapping] = {}
        self._intx: dict[tuple[int, int], set[int]] = {}
        #: Slots (0..31) that the first-free search skips.
        self.first_free_slot = 0

    # -- placement (QEMU's do_pci_register_device) -----------------------------

    def attach(self, device: Device) -> None:
        """Give ``device`` its devfn (``addr``); raises QOMError with QEMU's texts."""
        assert isinstance(device, PciDevice)
        requested = device.props.get("addr", -1)
        devfn = requested if requested >= 0 else self._free_devfn(device)
        other = self.functions.get(devfn)
        if other is not None:
            raise QOMError(f"PCI: slot {devfn >> 3} function {devfn & 7} not available for "
                           f"{device.type_name}, in use by {other.type_name},id={other.id or '(null)'}")
        self._check_multifunction(device, devfn)
        first = self.functions.get(devfn & ~7)
        if device.hotplugged and devfn & 7 and first is not None:
            raise QOMError(f"PCI: slot {devfn >> 3} function 0 already occupied by {first.type_name}, "
                           f"new func {device.type_name} cannot be exposed to guest.")
        device.devfn = devfn
        device.props["addr"] = devfn
        device.bus = self
        self.functions[devfn] = device
        self.plug(device)

    def detach(self, device: Device) -> None:
        assert isinstance(device, PciDevice)
        for bar in device.bars.values():
            old = bar.address
            self.move_bar(device, bar, BAR_UNMAPPED)
            for hook in bar.moved:
                hook(old, BAR_UNMAPPED)
        device.set_irq(0)
        del self.functions[device.devfn]
        self.unplug(device)
        device.bus = None

    def _free_devfn(self, device: PciDevice) -> int:
        for slot in range(self.first_free_slot, 32):
            if not any((slot << 3 | fn) in self.functions for fn in range(8)):
                return slot << 3
        raise QOMError(f"PCI: no slot/function available for {device.type_name}, all in use or reserved")

    def _check_multifunction(self, device: PciDevice, devfn: int) -> None:
        slot, fn = devfn >> 3, devfn & 7
        multi = bool(device.props.get("multifunction"))
        first = self.functions.get(slot << 3)
        if fn and first is not None and not first.config.data[cfg.HEADER_TYPE] & cfg.HEADER_TYPE_MULTI_FUNCTION:
            raise QOMError(f"PCI: single function device can't be populated in function {slot:x}.{fn:x}")
        others = [f for f in range(1, 8) if (slot << 3 | f) in self.functions]
        if fn == 0 and not multi and others:
            raise QOMError(f"PCI: {slot:x}.0 indicates single function, but {slot:x}.{others[0]:x} "
                           "is already populated.")

    # -- configuration space ----------------------------------------------------

    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        device = self.functions.get(devfn) if bus == 0 else None
        if device is None:
            return (1 << (8 * size)) - 1
        return device.config_read(offset, size)

    def config_write(self, bus: int, devfn: int, offset: int, size: int, value: int) -> None:
        device = self.functions.get(devfn) if bus == 0 else None
        if device is not None:
            device.config_write(offset, size, value)

    # -- BARs -------------------------------------------------------------------

    def move_bar(self, device: PciDevice, bar: Bar, address: int) -> None:
        space = self.pio if bar.io else self.mmio
        old = self._mappings.pop(id(bar), None)
        if old is not None:
            space.unmap(old)
            self._tell(bar, old.base, False)
        bar.address = BAR_UNMAPPED
        if address == BAR_UNMAPPED:
            return
        try:
            self._mappings[id(bar)] = space.map(address, bar.size, bar.handler, bar.name, bar.max_access)
        except BusError as error:
            log.info("%s BAR%d at %#x does not decode: %s", device.type_name, bar.index, address, error)
            return
        bar.address = address
        self._tell(bar, address, True)

    def _tell(self, bar: Bar, address: int, mapped: bool) -> None:
        for listener in self.bar_listeners:
            listener(bar.io, bar.name, address, bar.size, mapped)

    # -- INTx -------------------------------------------------------------------

    def set_intx(self, device: PciDevice, level: int) -> None:
        """Wire-OR of the functions of a slot on one pin, then the router."""
        pin = device.interrupt_pin - 1
        asserted = self._intx.setdefault((device.slot, pin), set())
        before = bool(asserted)
        if level:
            asserted.add(device.devfn)
        else:
            asserted.discard(device.devfn)
        if bool(asserted) != before and self.router is not None:
            self.router.set_intx(device.slot, pin, int(bool(asserted)))

    def reset(self) -> None:
        for device in self.functions.values():
            device.reset()


class ConfigPorts:
    """Configuration mechanism #1: the address latch at 0xcf8, data at 0xcfc.

    Only a 32-bit access to 0xcf8 reaches the latch (Linux's probe writes a
    byte to 0xcfb first and expects it to be ignored), as QEMU's
    ``pci_host_config_write``. Data accesses of 1, 2 or 4 bytes hit the
    register the latch selects plus the port offset.
    """

    def __init__(self, bus: PciBus) -> None:
        self.bus = bus
        self.address = 0

    def reset(self) -> None:
        self.address = 0

    def read(self, offset: int, size: int) -> int:
        if offset < 4:
            return self.address if offset == 0 and size == 4 else (1 << (8 * size)) - 1
        return self._data(offset - 4, size, None)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 4:
            if offset == 0 and size == 4:
                self.address = value & 0xFFFFFFFC | (value & CONFIG_ENABLE)
            return
        self._data(offset - 4, size, value)

    def _data(self, port_offset: int, size: int, value: int | None) -> int:
        latch = self.address
        if not latch & CONFIG_ENABLE:
            return (1 << (8 * size)) - 1
        bus, devfn = (latch >> 16) & 0xFF, (latch >> 8) & 0xFF
        offset = (latch & 0xFC) + port_offset
        if value is None:
            return self.bus.config_read(bus, devfn, offset, size)
        self.bus.config_write(bus, devfn, offset, size, value)
        return 0
