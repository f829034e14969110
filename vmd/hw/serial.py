"""The 16550A UART, ``isa-serial`` (QEMU's hw/char/serial.c behaviour).

Registers at offsets 0-7 from ``iobase``: RBR/THR (DLL with LCR.DLAB),
IER (DLM), IIR/FCR, LCR, MCR, LSR, MSR, SCR. Both FIFOs are 16 bytes.
What the guest sees follows QEMU's model rather than a real chip's
timing: a byte written to THR goes to the chardev at once, so THRE and
TEMT are set again before the guest's next instruction -- unless the
chardev is full, in which case THRE stays clear until it drains (QEMU's
``tsr_retry``). Input is taken only while there is room: one byte without
the FIFO, up to the trigger level with it (QEMU's ``serial_can_receive``),
so what the guest has not read yet waits in the chardev. A FIFO holding
fewer bytes than the trigger level raises the character-timeout
interrupt after four character times.

The interrupt line follows the highest-priority pending condition, as
QEMU's ``serial_update_irq``; MCR.OUT2 does not gate it (QEMU ignores it).
"""

from __future__ import annotations

from collections import deque

from vmd.hw.charport import CharPort
from vmd.hw.clock import Clock
from vmd.hw.context import DeviceContext
from vmd.hw.irq import IrqLine
from vmd.qom.device import Device
from vmd.qom.errors import QOMError
from vmd.qom.property import Property
from vmd.qom.types import TYPE_ISA_DEVICE, Category, device_type

FIFO_SIZE = 16

IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08
IIR_NO_INT, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_CTI = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FE = 0xC0
IIR_ID = 0x06
FCR_FE, FCR_RFR, FCR_XFR = 0x01, 0x02, 0x04
LCR_DLAB = 0x80
MCR_LOOP, MCR_OUT2 = 0x10, 0x08
LSR_DR, LSR_OE, LSR_BI, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x10, 0x20, 0x40
LSR_INT_ANY = 0x1E
MSR_CTS, MSR_DSR, MSR_DCD = 0x10, 0x20, 0x80
MSR_ANY_DELTA = 0x0F

# The PC's COM ports (QEMU's isa_serial_io/isa_serial_irq) by ``index``.
COM_PORTS = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))
_TRIGGER_LEVELS = (1, 4, 8, 14)
_NO_VALUE = 0xFFFF_FFFF


class Uart:
    """The register model; ``isa-serial`` puts it on the ISA bus.

    ``port`` may be None (no chardev: output is dropped, no input).
    """

    def __init__(self, irq: IrqLine, port: CharPort | None, clock: Clock | None,
                 baudbase: int = 115200) -> None:
        self.irq = irq
        self.port = port
        self.clock = clock
        self.timer = clock.timer(self.fifo_timeout) if clock is not None else None
        self.baudbase = baudbase
        self.rx: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        self.rbr = 0
        self.ier = 0
        self.iir = IIR_NO_INT
        self.lcr = 0
        self.lsr = LSR_TEMT | LSR_THRE
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.mcr = MCR_OUT2
        self.scr = 0
        self.fcr = 0
        self.divider = 0x0C  # 9600 baud
        self.trigger = 1
        self.thr_ipending = False
        self.timeout_ipending = False
        self.tx_pending: int | None = None  # a byte the chardev did not take
        self.rx.clear()
        if self.timer is not None:
            self.timer.cancel()
        self.irq.set_level(0)

    # -- guest accesses -------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        del size
        reg = offset & 7
        if reg == 0:
            return self.divider & 0xFF if self.lcr & LCR_DLAB else self._read_rbr()
        if reg == 1:
            return (self.divider >> 8) & 0xFF if self.lcr & LCR_DLAB else self.ier
        if reg == 2:
            value = self.iir
            if value & IIR_ID == IIR_THRI and value & IIR_NO_INT == 0:
                self.thr_ipending = False
                self._update_irq()
            return value
        if reg == 3:
            return self.lcr
        if reg == 4:
            return self.mcr
        if reg == 5:
            return self._read_lsr()
        if reg == 6:
            return self._read_msr()
        return self.scr

    def write(self, offset: int, size: int, value: int) -> None:
        del size
        reg, value = offset & 7, value & 0xFF
        if reg == 0:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0xFF00) | value
            else:
                self._write_thr(value)
        elif reg == 1:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0x00FF) | (value << 8)
            else:
                self._write_ier(value)
        elif reg == 2:
            self._write_fcr(value)
        elif reg == 3:
            self.lcr = value
        elif reg == 4:
            self.mcr = value & 0x1F
        elif reg == 7:
            self.scr = value
        # LSR and MSR writes are ignored, as in QEMU.

    def _read_rbr(self) -> int:
        if self.fcr & FCR_FE:
            value = self.rx.popleft() if self.rx else 0
            if not self.rx:
                self.lsr &= ~(LSR_DR | LSR_BI)
            else:
                self._arm_timeout()
            self.timeout_ipending = False
        else:
            value = self.rbr
            self.lsr &= ~(LSR_DR | LSR_BI)
        self._update_irq()
        if not self.mcr & MCR_LOOP and self.port is not None:
            self.port.accept_input()
        return value

    def _read_lsr(self) -> int:
        value = self.lsr
        if self.lsr & (LSR_BI | LSR_OE):
            self.lsr &= ~(LSR_BI | LSR_OE)
            self._update_irq()
        return value

    def _read_msr(self) -> int:
        if self.mcr & MCR_LOOP:
            # In loopback the modem outputs feed the inputs.
            return ((self.mcr & 0x0C) << 4) | ((self.mcr & 0x02) << 3) | ((self.mcr & 0x01) << 5)
        value = self.msr
        if self.msr & MSR_ANY_DELTA:
            self.msr &= 0xF0
            self._update_irq()
        return value

    def _write_thr(self, value: int) -> None:
        self.thr_ipending = False
        self.lsr &= ~(LSR_THRE | LSR_TEMT)
        self._update_irq()
        if self.tx_pending is None:
            self._transmit(value)
        # else: the chardev is full and a byte is waiting; as QEMU's xmit
        # FIFO would overrun, the new byte replaces nothing and is dropped.

    def _transmit(self, value: int) -> None:
        if self.mcr & MCR_LOOP:
            self._receive_byte(value)
        elif self.port is not None and self.port.write(bytes([value])) == 0:
            self.tx_pending = value
            return
        self.lsr |= LSR_THRE | LSR_TEMT
        self.thr_ipending = True
        self._update_irq()

    def _write_ier(self, value: int) -> None:
        changed = (self.ier ^ value) & 0x0F
        self.ier = value & 0x0F
        if changed & IER_THRI:
            # Enabling THRI with THR empty raises it again (QEMU, and
            # Windows relies on it).
            self.thr_ipending = bool(self.ier & IER_THRI and self.lsr & LSR_THRE)
        if changed:
            self._update_irq()

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_FE:
            value |= FCR_XFR | FCR_RFR
        if value & FCR_RFR:
            self.lsr &= ~(LSR_DR | LSR_BI)
            self.timeout_ipending = False
            if self.timer is not None:
                self.timer.cancel()
            self.rx.clear()
        if value & FCR_XFR:
            self.lsr |= LSR_THRE
            self.thr_ipending = True
        self.fcr = value & 0xC9
        if self.fcr & FCR_FE:
            self.iir |= IIR_FE
            self.trigger = _TRIGGER_LEVELS[value >> 6]
        else:
            self.iir &= ~IIR_FE
        self._update_irq()
        if value & FCR_RFR and self.port is not None:
            self.port.accept_input()

    # -- input ----------------------------------------------------------------

    def can_receive(self) -> int:
        if self.mcr & MCR_LOOP:
            return 0
        if self.fcr & FCR_FE:
            if len(self.rx) >= FIFO_SIZE:
                return 0
            count = len(self.rx)
            return self.trigger - count if count <= self.trigger else 1
        return 0 if self.lsr & LSR_DR else 1

    def receive(self, data: bytes) -> None:
        for byte in data:
            self._receive_byte(byte)

    def receive_break(self) -> None:
        self.rbr = 0
        self._put_rx(0)
        self.lsr |= LSR_BI | LSR_DR
        self._update_irq()

    def peer(self, connected: bool) -> None:
        """Nothing to do: the UART has no carrier to raise."""
        del connected

    def writable(self) -> None:
        """The chardev drained: send the byte that waited, set THRE."""
        value, self.tx_pending = self.tx_pending, None
        if value is not None:
            self._transmit(value)

    def _receive_byte(self, byte: int) -> None:
        if self.fcr & FCR_FE:
            self._put_rx(byte)
            self.lsr |= LSR_DR
            self._arm_timeout()
        else:
            if self.lsr & LSR_DR:
                self.lsr |= LSR_OE
            self.rbr = byte
            self.lsr |= LSR_DR
        self._update_irq()

    def _put_rx(self, byte: int) -> None:
        if len(self.rx) < FIFO_SIZE:
            self.rx.append(byte)
        else:
            self.lsr |= LSR_OE

    def _arm_timeout(self) -> None:
        """Character timeout: four character times from now."""
        if self.clock is not None and self.timer is not None:
            self.timer.arm(self.clock.now_ns() + 4 * self.char_time_ns())

    def char_time_ns(self) -> int:
        """Time of one frame at the programmed rate (QEMU: 1 s / speed x bits)."""
        divider = self.divider or 1
        speed = self.baudbase / divider
        bits = 1 + 5 + (self.lcr & 0x03) + (1 if self.lcr & 0x08 else 0) + (2 if self.lcr & 0x04 else 1)
        return int(1e9 / speed * bits)

    def fifo_timeout(self) -> None:
        """Timer callback: data sat below the trigger level long enough."""
        if self.rx:
            self.timeout_ipending = True
            self._update_irq()

    def _update_irq(self) -> None:
        if self.ier & IER_RLSI and self.lsr & LSR_INT_ANY:
            pending = IIR_RLSI
        elif self.ier & IER_RDI and self.timeout_ipending:
            pending = IIR_CTI
        elif (self.ier & IER_RDI and self.lsr & LSR_DR
              and (not self.fcr & FCR_FE or len(self.rx) >= self.trigger)):
            pending = IIR_RDI
        elif self.ier & IER_THRI and self.thr_ipending:
            pending = IIR_THRI
        elif self.ier & IER_MSI and self.msr & MSR_ANY_DELTA:
            pending = IIR_MSI
        else:
            pending = IIR_NO_INT
        self.iir = pending | (self.iir & 0xF0)
        self.irq.set_level(0 if pending == IIR_NO_INT else 1)


@device_type("isa-serial", TYPE_ISA_DEVICE, categories=(Category.INPUT,), properties=(
    Property("index", "uint32", _NO_VALUE),
    Property("iobase", "uint32", _NO_VALUE),
    Property("irq", "uint32", _NO_VALUE),
    Property("chardev", "str", None, "ID of a chardev to use as a backend", in_qtree=False),
    Property("baudbase", "uint32", 115200, in_qtree=False),
    Property("wakeup", "bool", False, in_qtree=False),
))
class IsaSerial(Device):
    """A 16550A on the ISA bus; ``index`` picks COM1-4's port and IRQ."""

    uart: Uart

    def realize(self, ctx: DeviceContext) -> None:
        index = self.props["index"]
        if index == _NO_VALUE:  # QEMU counts the ports realized before
            index = sum(m.name == "serial" for m in ctx.pio.mappings())
            self.props["index"] = index
        if index >= len(COM_PORTS):
            raise QOMError("Max. supported number of ISA serial ports is 4.")
        base, irq = COM_PORTS[index]
        if self.props["iobase"] == _NO_VALUE:
            self.props["iobase"] = base
        if self.props["irq"] == _NO_VALUE:
            self.props["irq"] = irq
        port = None
        chardev_id = self.props["chardev"]
        if chardev_id:
            port = ctx.chardev(chardev_id)
            if port is None:
                raise QOMError(
                    f"Property 'serial.chardev' can't find value '{chardev_id}'")
        self.uart = Uart(ctx.irq(self.props["irq"]), port, ctx.clock,
                         self.props["baudbase"])
        ctx.pio.map(self.props["iobase"], 8, self.uart, "serial")
        if port is not None:
            port.connect(self.uart)
        super().realize(ctx)

    def reset(self) -> None:
        self.uart.reset()
