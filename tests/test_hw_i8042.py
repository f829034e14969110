"""The i8042 controller fed port accesses, checked against QEMU's pckbd.c."""

from __future__ import annotations

from tests.hw_fakes import FakeMachine
from vmd.hw import devices  # noqa: F401
from vmd.hw.bus import IoBus
from vmd.hw.i8042 import CTRL_ALT_DEL_SET1, CTRL_ALT_DEL_SET2, I8042
from vmd.qom.device import create_device


def controller(machine: FakeMachine) -> tuple[I8042, IoBus]:
    device = create_device({"driver": "i8042"})
    assert isinstance(device, I8042)
    ctx = machine.context()
    device.realize(ctx)
    return device, ctx.pio


def drain(bus: IoBus) -> list[int]:
    out = []
    while bus.read(0x64, 1) & 0x01:
        out.append(bus.read(0x60, 1))
    return out


def test_reset_status_and_command_byte() -> None:
    machine = FakeMachine()
    _, bus = controller(machine)
    assert bus.read(0x64, 1) == 0x18
    bus.write(0x64, 1, 0x20)
    assert bus.read(0x64, 1) & 0x01 and machine.irq(1).level == 1
    assert bus.read(0x60, 1) == 0x03
    assert machine.irq(1).level == 0
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, 0x41)
    bus.write(0x64, 1, 0x20)
    assert drain(bus) == [0x41]


def test_self_tests() -> None:
    _, bus = controller(FakeMachine())
    bus.write(0x64, 1, 0xAA)
    assert bus.read(0x64, 1) & 0x04
    assert drain(bus) == [0x55]
    bus.write(0x64, 1, 0xAB)
    assert drain(bus) == [0x00]


def test_keyboard_commands() -> None:
    _, bus = controller(FakeMachine())
    bus.write(0x60, 1, 0xFF)
    assert drain(bus) == [0xFA, 0xAA]
    bus.write(0x60, 1, 0xF2)
    assert drain(bus) == [0xFA, 0xAB, 0x83]
    bus.write(0x60, 1, 0xED)
    bus.write(0x60, 1, 0x07)
    assert drain(bus) == [0xFA, 0xFA]


def test_reset_line() -> None:
    machine = FakeMachine()
    _, bus = controller(machine)
    bus.write(0x64, 1, 0xFE)
    assert machine.resets == 1
    bus.write(0x64, 1, 0xFF)  # pulse nothing
    bus.write(0x64, 1, 0xF1)  # pulse bits 3:1, not the reset line
    assert machine.resets == 1
    bus.write(0x64, 1, 0xF0)
    assert machine.resets == 2
    bus.write(0x64, 1, 0xD1)  # write output port with reset low
    bus.write(0x60, 1, 0x02)
    assert machine.resets == 3


def test_output_port_and_a20() -> None:
    _, bus = controller(FakeMachine())
    bus.write(0x64, 1, 0xD0)
    assert drain(bus) == [0xCF]
    bus.write(0x64, 1, 0xDD)
    bus.write(0x64, 1, 0xD0)
    assert drain(bus) == [0xCD]


def test_ctrl_alt_del_follows_translation() -> None:
    machine = FakeMachine()
    device, bus = controller(machine)
    device.send_ctrl_alt_del()
    assert machine.irq(1).level == 1
    assert bytes(drain(bus)) == CTRL_ALT_DEL_SET2
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, 0x43)  # translate to set 1
    device.send_ctrl_alt_del()
    assert bytes(drain(bus)) == CTRL_ALT_DEL_SET1


def test_disabled_keyboard_holds_its_bytes() -> None:
    machine = FakeMachine()
    device, bus = controller(machine)
    bus.write(0x64, 1, 0xAD)
    device.send_ctrl_alt_del()
    assert not bus.read(0x64, 1) & 0x01 and machine.irq(1).level == 0
    bus.write(0x64, 1, 0xAE)
    assert bytes(drain(bus)) == CTRL_ALT_DEL_SET2
