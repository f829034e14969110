"""The PCI bus without KVM: configuration mechanism #1, BARs, INTx, MSI-X, placement."""

from __future__ import annotations

from typing import Any

import pytest

from tests.hw_fakes import FakeMachine
from vmd.hw.bus import IoBus
from vmd.hw.context import DeviceContext
from vmd.hw.pci import config as cfg
from vmd.hw.pci.bus import PciBus
from vmd.hw.pci.device import BAR_UNMAPPED, TYPE_PCI_DEVICE, Bar, PciDevice, parse_devfn
from vmd.hw.pci.host import I440fx, I440fxHost, Piix3, Piix4Pm, firmware_setup
from vmd.hw.pci.msix import Msix
from vmd.qom.device import create_device
from vmd.qom.errors import QOMError
from vmd.qom.types import TypeInfo


class Register:
    """A BAR region that remembers writes."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0xA0 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


class Function(PciDevice):
    """A test function (its type is not registered: the registry stays vmd's)."""

    type_info = TypeInfo("x-test-pci", TYPE_PCI_DEVICE)
    vendor_id, device_id, class_id = 0x1234, 0x5678, 0x0FF000
    interrupt_pin = 1

    def __init__(self, props: dict[str, Any], dev_id: str | None = None) -> None:
        super().__init__(props, dev_id)
        self.region = Register()
        self.add_bar(Bar(0, 0x20, io=True, handler=self.region, name="t-io"))
        self.add_bar(Bar(1, 0x1000, io=False, handler=self.region, name="t-mem32"))
        self.add_bar(Bar(2, 0x4000, io=False, handler=self.region, name="t-mem64", mem64=True, prefetch=True))
        self.msix = Msix(self, 4, 5)
        self.config_watchers.append((self.msix.cap, self.msix.cap + 4, self.msix.control_written))


class Board:
    """The chipset of ``pc`` on fake buses."""

    def __init__(self) -> None:
        self.machine = FakeMachine()
        self.ctx: DeviceContext = self.machine.context()
        self.bus = PciBus("pci.0", self.ctx.pio, self.ctx.mmio)
        self.host = I440fxHost({})
        self.host.attach_bus(self.bus)
        assert self.host.ports is not None
        self.ctx.pio.map(0xCF8, 8, self.host.ports, "pci-conf", max_access=4)
        self.piix3 = Piix3({"addr": 8})
        for function in (I440fx({"addr": 0}), self.piix3, Piix4Pm({"addr": 0xB})):
            self.bus.attach(function)
            function.realize(self.ctx)
        self.bus.router = self.piix3
        self.bus.first_free_slot = 2

    def add(self, options: dict[str, Any], kind: type[PciDevice] = Function) -> PciDevice:
        props = {"multifunction": False, **options, "addr": parse_devfn(options.get("addr", -1))}
        del props["driver"]
        device = kind(props, options.get("id"))
        self.bus.attach(device)
        device.realize(self.ctx)
        return device

    def reset(self) -> None:
        self.bus.reset()
        firmware_setup(self.bus, self.piix3)

    @property
    def pio(self) -> IoBus:
        return self.ctx.pio

    def cfg_read(self, devfn: int, offset: int, size: int = 4) -> int:
        self.pio.write(0xCF8, 4, 0x80000000 | devfn << 8 | offset & 0xFC)
        return self.pio.read(0xCFC + (offset & 3), size)

    def cfg_write(self, devfn: int, offset: int, value: int, size: int = 4) -> None:
        self.pio.write(0xCF8, 4, 0x80000000 | devfn << 8 | offset & 0xFC)
        self.pio.write(0xCFC + (offset & 3), size, value)


def test_linux_type1_probe_and_absent_functions() -> None:
    board = Board()
    board.pio.write(0xCFB, 1, 0x01)          # pci_check_type1: a byte write is not the latch
    board.pio.write(0xCF8, 4, 0x80000000)
    assert board.pio.read(0xCF8, 4) == 0x80000000
    assert board.cfg_read(0, cfg.VENDOR_ID) == 0x12378086
    assert board.cfg_read(0, cfg.CLASS_DEVICE, 2) == 0x0600
    assert board.cfg_read(8, cfg.CLASS_DEVICE, 2) == 0x0601
    assert board.cfg_read(8, cfg.HEADER_TYPE, 1) == 0x80
    assert board.cfg_read(2 << 3, cfg.VENDOR_ID) == 0xFFFFFFFF       # empty slot
    board.pio.write(0xCF8, 4, 0x80010000)                              # bus 1
    assert board.pio.read(0xCFC, 4) == 0xFFFFFFFF
    board.pio.write(0xCF8, 4, 0x00000000)                              # enable bit clear
    assert board.pio.read(0xCFC, 2) == 0xFFFF
    assert board.cfg_read(0, cfg.VENDOR_ID + 2, 2) == 0x1237           # sub-dword access
    board.cfg_write(0, cfg.VENDOR_ID, 0xFFFFFFFF)                      # read-only
    assert board.cfg_read(0, cfg.VENDOR_ID) == 0x12378086


def test_bars_are_sized_moved_and_decoded_only_when_enabled() -> None:
    board = Board()
    dev = board.add({"driver": "x-test-pci"})
    devfn = dev.devfn
    assert devfn == 2 << 3
    bar0, bar1, bar2 = (cfg.BASE_ADDRESS_0 + 4 * i for i in range(3))
    for offset in (bar0, bar1, bar2, bar2 + 4):
        board.cfg_write(devfn, offset, 0xFFFFFFFF)
    assert board.cfg_read(devfn, bar0) == 0xFFFFFFE1                  # 32 bytes of I/O
    assert board.cfg_read(devfn, bar1) == 0xFFFFF000                  # 4 KiB, 32-bit memory
    assert board.cfg_read(devfn, bar2) == 0xFFFFC00C                  # 16 KiB, 64-bit prefetchable
    assert board.cfg_read(devfn, bar2 + 4) == 0xFFFFFFFF
    board.cfg_write(devfn, bar0, 0xC000)
    board.cfg_write(devfn, bar1, 0xFEB00000)
    board.cfg_write(devfn, bar2, 0x00000000)
    board.cfg_write(devfn, bar2 + 4, 0x1)                               # 4 GiB: above the 32-bit hole
    assert board.ctx.mmio.find(0xFEB00000) is None                      # decoding still off
    board.cfg_write(devfn, cfg.COMMAND, cfg.COMMAND_IO | cfg.COMMAND_MEMORY, size=2)
    assert board.pio.read(0xC004, 1) == 0xA4
    assert board.ctx.mmio.read(0xFEB00010, 4) == 0xB0
    assert board.ctx.mmio.read(0x1_0000_0008, 4) == 0xA8
    board.cfg_write(devfn, bar1, 0xFEC10000)                            # move while decoding
    assert board.ctx.mmio.find(0xFEB00000) is None
    assert board.ctx.mmio.read(0xFEC10000, 4) == 0xA0
    board.cfg_write(devfn, cfg.COMMAND, 0, size=2)
    assert board.ctx.mmio.find(0xFEC10000) is None and board.pio.find(0xC000) is None
    assert all(bar.address == BAR_UNMAPPED for bar in dev.bars.values())


def test_overlapping_bars_do_not_decode_and_nothing_breaks() -> None:
    board = Board()
    one, two = board.add({"driver": "x-test-pci"}), board.add({"driver": "x-test-pci"})
    for dev in (one, two):
        board.cfg_write(dev.devfn, cfg.BASE_ADDRESS_0 + 4, 0xFEB00000)
        board.cfg_write(dev.devfn, cfg.COMMAND, cfg.COMMAND_MEMORY, size=2)
    assert one.bars[1].address == 0xFEB00000 and two.bars[1].address == BAR_UNMAPPED
    board.cfg_write(one.devfn, cfg.COMMAND, 0, size=2)
    board.cfg_write(two.devfn, cfg.COMMAND, 0, size=2)
    board.cfg_write(two.devfn, cfg.COMMAND, cfg.COMMAND_MEMORY, size=2)
    assert two.bars[1].address == 0xFEB00000


def test_capability_list_and_write_masks() -> None:
    board = Board()
    dev = board.add({"driver": "x-test-pci"})
    assert board.cfg_read(dev.devfn, cfg.STATUS, 2) & cfg.STATUS_CAP_LIST
    head = board.cfg_read(dev.devfn, cfg.CAPABILITY_LIST, 1)
    assert board.cfg_read(dev.devfn, head, 1) == cfg.CAP_ID_MSIX
    assert board.cfg_read(dev.devfn, head + 1, 1) == 0
    assert board.cfg_read(dev.devfn, head + 2, 2) == 3                  # 4 vectors
    assert board.cfg_read(dev.devfn, head + 4, 4) == 0x5                # table in BAR5 at 0
    board.cfg_write(dev.devfn, head, 0xFFFF0000)                        # only enable/mask bits stick
    assert board.cfg_read(dev.devfn, head + 2, 2) == 0xC003


def test_intx_goes_through_pirq_routing_to_gsi_10_and_11() -> None:
    board = Board()
    devices = [board.add({"driver": "x-test-pci", "addr": f"{slot:x}"}) for slot in (2, 3, 5)]
    board.reset()
    assert [board.cfg_read(d.devfn, cfg.INTERRUPT_LINE, 1) for d in devices] == [10, 11, 10]
    assert board.cfg_read(0xB, cfg.INTERRUPT_LINE, 1) == 9               # PM: the SCI
    irq10, irq11 = board.machine.irq(10), board.machine.irq(11)
    devices[0].set_irq(1)
    assert irq10.level == 1 and board.cfg_read(devices[0].devfn, cfg.STATUS, 2) & cfg.STATUS_INTERRUPT
    devices[2].set_irq(1)                                               # shares IRQ 10 (PIRQ A)
    devices[0].set_irq(0)
    assert irq10.level == 1
    devices[2].set_irq(0)
    assert irq10.level == 0 and irq11.level == 0
    board.cfg_write(devices[1].devfn, cfg.COMMAND, cfg.COMMAND_INTX_DISABLE, size=2)
    devices[1].set_irq(1)
    assert irq11.level == 0
    board.cfg_write(devices[1].devfn, cfg.COMMAND, 0, size=2)           # pending level shows up
    assert irq11.level == 1
    board.cfg_write(8, 0x60 + 2, 0x80, size=1)                          # PIRQC disabled by the guest
    assert irq11.level == 0
    board.cfg_write(8, 0x60 + 2, 5, size=1)                             # ... and moved to IRQ 5
    assert board.machine.irq(5).level == 1


def test_msix_masking_pending_bits_and_delivery() -> None:
    board = Board()
    dev = board.add({"driver": "x-test-pci"})
    msix: Msix = dev.msix  # type: ignore[attr-defined]
    fired = board.machine.msi.fired
    msix.notify(0)
    assert fired == []                                                   # MSI-X off
    cap = msix.cap
    board.cfg_write(dev.devfn, cfg.BASE_ADDRESS_0 + 20, 0xFEB10000)
    board.cfg_write(dev.devfn, cfg.COMMAND, cfg.COMMAND_MEMORY, size=2)
    board.cfg_write(dev.devfn, cap, 0x8000 << 16)                        # enable
    mmio = board.ctx.mmio
    mmio.write(0xFEB10000 + 16, 4, 0xFEE00000)                           # vector 1 address
    mmio.write(0xFEB10000 + 24, 4, 0x4041)                               # data
    msix.notify(1)                                                       # still masked
    assert fired == [] and mmio.read(0xFEB10800, 8) == 0b10
    mmio.write(0xFEB10000 + 28, 4, 0)                                    # unmask: pending delivered
    assert fired == [(0xFEE00000, 0x4041)] and mmio.read(0xFEB10800, 8) == 0
    board.cfg_write(dev.devfn, cap, 0xC000 << 16)                        # function mask
    msix.notify(1)
    assert len(fired) == 1
    board.cfg_write(dev.devfn, cap, 0x8000 << 16)
    assert fired[-1] == (0xFEE00000, 0x4041) and len(fired) == 2
    msix.notify(7)                                                       # no such vector
    assert len(fired) == 2
    mmio.write(0xFEB10800, 8, 0xFF)                                      # the PBA is read-only
    assert mmio.read(0xFEB10800, 8) == 0


def test_placement_errors_are_qemus() -> None:
    board = Board()
    with pytest.raises(QOMError, match=r"^PCI: slot 1 function 0 not available for x-test-pci, "
                                       r"in use by PIIX3,id=\(null\)$"):
        board.add({"driver": "x-test-pci", "addr": "1"})
    board.add({"driver": "x-test-pci", "addr": "4", "id": "t4"})
    with pytest.raises(QOMError, match=r"in use by x-test-pci,id=t4$"):
        board.add({"driver": "x-test-pci", "addr": "04.0"})
    with pytest.raises(QOMError, match=r"^PCI: single function device can't be populated in function 4.1$"):
        board.add({"driver": "x-test-pci", "addr": "4.1"})
    for bad in ("32", "0x2.8", "zz", "2.", "-1"):
        with pytest.raises(QOMError, match=rf"^Property 'PIIX3.addr' doesn't take value '{bad}'$"):
            create_device({"driver": "PIIX3", "addr": bad}, user=False)
    assert board.add({"driver": "x-test-pci"}).slot == 2                 # first free slot


def test_reset_unmaps_and_clears() -> None:
    board = Board()
    dev = board.add({"driver": "x-test-pci"})
    board.cfg_write(dev.devfn, cfg.BASE_ADDRESS_0, 0xC000)
    board.cfg_write(dev.devfn, cfg.COMMAND, cfg.COMMAND_IO, size=2)
    assert board.pio.find(0xC000) is not None
    board.reset()
    assert board.pio.find(0xC000) is None
    assert board.cfg_read(dev.devfn, cfg.BASE_ADDRESS_0) == cfg.BAR_SPACE_IO
    assert board.cfg_read(dev.devfn, cfg.COMMAND, 2) == 0
