"""The 16550A UART fed register accesses, checked against QEMU's serial.c."""

from __future__ import annotations

import pytest

from tests.hw_fakes import FakeMachine, FakePort
from vmd.hw import devices  # noqa: F401  (registers the types)
from vmd.hw.serial import IsaSerial, Uart
from vmd.qom.device import create_device
from vmd.qom.errors import QOMError

COM1 = 0x3F8


def serial(machine: FakeMachine, **props: str) -> tuple[IsaSerial, FakePort]:
    port = machine.ports.setdefault("s0", FakePort())
    options = {"driver": "isa-serial", "chardev": "s0", **props}
    device = create_device(options)
    assert isinstance(device, IsaSerial)
    ctx = machine.context()
    device.realize(ctx)
    machine.bus = ctx.pio  # type: ignore[attr-defined]
    return device, port


@pytest.fixture
def machine() -> FakeMachine:
    return FakeMachine()


def io(machine: FakeMachine):  # type: ignore[no-untyped-def]
    return machine.bus  # type: ignore[attr-defined]


def test_reset_state_is_qemus(machine: FakeMachine) -> None:
    device, _ = serial(machine)
    bus = io(machine)
    assert device.props["iobase"] == COM1 and device.props["irq"] == 4
    assert [bus.read(COM1 + r, 1) for r in range(1, 8)] == [0x00, 0x01, 0x00, 0x08, 0x60, 0xB0, 0x00]
    assert machine.irq(4).level == 0


def test_scratch_and_divisor_latch(machine: FakeMachine) -> None:
    serial(machine)
    bus = io(machine)
    bus.write(COM1 + 7, 1, 0x5A)
    assert bus.read(COM1 + 7, 1) == 0x5A
    bus.write(COM1 + 1, 1, 0x03)  # IER
    bus.write(COM1 + 3, 1, 0x83)  # DLAB on, 8N1
    assert (bus.read(COM1, 1), bus.read(COM1 + 1, 1)) == (0x0C, 0x00)
    bus.write(COM1, 1, 0x01)
    bus.write(COM1 + 1, 1, 0x02)
    assert (bus.read(COM1, 1), bus.read(COM1 + 1, 1)) == (0x01, 0x02)
    bus.write(COM1 + 3, 1, 0x03)
    assert bus.read(COM1 + 1, 1) == 0x03  # IER again


def test_output_and_thre_interrupt(machine: FakeMachine) -> None:
    _, port = serial(machine)
    bus = io(machine)
    for byte in b"hi\n":
        bus.write(COM1, 1, byte)
    assert bytes(port.output) == b"hi\n"
    assert bus.read(COM1 + 5, 1) & 0x60 == 0x60
    bus.write(COM1 + 1, 1, 0x02)  # enable THRI: THR is empty, so it fires
    assert machine.irq(4).level == 1
    assert bus.read(COM1 + 2, 1) == 0x02
    assert machine.irq(4).level == 0  # reading IIR acknowledged it
    assert bus.read(COM1 + 2, 1) == 0x01


def test_full_chardev_holds_thre_until_it_drains(machine: FakeMachine) -> None:
    _, port = serial(machine)
    bus = io(machine)
    bus.write(COM1 + 1, 1, 0x02)
    bus.read(COM1 + 2, 1)
    port.full = True
    bus.write(COM1, 1, ord("x"))
    assert bus.read(COM1 + 5, 1) & 0x60 == 0
    assert machine.irq(4).level == 0
    port.drain()
    assert bytes(port.output) == b"x"
    assert bus.read(COM1 + 5, 1) & 0x60 == 0x60
    assert machine.irq(4).level == 1


def test_input_without_fifo_waits_for_the_guest(machine: FakeMachine) -> None:
    device, port = serial(machine)
    bus = io(machine)
    uart = device.uart
    bus.write(COM1 + 1, 1, 0x01)  # RDI
    assert uart.can_receive() == 1
    uart.receive(b"a")
    assert uart.can_receive() == 0  # the next byte stays in the chardev
    assert machine.irq(4).level == 1 and bus.read(COM1 + 2, 1) == 0x04
    assert bus.read(COM1 + 5, 1) & 0x01
    assert bus.read(COM1, 1) == ord("a")
    assert port.accepts == 1 and uart.can_receive() == 1
    assert machine.irq(4).level == 0 and not bus.read(COM1 + 5, 1) & 0x01


def test_overrun_and_break(machine: FakeMachine) -> None:
    device, _ = serial(machine)
    bus = io(machine)
    device.uart.receive(b"ab")
    assert bus.read(COM1 + 5, 1) & 0x03 == 0x03  # DR and OE
    assert bus.read(COM1 + 5, 1) & 0x02 == 0  # reading LSR cleared OE
    assert bus.read(COM1, 1) == ord("b")
    bus.write(COM1 + 1, 1, 0x04)  # RLSI
    device.uart.receive_break()
    assert bus.read(COM1 + 2, 1) == 0x06
    assert bus.read(COM1 + 5, 1) & 0x11 == 0x11
    assert bus.read(COM1, 1) == 0


def test_fifo_trigger_level_and_character_timeout(machine: FakeMachine) -> None:
    device, _ = serial(machine)
    bus = io(machine)
    uart = device.uart
    bus.write(COM1 + 2, 1, 0x81)  # FIFO on, trigger 8
    assert bus.read(COM1 + 2, 1) == 0xC1
    bus.write(COM1 + 1, 1, 0x01)
    assert uart.can_receive() == 8
    uart.receive(b"abc")
    assert uart.can_receive() == 5
    assert machine.irq(4).level == 0  # below the trigger level
    machine.clock.advance(4 * uart.char_time_ns())
    assert bus.read(COM1 + 2, 1) == 0xCC  # character timeout
    assert bytes(bus.read(COM1, 1) for _ in range(3)) == b"abc"
    assert machine.irq(4).level == 0
    uart.receive(b"12345678")
    assert bus.read(COM1 + 2, 1) == 0xC4  # trigger level reached
    assert uart.can_receive() == 0  # exactly at the trigger: QEMU takes none
    bus.read(COM1, 1)
    assert uart.can_receive() == 1


def test_fifo_fills_to_the_trigger_level_then_waits(machine: FakeMachine) -> None:
    device, _ = serial(machine)
    uart: Uart = device.uart
    io(machine).write(COM1 + 2, 1, 0xC1)  # trigger 14
    while (room := uart.can_receive()) > 0:
        uart.receive(b"x" * room)
    assert len(uart.rx) == 14 and not uart.lsr & 0x02


def test_loopback(machine: FakeMachine) -> None:
    _, port = serial(machine)
    bus = io(machine)
    bus.write(COM1 + 4, 1, 0x1F)  # loop, all modem outputs
    assert bus.read(COM1 + 6, 1) == 0xF0
    bus.write(COM1, 1, 0x42)
    assert port.output == b"" and bus.read(COM1, 1) == 0x42


def test_index_and_chardev_errors(machine: FakeMachine) -> None:
    with pytest.raises(QOMError, match="Max. supported number of ISA serial ports is 4."):
        serial(machine, index="4")
    with pytest.raises(QOMError, match="Property 'serial.chardev' can't find value 'nope'"):
        create_device({"driver": "isa-serial", "chardev": "nope"}).realize(machine.context())


def test_second_port_gets_com2(machine: FakeMachine) -> None:
    ctx = machine.context()
    first = create_device({"driver": "isa-serial"})
    second = create_device({"driver": "isa-serial"})
    first.realize(ctx)
    second.realize(ctx)
    assert (second.props["iobase"], second.props["irq"]) == (0x2F8, 3)
    assert ctx.pio.read(0x2F8 + 5, 1) == 0x60
