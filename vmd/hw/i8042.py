"""The i8042 keyboard controller with a PS/2 keyboard (QEMU's pckbd.c).

Port 0x60 is the data port, 0x64 status (read) and command (write). What
matters to a VMM: the reset line (command 0xFE, or any pulse command
0xF0-0xFE with bit 0 clear, or an output-port write with bit 0 clear,
asks the machine for a guest reset), the A20 bit, and enough of the
controller and keyboard protocol for firmware and Linux probes (self
test, command byte, keyboard reset and identify). ``send_ctrl_alt_del``
types Ctrl-Alt-Del, which the machine uses for ``system_powerdown`` when
the guest has no ACPI to receive a power-button event.

The output buffer is one byte (status OBF, IRQ 1 or 12 when enabled in
the command byte); further replies queue behind it and move up when the
guest reads port 0x60. The PS/2 mouse answers commands with ACK only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from vmd.hw.context import DeviceContext
from vmd.hw.irq import IrqLine, NoIrq
from vmd.qom.device import Device
from vmd.qom.property import Property
from vmd.qom.types import TYPE_ISA_DEVICE, Category, device_type

STAT_OBF, STAT_SELFTEST, STAT_CMD, STAT_UNLOCKED, STAT_MOUSE_OBF = 0x01, 0x04, 0x08, 0x10, 0x20
MODE_KBD_INT, MODE_MOUSE_INT, MODE_DISABLE_KBD, MODE_DISABLE_MOUSE, MODE_KCC = (
    0x01, 0x02, 0x10, 0x20, 0x40)
OUT_RESET, OUT_A20, OUT_ONES = 0x01, 0x02, 0xCC
ACK = 0xFA
QUEUE_LIMIT = 256

# Commands that take a byte on port 0x60 afterwards.
CMD_WRITE_MODE, CMD_WRITE_OUTPORT, CMD_WRITE_OBUF, CMD_WRITE_AUX_OBUF, CMD_WRITE_MOUSE = (
    0x60, 0xD1, 0xD2, 0xD3, 0xD4)
_DATA_COMMANDS = (CMD_WRITE_MODE, CMD_WRITE_OUTPORT, CMD_WRITE_OBUF,
                  CMD_WRITE_AUX_OBUF, CMD_WRITE_MOUSE)
# Keyboard commands followed by a parameter byte (LEDs, scan set, rate).
_KBD_PARAM_COMMANDS = (0xED, 0xF0, 0xF3)

# Ctrl-Alt-Del: make codes then break codes, scan set 1 (what the guest
# sees with translation on) and scan set 2.
CTRL_ALT_DEL_SET1 = bytes([0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D])
CTRL_ALT_DEL_SET2 = bytes([0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14])


class I8042Controller:
    """The controller registers; ``read``/``write`` take port offsets 0 (0x60) and 4 (0x64)."""

    def __init__(self, kbd_irq: IrqLine, mouse_irq: IrqLine,
                 request_reset: Callable[[], None], a20: IrqLine | None = None) -> None:
        self.kbd_irq = kbd_irq
        self.mouse_irq = mouse_irq
        self.a20 = a20 if a20 is not None else NoIrq()
        self._request_reset = request_reset
        self.queue: deque[tuple[int, bool]] = deque()
        self.reset()

    def reset(self) -> None:
        self.mode = MODE_KBD_INT | MODE_MOUSE_INT
        self.status = STAT_CMD | STAT_UNLOCKED
        self.outport = OUT_RESET | OUT_A20 | OUT_ONES
        self.write_cmd = 0
        self.kbd_param_cmd = 0
        self.kbd_scanning = True
        self.obdata = 0
        self.ob_aux = False
        self.queue.clear()
        self._update_irq()

    # -- guest accesses -------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        del size
        if offset == 4:
            return self.status
        value = self.obdata
        if self.status & STAT_OBF:
            self.status &= ~(STAT_OBF | STAT_MOUSE_OBF)
            self._update_irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        del size
        value &= 0xFF
        if offset == 4:
            self._command(value)
        else:
            self._data(value)

    def _command(self, value: int) -> None:
        if value & 0xF0 == 0xF0:  # pulse output-port bits 3:0
            if not value & 1:
                self._request_reset()
            return
        if value in _DATA_COMMANDS:
            self.write_cmd = value
        elif value == 0x20:
            self._queue(self.mode)
        elif value == 0xA7:
            self.mode |= MODE_DISABLE_MOUSE
        elif value == 0xA8:
            self.mode &= ~MODE_DISABLE_MOUSE
        elif value in (0xA9, 0xAB):  # aux / keyboard interface test: OK
            self._queue(0x00)
        elif value == 0xAA:
            self.status |= STAT_SELFTEST
            self._queue(0x55)
        elif value == 0xAD:
            self.mode |= MODE_DISABLE_KBD
            self._update_irq()
        elif value == 0xAE:
            self.mode &= ~MODE_DISABLE_KBD
            self._update_irq()
        elif value == 0xC0:
            self._queue(0x80)
        elif value == 0xD0:
            self._queue(self.outport)
        elif value == 0xDD:
            self._set_outport(self.outport & ~OUT_A20)
        elif value == 0xDF:
            self._set_outport(self.outport | OUT_A20)

    def _data(self, value: int) -> None:
        command, self.write_cmd = self.write_cmd, 0
        if command == 0:
            self._keyboard(value)
        elif command == CMD_WRITE_MODE:
            self.mode = value
            self._update_irq()
        elif command == CMD_WRITE_OBUF:
            self._queue(value)
        elif command == CMD_WRITE_AUX_OBUF:
            self._queue(value, aux=True)
        elif command == CMD_WRITE_OUTPORT:
            self._set_outport(value)
        elif command == CMD_WRITE_MOUSE:
            self._mouse(value)

    def _set_outport(self, value: int) -> None:
        self.outport = value
        self.a20.set_level((value >> 1) & 1)
        if not value & OUT_RESET:
            self._request_reset()

    # -- the PS/2 devices behind the controller --------------------------------

    def _keyboard(self, value: int) -> None:
        """A byte for the keyboard: a command, or a command's parameter."""
        if self.kbd_param_cmd:
            self.kbd_param_cmd = 0
            self._queue(ACK)
        elif value in _KBD_PARAM_COMMANDS:
            self.kbd_param_cmd = value
            self._queue(ACK)
        elif value == 0xEE:  # echo
            self._queue(0xEE)
        elif value == 0xF2:  # identify: MF2 keyboard
            self._queue(ACK, 0xAB, 0x83)
        elif value == 0xF4:
            self.kbd_scanning = True
            self._queue(ACK)
        elif value == 0xF5:
            self.kbd_scanning = False
            self._queue(ACK)
        elif value == 0xFF:  # reset and self test passed
            self.kbd_scanning = True
            self._queue(ACK, 0xAA)
        else:
            self._queue(ACK)

    def _mouse(self, value: int) -> None:
        if value == 0xFF:
            self._queue(ACK, 0xAA, 0x00, aux=True)
        elif value == 0xF2:
            self._queue(ACK, 0x00, aux=True)
        else:
            self._queue(ACK, aux=True)

    def send_ctrl_alt_del(self) -> None:
        """Type Ctrl-Alt-Del on the keyboard (when it is scanning)."""
        if self.kbd_scanning:
            codes = CTRL_ALT_DEL_SET1 if self.mode & MODE_KCC else CTRL_ALT_DEL_SET2
            self._queue(*codes)

    # -- output buffer -----------------------------------------------------------

    def _queue(self, *values: int, aux: bool = False) -> None:
        for value in values:
            if len(self.queue) < QUEUE_LIMIT:
                self.queue.append((value, aux))
        self._update_irq()

    def _update_irq(self) -> None:
        """Move the next queued byte up when OBF is clear; set the IRQs."""
        if not self.status & STAT_OBF and self.queue:
            aux = self.queue[0][1]
            disabled = MODE_DISABLE_MOUSE if aux else MODE_DISABLE_KBD
            if not self.mode & disabled:
                self.obdata, self.ob_aux = self.queue.popleft()
                self.status |= STAT_OBF | (STAT_MOUSE_OBF if aux else 0)
        full = bool(self.status & STAT_OBF)
        self.kbd_irq.set_level(int(full and not self.ob_aux and bool(self.mode & MODE_KBD_INT)))
        self.mouse_irq.set_level(int(full and self.ob_aux and bool(self.mode & MODE_MOUSE_INT)))


class _Window:
    """One of the controller's two one-byte ports on the bus."""

    def __init__(self, controller: I8042Controller, offset: int) -> None:
        self._controller = controller
        self._offset = offset

    def read(self, offset: int, size: int) -> int:
        return self._controller.read(self._offset + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._controller.write(self._offset + offset, size, value)


@device_type("i8042", TYPE_ISA_DEVICE, categories=(Category.INPUT,), properties=(
    Property("extended-state", "bool", True),
    Property("kbd-throttle", "bool", False),
    Property("kbd-irq", "uint8", 1),
    Property("mouse-irq", "uint8", 12),
))
class I8042(Device):
    """``i8042`` at ports 0x60 and 0x64."""

    gpios = (("in", "ps2-mouse-input-irq", 1), ("in", "ps2-kbd-input-irq", 1),
             ("out", "", 2), ("out", "a20", 1))
    controller: I8042Controller

    def realize(self, ctx: DeviceContext) -> None:
        self.controller = I8042Controller(ctx.irq(self.props["kbd-irq"]),
                                          ctx.irq(self.props["mouse-irq"]),
                                          ctx.request_reset)
        ctx.pio.map(0x60, 1, _Window(self.controller, 0), "i8042-data")
        ctx.pio.map(0x64, 1, _Window(self.controller, 4), "i8042-cmd")
        super().realize(ctx)

    def reset(self) -> None:
        self.controller.reset()

    def send_ctrl_alt_del(self) -> None:
        self.controller.send_ctrl_alt_del()
