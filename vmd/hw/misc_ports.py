"""The PC's small fixed ports: 0x80 (POST/delay) and 0x92 (system control A).

Port 0x80 is not a device in QEMU's tree but a bare I/O region the pc
board maps (``ioport80``): writes, which Linux uses as an I/O delay, are
ignored and reads return 0xFF. Port 0x92 is ``port92``: bit 1 drives the
A20 line, a rising edge on bit 0 asks for a guest reset, reads return the
last value written; a reset clears bit 0.
"""

from __future__ import annotations

from collections.abc import Callable

from vmd.hw.context import DeviceContext
from vmd.hw.irq import IrqLine, NoIrq
from vmd.qom.device import Device
from vmd.qom.types import TYPE_ISA_DEVICE, device_type


class IoPort80:
    """QEMU's ``ioport80`` region (port 0x80, one byte)."""

    def read(self, offset: int, size: int) -> int:
        del offset
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        del offset, size, value


class Port92Register:
    """The register behind port 0x92."""

    def __init__(self, request_reset: Callable[[], None], a20: IrqLine) -> None:
        self._request_reset = request_reset
        self.a20 = a20
        self.outport = 0

    def read(self, offset: int, size: int) -> int:
        del offset, size
        return self.outport

    def write(self, offset: int, size: int, value: int) -> None:
        del offset, size
        old, self.outport = self.outport, value & 0xFF
        self.a20.set_level((value >> 1) & 1)
        if value & 1 and not old & 1:
            self._request_reset()

    def reset(self) -> None:
        self.outport &= ~1


@device_type("port92", TYPE_ISA_DEVICE, user_creatable=False)
class Port92(Device):
    """``port92``; the board may connect ``a20`` before realize."""

    gpios = (("out", "a20", 1),)
    register: Port92Register
    a20: IrqLine = NoIrq()

    def realize(self, ctx: DeviceContext) -> None:
        self.register = Port92Register(ctx.request_reset, self.a20)
        ctx.pio.map(0x92, 1, self.register, "port92")
        super().realize(ctx)

    def reset(self) -> None:
        self.register.reset()
