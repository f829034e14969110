"""The I/O bus and the small PC ports, fed accesses."""

from __future__ import annotations

import pytest

from tests.hw_fakes import FakeMachine, FakePort
from vmd.hw import devices  # noqa: F401
from vmd.hw.bus import BusError, IoBus
from vmd.hw.misc_ports import IoPort80
from vmd.qom.device import create_device
from vmd.qom.errors import QOMError


class Recorder:
    def __init__(self) -> None:
        self.accesses: list[tuple[str, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.accesses.append(("r", offset, size, 0))
        return 0x10 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.accesses.append(("w", offset, size, value))


def test_unassigned_reads_as_qemu() -> None:
    pio = IoBus("io", unassigned_all_ones=True)
    mmio = IoBus("memory", unassigned_all_ones=False)
    assert (pio.read(0x1234, 1), pio.read(0x1234, 2), pio.read(0x1234, 4)) == (0xFF, 0xFFFF, 0xFFFFFFFF)
    assert mmio.read(0xFEE0_0000, 4) == 0
    pio.write(0x1234, 4, 0xDEAD)  # traced, not fatal


def test_wide_access_is_split_little_endian() -> None:
    bus = IoBus("io", unassigned_all_ones=True)
    device = Recorder()
    bus.map(0x100, 2, device, "rec")
    assert bus.read(0x100, 2) == 0x1110
    assert bus.read(0x101, 2) == 0xFF11  # the second byte is unassigned
    bus.write(0x100, 2, 0xBEEF)
    assert device.accesses[-2:] == [("w", 0, 1, 0xEF), ("w", 1, 1, 0xBE)]


def test_overlapping_maps_are_refused() -> None:
    bus = IoBus("io", unassigned_all_ones=True)
    bus.map(0x100, 8, Recorder(), "a")
    with pytest.raises(BusError, match="overlaps"):
        bus.map(0x107, 1, Recorder(), "b")
    bus.map(0x108, 1, Recorder(), "c")
    assert [m.name for m in bus.mappings()] == ["a", "c"]


def test_port80_and_port92() -> None:
    machine = FakeMachine()
    ctx = machine.context()
    ctx.pio.map(0x80, 1, IoPort80(), "ioport80")
    ctx.pio.write(0x80, 1, 0x55)
    assert ctx.pio.read(0x80, 1) == 0xFF
    port92 = create_device({"driver": "port92"}, user=False)
    port92.realize(ctx)
    ctx.pio.write(0x92, 1, 0x02)
    assert ctx.pio.read(0x92, 1) == 0x02 and machine.resets == 0
    ctx.pio.write(0x92, 1, 0x03)
    assert machine.resets == 1
    ctx.pio.write(0x92, 1, 0x03)  # no new rising edge
    assert machine.resets == 1
    port92.reset()
    assert ctx.pio.read(0x92, 1) == 0x02


def test_port92_is_not_pluggable() -> None:
    with pytest.raises(QOMError, match="Parameter 'driver' expects a pluggable device type"):
        create_device({"driver": "port92"})


def test_debugcon() -> None:
    machine = FakeMachine()
    port = machine.ports.setdefault("dbg", FakePort())
    ctx = machine.context()
    create_device({"driver": "isa-debugcon", "chardev": "dbg"}).realize(ctx)
    for byte in b"ok":
        ctx.pio.write(0xE9, 1, byte)
    assert port.output == b"ok" and ctx.pio.read(0xE9, 1) == 0xE9
    with pytest.raises(QOMError, match="Can't create debugcon device, empty char device"):
        create_device({"driver": "isa-debugcon", "iobase": "0x402"}).realize(ctx)


@pytest.mark.parametrize(("size", "value", "status"), [(1, 0, 1), (1, 0x10, 0x21), (4, 0x31, 0x63)])
def test_debug_exit_status(size: int, value: int, status: int) -> None:
    machine = FakeMachine()
    ctx = machine.context()
    create_device({"driver": "isa-debug-exit", "iobase": "0xf4", "iosize": "4"}).realize(ctx)
    ctx.pio.write(0xF4, size, value)
    assert machine.exits == [status]
    assert ctx.pio.read(0xF4, 1) == 0
