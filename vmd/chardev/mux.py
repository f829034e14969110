"""The ``mux`` chardev: several front ends share one base chardev.

As QEMU's chardev/char-mux.c: the mux is the single front end of its base
chardev and offers up to four front ends of its own (``-serial mon:stdio``
puts the monitor and the serial port on one terminal). Output of every
front end goes to the base. Input goes to the front end with the focus;
the focus moves to each newly attached front end and, on Ctrl-A c, to the
next one. Ctrl-A is the escape key:

* ``C-a h`` (or ``?``) prints the help, ``C-a x`` ends vmd,
* ``C-a c`` switches the focus, ``C-a b`` sends a break to the focused
  front end, ``C-a C-a`` sends a Ctrl-A,
* ``C-a s`` (commit disks) and ``C-a t`` (timestamps) are accepted and do
  nothing in vmd.

A front end may implement the optional hooks ``chr_mux_out()`` (it lost
the focus) and ``chr_mux_in()`` (it has it again), QEMU's CHR_EVENT_MUX_OUT
and CHR_EVENT_MUX_IN; the HMP monitor uses them to hold its output and
print a fresh prompt. Like QEMU 7.2, a mux always counts as busy, so
``chardev-remove`` refuses it (and its base, which the mux uses).
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import ShutdownCause
from vmd.chardev.base import Chardev, ChardevError, CharFrontend
from vmd.chardev.registry import ChardevRegistry, backend
from vmd.qmp.errors import QMPError

MAX_FRONTENDS = 4  # MAX_MUX
BUFFER_SIZE = 32   # MUX_BUFFER_SIZE: input held per front end
ESCAPE = 0x01      # Ctrl-A

_HELP = (
    "h    print this help",
    "x    exit emulator",
    "s    save disk data back to file (if -snapshot)",
    "t    toggle console timestamps",
    "b    send break (magic sysrq)",
    "c    switch between console and monitor",
)
HELP_TEXT = ("\n\r" + "".join(f"C-a {line}\n\r" for line in _HELP)
             + "C-a C-a  sends C-a\n\r")
TERMINATED = "QEMU: Terminated\n\r"


@backend("mux")
class MuxChardev(Chardev):
    """The front end of its base chardev, and a chardev for several others."""

    kind = "mux"
    always_busy = True  # qemu_chr_is_busy() of a mux in QEMU 7.2

    def __init__(self, chardev_id: str, options: Any,
                 registry: ChardevRegistry) -> None:
        super().__init__(chardev_id)
        self.base_id: str = options.chardev
        self._registry = registry
        self.base: Chardev | None = None
        self.frontends: list[CharFrontend] = []
        self._buffers: list[bytearray] = []
        self.focus = -1
        self._escape = False

    # -- life cycle ---------------------------------------------------------

    async def open(self) -> None:
        base = self._registry.get(self.base_id)
        if base is None:
            raise ChardevError(f"mux: base chardev {self.base_id} not found")
        if base.frontend is not None:
            raise ChardevError(f"Device '{self.base_id}' is in use")
        self.base = base
        base.attach(self)

    async def close(self) -> None:
        if self.base is not None and self.base.frontend is self:
            self.base.detach()
        self.base = None

    def filename(self) -> str:
        return "mux"

    # -- our front ends -------------------------------------------------------

    def attach(self, frontend: CharFrontend) -> None:
        """Add a front end; it takes the focus (qemu_chr_fe_take_focus)."""
        if len(self.frontends) >= MAX_FRONTENDS:
            raise QMPError(f"Device '{self.id}' is in use")
        self.frontends.append(frontend)
        self._buffers.append(bytearray())
        self._set_focus(len(self.frontends) - 1)
        if self.connected:
            frontend.chr_open()
        self.accept_input()

    def has_room_for_frontend(self) -> bool:
        return len(self.frontends) < MAX_FRONTENDS

    def detach(self, frontend: CharFrontend | None = None) -> None:
        """Remove ``frontend`` (default: the focused one)."""
        if not self.frontends or (frontend is not None and frontend not in self.frontends):
            return
        index = self.focus if frontend is None else self.frontends.index(frontend)
        del self.frontends[index]
        del self._buffers[index]
        if not self.frontends:
            self.focus, self.frontend = -1, None
        elif index <= self.focus:
            self._set_focus(max(self.focus - 1, 0), notify_old=False)

    def _set_focus(self, index: int, notify_old: bool = True) -> None:
        """mux_set_focus(): MUX_OUT to the old front end, MUX_IN to the new."""
        old = self.frontend
        if notify_old and old is not None:
            _hook(old, "chr_mux_out")
        self.focus = index
        self.frontend = self.frontends[index]
        _hook(self.frontend, "chr_mux_in")

    def switch_focus(self) -> None:
        """Ctrl-A c: the next front end gets the input."""
        if self.frontends:
            self._set_focus((self.focus + 1) % len(self.frontends))
            self.accept_input()

    def write(self, data: bytes) -> int:
        if self.base is None:
            return len(data)
        return self.base.write(data)

    def accept_input(self) -> None:
        """Hand held input to the focused front end, then read the base."""
        self._flush_input()
        if self.base is not None and self.chr_can_receive() > 0:
            self.base.accept_input()

    def set_connected(self, connected: bool) -> None:
        """OPENED and CLOSED go to every front end, as mux_chr_event()."""
        if connected == self.connected:
            return
        self.connected = connected
        for frontend in list(self.frontends):
            if connected:
                frontend.chr_open()
            else:
                frontend.chr_close()

    # -- CharFrontend of the base ----------------------------------------------

    def chr_open(self) -> None:
        self.set_connected(True)

    def chr_close(self) -> None:
        for buffer in self._buffers:
            buffer.clear()
        self._escape = False
        self.set_connected(False)

    def chr_can_receive(self) -> int:
        if self.focus < 0:
            return 0
        return max(BUFFER_SIZE - len(self._buffers[self.focus]), 0)

    def chr_receive(self, data: bytes) -> None:
        for byte in data:
            if self._escape:
                self._escape = False
                if byte == ESCAPE:
                    self._queue(byte)
                else:
                    self._flush_input()  # what came before the key is theirs
                    self._command(byte)
            elif byte == ESCAPE:
                self._escape = True
            else:
                self._queue(byte)
        self._flush_input()

    def chr_writable(self) -> None:
        for frontend in list(self.frontends):
            frontend.chr_writable()

    def chr_break(self) -> None:
        self.send_break()

    # -- input ----------------------------------------------------------------

    def _queue(self, byte: int) -> None:
        if self.focus >= 0:
            self._buffers[self.focus].append(byte)

    def _flush_input(self) -> None:
        """mux_chr_accept_input(): feed the focused front end what it takes."""
        if self.focus < 0:
            return
        frontend, buffer = self.frontends[self.focus], self._buffers[self.focus]
        while buffer:
            room = frontend.chr_can_receive()
            if room <= 0:
                break
            chunk = bytes(buffer[:room])
            del buffer[:room]
            frontend.chr_receive(chunk)
            if self.focus < 0 or self.frontends[self.focus] is not frontend:
                break  # the front end went away while reading

    def _command(self, byte: int) -> None:
        """The key after Ctrl-A (mux_proc_byte)."""
        key = chr(byte)
        if key in "h?":
            self._print(HELP_TEXT)
        elif key == "x":
            self._print(TERMINATED)
            quit_handler = getattr(self._registry, "quit_handler", None)
            if quit_handler is not None:
                quit_handler(ShutdownCause.HOST_QMP_QUIT)
        elif key == "b":
            self.send_break()
        elif key == "c":
            self.switch_focus()
        # 's' (commit -snapshot disks), 't' (timestamps), others: nothing.

    def _print(self, text: str) -> None:
        """Best effort, like QEMU's blocking qemu_chr_write_all()."""
        self.write(text.encode())


def _hook(frontend: CharFrontend, name: str) -> None:
    method = getattr(frontend, name, None)
    if method is not None:
        method()
