"""The MC146818 RTC and CMOS fed port accesses, against QEMU's behaviour."""

from __future__ import annotations

import calendar
import time

import pytest

from tests.hw_fakes import FakeMachine, ManualClock
from vmd.hw import devices  # noqa: F401
from vmd.hw.bus import IoBus
from vmd.hw.pc_cmos import pc_cmos_init, pc_ram_split
from vmd.hw.rtc import Mc146818Rtc
from vmd.qom.device import create_device

NS = 10**9
# 2026-12-02 15:04:05 UTC, a Wednesday, 0.5 s into the second.
START = calendar.timegm((2026, 12, 2, 15, 4, 5)) * NS + NS // 2


def rtc(machine: FakeMachine, base_year: str = "2000") -> tuple[Mc146818Rtc, IoBus]:
    device = create_device({"driver": "mc146818rtc", "base_year": base_year}, user=False)
    assert isinstance(device, Mc146818Rtc)
    ctx = machine.context()
    device.realize(ctx)
    return device, ctx.pio


def cmos(bus: IoBus, index: int) -> int:
    bus.write(0x70, 1, index)
    return bus.read(0x71, 1)


def set_cmos(bus: IoBus, index: int, value: int) -> None:
    bus.write(0x70, 1, index)
    bus.write(0x71, 1, value)


@pytest.fixture
def machine() -> FakeMachine:
    return FakeMachine(ManualClock(START))


def test_power_on_registers_and_bcd_time(machine: FakeMachine) -> None:
    _, bus = rtc(machine)
    assert [cmos(bus, r) for r in (0x0A, 0x0B, 0x0C, 0x0D)] == [0x26, 0x02, 0x00, 0x80]
    fields = [cmos(bus, r) for r in (0, 2, 4, 6, 7, 8, 9, 0x32, 0x37)]
    assert fields == [0x05, 0x04, 0x15, 0x04, 0x02, 0x12, 0x26, 0x20, 0x20]
    assert bus.read(0x70, 1) == 0xFF


def test_time_follows_the_clock(machine: FakeMachine) -> None:
    _, bus = rtc(machine)
    machine.clock.advance(61 * NS)
    assert (cmos(bus, 2), cmos(bus, 0)) == (0x05, 0x06)


def test_binary_and_12_hour_modes(machine: FakeMachine) -> None:
    _, bus = rtc(machine)
    set_cmos(bus, 0x0B, 0x04)  # binary, 12-hour
    assert (cmos(bus, 4), cmos(bus, 9), cmos(bus, 0)) == (0x83, 26, 5)
    set_cmos(bus, 0x0B, 0x00)  # BCD, 12-hour
    assert cmos(bus, 4) == 0x83


def test_update_in_progress_in_the_last_244us(machine: FakeMachine) -> None:
    _, bus = rtc(machine)
    assert not cmos(bus, 0x0A) & 0x80
    machine.clock.advance(NS // 2 - 200_000)
    assert cmos(bus, 0x0A) & 0x80
    machine.clock.advance(300_000)
    assert not cmos(bus, 0x0A) & 0x80


def test_guest_sets_the_time(machine: FakeMachine) -> None:
    _, bus = rtc(machine)
    set_cmos(bus, 0x0B, 0x82)  # SET
    for reg, value in ((0, 0x30), (2, 0x59), (4, 0x23), (7, 0x31), (8, 0x12), (9, 0x99), (0x32, 0x19)):
        set_cmos(bus, reg, value)
    machine.clock.advance(5 * NS)
    assert cmos(bus, 0) == 0x30  # frozen while SET
    set_cmos(bus, 0x0B, 0x02)
    machine.clock.advance(31 * NS)
    assert [cmos(bus, r) for r in (0, 2, 4, 7, 8, 9, 0x32)] == [0x01, 0x00, 0x00, 0x01, 0x01, 0x00, 0x20]


def test_update_flag_and_interrupt(machine: FakeMachine) -> None:
    _, bus = rtc(machine)
    assert cmos(bus, 0x0C) == 0
    machine.clock.advance(NS)
    assert cmos(bus, 0x0C) == 0x10  # UF without an interrupt
    assert cmos(bus, 0x0C) == 0
    set_cmos(bus, 0x0B, 0x12)  # UIE
    machine.clock.advance(NS)
    assert machine.irq(8).level == 1
    assert cmos(bus, 0x0C) == 0x90
    assert machine.irq(8).level == 0


def test_alarm(machine: FakeMachine) -> None:
    _, bus = rtc(machine)
    set_cmos(bus, 1, 0x07)
    set_cmos(bus, 3, 0xFF)
    set_cmos(bus, 5, 0xFF)
    set_cmos(bus, 0x0B, 0x22)  # AIE
    machine.clock.advance(NS)
    assert machine.irq(8).level == 0
    machine.clock.advance(NS)
    assert machine.irq(8).level == 1 and cmos(bus, 0x0C) & 0xA0 == 0xA0


def test_periodic_interrupt(machine: FakeMachine) -> None:
    _, bus = rtc(machine)
    set_cmos(bus, 0x0B, 0x42)  # PIE, rate 6 from power-on = 1024 Hz
    machine.clock.advance(977_000)
    assert machine.irq(8).level == 1
    assert cmos(bus, 0x0C) == 0xC0
    ticks = 0
    for _ in range(100):
        machine.clock.advance(976_563)
        if cmos(bus, 0x0C) & 0x40:
            ticks += 1
    assert ticks == 100
    set_cmos(bus, 0x0B, 0x02)
    machine.clock.advance(10 * NS)
    assert cmos(bus, 0x0C) & 0x40 == 0


def test_reset_clears_interrupt_enables_keeps_ram(machine: FakeMachine) -> None:
    device, bus = rtc(machine)
    set_cmos(bus, 0x50, 0xAB)
    set_cmos(bus, 0x0B, 0x62)
    device.reset()
    assert cmos(bus, 0x0B) == 0x02 and cmos(bus, 0x50) == 0xAB


@pytest.mark.parametrize(("ram_mib", "expected"), [
    # 0x15 0x16 0x17 0x18 0x30 0x31 0x34 0x35 0x5b 0x5c 0x5d (QEMU's pc_cmos_init)
    (16, [0x80, 0x02, 0x00, 0x3C, 0x00, 0x3C, 0x00, 0x00, 0x00, 0x00, 0x00]),
    (128, [0x80, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07, 0x00, 0x00, 0x00]),
    (4096, [0x80, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xBF, 0x00, 0x40, 0x00]),
])
def test_pc_memory_bytes(machine: FakeMachine, ram_mib: int, expected: list[int]) -> None:
    device, bus = rtc(machine)
    pc_cmos_init(device.rtc, ram_mib << 20, smp_cpus=2)
    regs = (0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34, 0x35, 0x5B, 0x5C, 0x5D)
    assert [cmos(bus, r) for r in regs] == expected
    assert (cmos(bus, 0x14), cmos(bus, 0x3D), cmos(bus, 0x38), cmos(bus, 0x5F)) == (0x06, 0x12, 0x30, 1)
    assert pc_ram_split(4096 << 20) == (3 << 30, 1 << 30)


def test_time_is_utc_of_the_host_clock() -> None:
    machine = FakeMachine()
    _, bus = rtc(machine)
    tm = time.gmtime(machine.clock.now // NS)
    assert cmos(bus, 2) == ((tm.tm_min // 10) << 4 | tm.tm_min % 10)


def test_base_year_2000_means_0_and_1980_shifts_the_year(machine: FakeMachine) -> None:
    device, bus = rtc(machine)  # what QEMU's pc board asks for
    assert device.props["base_year"] == 0 and (cmos(bus, 9), cmos(bus, 0x32)) == (0x26, 0x20)
    _, bus = rtc(FakeMachine(ManualClock(START)), base_year="1980")  # the type's default
    assert (cmos(bus, 9), cmos(bus, 0x32)) == (0x46, 0x00)
