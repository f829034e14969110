"""QEMU's debugging ports: ``isa-debugcon`` and ``isa-debug-exit``.

``isa-debugcon`` (port 0xE9 by default, Bochs' "port e9 hack") sends each
byte written to its chardev and reads back ``readback``. QEMU writes with
``qemu_chr_fe_write_all``, stalling the vCPU while the peer does not
read; vCPUs here never wait on the event loop, so a byte that finds the
chardev's small queue full is dropped instead.

``isa-debug-exit`` ends the process with status ``(value << 1) | 1`` for
any value written (so a guest can never exit with 0); reads return 0.
"""

from __future__ import annotations

from collections.abc import Callable

from vmd.hw.charport import CharPort
from vmd.hw.context import DeviceContext
from vmd.qom.device import Device
from vmd.qom.errors import QOMError
from vmd.qom.property import Property
from vmd.qom.types import TYPE_ISA_DEVICE, Category, device_type


class DebugconRegister:
    def __init__(self, port: CharPort | None, readback: int) -> None:
        self.port = port
        self.readback = readback

    def read(self, offset: int, size: int) -> int:
        del offset, size
        return self.readback

    def write(self, offset: int, size: int, value: int) -> None:
        del offset, size
        if self.port is not None:
            self.port.write(bytes([value & 0xFF]))


@device_type("isa-debugcon", TYPE_ISA_DEVICE, categories=(Category.MISC,), properties=(
    Property("iobase", "uint32", 0xE9),
    Property("chardev", "str", None, "ID of a chardev to use as a backend"),
    Property("readback", "uint32", 0xE9),
))
class IsaDebugcon(Device):
    register: DebugconRegister

    def realize(self, ctx: DeviceContext) -> None:
        chardev_id = self.props["chardev"]
        port = ctx.chardev(chardev_id) if chardev_id else None
        if chardev_id and port is None:
            raise QOMError(
                f"Property 'isa-debugcon.chardev' can't find value '{chardev_id}'")
        if port is None:
            raise QOMError("Can't create debugcon device, empty char device")
        self.register = DebugconRegister(port, self.props["readback"])
        ctx.pio.map(self.props["iobase"], 1, self.register, "isa-debugcon")
        super().realize(ctx)


class DebugExitRegister:
    def __init__(self, request_exit: Callable[[int], None]) -> None:
        self._request_exit = request_exit

    def read(self, offset: int, size: int) -> int:
        del offset, size
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        del offset, size
        self._request_exit((value << 1) | 1)


@device_type("isa-debug-exit", TYPE_ISA_DEVICE, categories=(Category.MISC,), properties=(
    Property("iobase", "uint32", 0x501),
    Property("iosize", "uint32", 0x02),
))
class IsaDebugExit(Device):
    def realize(self, ctx: DeviceContext) -> None:
        ctx.pio.map(self.props["iobase"], self.props["iosize"],
                    DebugExitRegister(ctx.request_exit), "isa-debug-exit",
                    max_access=4)
        super().realize(ctx)
