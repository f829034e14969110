"""The virtio-pci modern transport driven like a guest driver would (no KVM)."""

from __future__ import annotations

import struct
from typing import Any

from tests.test_pci import Board
from tests.virtio_ring import DriverRing
from vmd.hw.pci import config as cfg
from vmd.hw.virtio.device import (
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET,
    VirtioDevice,
)
from vmd.hw.virtio.pci import VirtioPciDevice
from vmd.qom.types import TypeInfo

BAR4, BAR1 = 0xE0000000, 0xFEB00000
VERSION_1, EVENT_IDX, INDIRECT = 1 << 32, 1 << 29, 1 << 28


class Echo(VirtioDevice):
    """Queue 0: copies each request's readable bytes, upper-cased, into its writable ones."""

    device_id = 30
    type_name = "x-echo-device"

    def __init__(self) -> None:
        super().__init__([16, 16], features=1 << 0, config_size=8)
        self.config[:] = b"ECHO1234"
        self.driver_ok_calls = 0

    def handle_queue(self, index: int) -> None:
        while (element := self.pop(index)) is not None:
            self.push(index, element, element.write(element.read_all().upper()), notify=False)
        self.notify(index)

    def driver_ok(self) -> None:
        self.driver_ok_calls += 1


class EchoPci(VirtioPciDevice):
    type_info = TypeInfo("x-test-virtio-pci", "virtio-pci")

    def create_vdev(self, props: dict[str, Any]) -> VirtioDevice:
        return Echo()


class Driver:
    """Just enough of a virtio-pci driver, through config space and BARs."""

    def __init__(self, board: Board, device: VirtioPciDevice) -> None:
        self.board, self.device, self.devfn = board, device, device.devfn
        self.mmio = board.ctx.mmio
        self.caps: dict[int, tuple[int, int, int]] = {}
        offset = board.cfg_read(self.devfn, cfg.CAPABILITY_LIST, 1)
        while offset:
            if board.cfg_read(self.devfn, offset, 1) == cfg.CAP_ID_VNDR:
                kind = board.cfg_read(self.devfn, offset + 3, 1)
                self.caps[kind] = (board.cfg_read(self.devfn, offset + 4, 1),
                                   board.cfg_read(self.devfn, offset + 8), offset)
            elif board.cfg_read(self.devfn, offset, 1) == cfg.CAP_ID_MSIX:
                self.msix_cap = offset
            offset = board.cfg_read(self.devfn, offset + 1, 1)
        board.cfg_write(self.devfn, cfg.BASE_ADDRESS_0 + 16, BAR4 | 0xC)
        board.cfg_write(self.devfn, cfg.BASE_ADDRESS_0 + 20, 0)
        board.cfg_write(self.devfn, cfg.BASE_ADDRESS_0 + 4, BAR1)
        board.cfg_write(self.devfn, cfg.COMMAND, cfg.COMMAND_MEMORY | cfg.COMMAND_MASTER, size=2)

    def region(self, kind: int) -> int:
        bar, offset, _ = self.caps[kind]
        assert bar == 4
        return BAR4 + offset

    def common(self, offset: int, size: int, value: int | None = None) -> int:
        if value is None:
            return self.mmio.read(self.region(1) + offset, size)
        self.mmio.write(self.region(1) + offset, size, value)
        return 0

    def negotiate(self, features: int) -> int:
        self.common(20, 1, 0)
        self.common(20, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        self.common(0, 4, 0)
        offered = self.common(4, 4)
        self.common(0, 4, 1)
        offered |= self.common(4, 4) << 32
        self.common(8, 4, 0)
        self.common(12, 4, features & 0xFFFFFFFF)
        self.common(8, 4, 1)
        self.common(12, 4, features >> 32)
        self.common(20, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        return offered

    def setup_queue(self, index: int, ring: DriverRing, vector: int = 0xFFFF) -> None:
        self.common(22, 2, index)
        self.common(24, 2, ring.size)
        self.common(26, 2, vector)
        for offset, address in ((32, ring.desc), (40, ring.avail), (48, ring.used)):
            self.common(offset, 4, address & 0xFFFFFFFF)
            self.common(offset + 4, 4, address >> 32)
        self.common(28, 2, 1)

    def kick(self, index: int) -> None:
        notify_bar, notify_offset, cap = self.caps[2]
        multiplier = self.board.cfg_read(self.devfn, cap + 16)
        self.common(22, 2, index)
        off = self.common(30, 2)
        self.mmio.write(BAR4 + notify_offset + off * multiplier, 2, index)


def make() -> tuple[Board, EchoPci, Driver]:
    board = Board()
    device = board.add({"driver": "x-test-virtio-pci", "vectors": 3, "ioeventfd": True}, EchoPci)
    assert isinstance(device, EchoPci)
    board.reset()
    return board, device, Driver(board, device)


def test_identity_and_capabilities_are_virtio_1() -> None:
    board, device, driver = make()
    assert board.cfg_read(device.devfn, cfg.VENDOR_ID) == 0x1040 + 30 << 16 | 0x1AF4
    assert board.cfg_read(device.devfn, cfg.REVISION_ID, 1) == 1
    assert board.cfg_read(device.devfn, cfg.INTERRUPT_PIN, 1) == 1
    assert sorted(driver.caps) == [1, 2, 3, 4, 5]
    assert [driver.caps[k][1] for k in (1, 3, 4, 2)] == [0, 0x1000, 0x2000, 0x3000]
    assert board.cfg_read(device.devfn, driver.msix_cap + 2, 2) == 2          # 3 vectors


def test_feature_negotiation_and_status() -> None:
    board, device, driver = make()
    offered = driver.negotiate(VERSION_1 | EVENT_IDX)
    assert offered == VERSION_1 | EVENT_IDX | INDIRECT | 1
    assert driver.common(20, 1) & STATUS_FEATURES_OK
    assert driver.common(18, 2) == 2                                          # num_queues
    driver.negotiate(1 << 5 | VERSION_1)                                       # a feature not offered
    assert not driver.common(20, 1) & STATUS_FEATURES_OK
    driver.negotiate(EVENT_IDX)                                                # no VERSION_1
    assert not driver.common(20, 1) & STATUS_FEATURES_OK
    assert driver.mmio.read(driver.region(4), 4) == int.from_bytes(b"ECHO", "little")
    assert driver.mmio.read(driver.region(4) + 4, 1) == ord("1")


def test_requests_with_msix_and_with_intx() -> None:
    board, device, driver = make()
    ring = DriverRing(board.machine.ram, 16, base=0x40000)
    driver.negotiate(VERSION_1 | INDIRECT)
    board.cfg_write(device.devfn, driver.msix_cap, 0x8000 << 16)              # MSI-X on
    table = BAR1
    driver.mmio.write(table + 16, 4, 0xFEE00000)
    driver.mmio.write(table + 24, 4, 0x31)
    driver.mmio.write(table + 28, 4, 0)
    driver.setup_queue(0, ring, vector=1)
    assert driver.common(26, 2) == 1
    driver.common(20, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    assert device.vdev.driver_ok_calls == 1                                    # type: ignore[attr-defined]
    ring.publish(ring.chain([b"hello"], [5]))
    ring.publish(ring.indirect([b"vmd"], [8], head=2))
    driver.kick(0)
    assert ring.take_used() == [(0, 5), (2, 3)]
    assert bytes(board.machine.ram[0x50000 + 16:0x50000 + 21]) == b"HELLO"
    assert board.machine.msi.fired == [(0xFEE00000, 0x31)]                     # one interrupt, two requests
    assert board.machine.irq(10).level == 0                                    # no INTx with MSI-X
    board.cfg_write(device.devfn, driver.msix_cap, 0)                         # MSI-X off: INTx + ISR
    ring.publish(ring.chain([b"x"], [1]))
    driver.kick(0)
    assert board.machine.irq(10).level == 1                                    # slot 2 pin A: PIRQB -> 10
    assert driver.mmio.read(driver.region(3), 1) == 1                          # ISR, read to clear
    assert board.machine.irq(10).level == 0 and driver.mmio.read(driver.region(3), 1) == 0


def test_kicks_via_ioeventfd_follow_the_bar() -> None:
    board, device, driver = make()
    fds = board.machine.ioeventfds
    assert {(address, length, assign) for _, address, length, assign in fds} == {
        (BAR4 + 0x3000, 2, True), (BAR4 + 0x3004, 2, True)}
    board.cfg_write(device.devfn, cfg.COMMAND, 0, size=2)
    assert sum(1 for *_, assign in fds if not assign) == 2


def test_bad_ring_marks_the_device_broken_until_reset() -> None:
    board, device, driver = make()
    ring = DriverRing(board.machine.ram, 16, base=0x40000)
    driver.negotiate(VERSION_1)
    driver.setup_queue(0, ring)
    driver.common(20, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    ring.put_desc(0, ring.buffer(8)[0], 8, 1, 0)                               # a self loop
    ring.publish(0)
    driver.kick(0)
    assert driver.common(20, 1) & STATUS_NEEDS_RESET
    assert driver.mmio.read(driver.region(3), 1) == 2                          # config interrupt
    ring.publish(ring.chain([b"a"], [1], head=3))
    driver.kick(0)
    assert ring.used_idx == 0                                                  # broken: nothing served
    driver.common(20, 1, 0)                                                    # reset
    assert driver.common(20, 1) == 0 and driver.common(28, 2) == 0
    ring = DriverRing(board.machine.ram, 16, base=0x80000)
    driver.negotiate(VERSION_1)
    driver.setup_queue(0, ring)
    driver.common(20, 1, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    ring.publish(ring.chain([b"ok"], [2]))
    driver.kick(0)
    assert ring.take_used() == [(0, 2)]


def test_queue_size_not_power_of_two_breaks_the_device() -> None:
    board, device, driver = make()
    ring = DriverRing(board.machine.ram, 12, base=0x40000)
    driver.negotiate(VERSION_1)
    driver.setup_queue(0, ring)
    assert driver.common(20, 1) & STATUS_NEEDS_RESET and driver.common(28, 2) == 0


def test_pci_cfg_window_reaches_the_common_config() -> None:
    board, device, driver = make()
    _, _, cap = driver.caps[5]
    board.cfg_write(device.devfn, cap + 4, 4, size=1)                         # BAR 4
    board.cfg_write(device.devfn, cap + 8, 18)                                 # num_queues
    board.cfg_write(device.devfn, cap + 12, 2)
    assert board.cfg_read(device.devfn, cap + 16, 2) == 2
    assert struct.pack("<H", 2) == (2).to_bytes(2, "little")
