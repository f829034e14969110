"""The contract between a chardev backend and its front end.

QEMU splits a character device into a backend (``Chardev``) and the front
end that uses it (``CharBackend`` handlers: ``can_read``, ``read``,
``event``). vmd keeps the same split:

* The front end implements ``CharFrontend``. It is told when a peer
  appears (``chr_open``) or leaves (``chr_close``); it receives input only
  while ``chr_can_receive()`` is positive; it is told when the backend can
  take output again (``chr_writable``).
* The backend implements ``Chardev``. ``write`` never blocks: it returns
  how many bytes were taken, 0 when the backend is full (the front end
  then waits for ``chr_writable``). When no peer is connected output is
  dropped, as QEMU does. Input the front end cannot take is left in the
  kernel (the backend stops reading), so a slow front end costs no memory.

Everything here runs on the event loop thread.
"""

from __future__ import annotations

import logging
from typing import Protocol

from vmd.qmp.errors import QMPError

log = logging.getLogger(__name__)

# At most this much output waits in a backend for a slow peer; beyond it
# ``write`` takes nothing and the front end waits for ``chr_writable``.
OUTPUT_LIMIT = 64 * 1024


class ChardevError(Exception):
    """Opening or using a backend failed; the text is QEMU's reason."""


class CharFrontend(Protocol):
    """What a device or monitor attached to a chardev implements."""

    def chr_open(self) -> None:
        """A peer is connected: bytes written now reach someone."""

    def chr_close(self) -> None:
        """The peer went away."""

    def chr_can_receive(self) -> int:
        """How many input bytes the front end can take right now."""

    def chr_receive(self, data: bytes) -> None:
        """Input, never more than the last ``chr_can_receive()``."""

    def chr_writable(self) -> None:
        """The backend can take output again after a short ``write``."""

    def chr_break(self) -> None:
        """A serial break was received (``chardev-send-break``)."""


class Chardev:
    """A chardev backend. Subclasses implement the ``_`` hooks."""

    #: Backend type name, as in ``ChardevBackendKind``.
    kind = ""

    def __init__(self, chardev_id: str) -> None:
        self.id = chardev_id
        self.frontend: CharFrontend | None = None
        self.connected = False
        self._pending_input = b""

    # -- life cycle (the registry calls these) ------------------------------

    async def open(self) -> None:
        """Acquire host resources; raise ``ChardevError`` on failure."""

    async def close(self) -> None:
        """Release host resources; the chardev is not used afterwards."""

    def filename(self) -> str:
        """``query-chardev``'s filename, in QEMU's command-line syntax."""
        return self.kind

    def extra_return(self) -> dict[str, str]:
        """Members of ``chardev-add``'s ChardevReturn (``pty`` only)."""
        return {}

    # -- front end side ------------------------------------------------------

    def attach(self, frontend: CharFrontend) -> None:
        """Connect a front end; a chardev has at most one."""
        if self.frontend is not None:
            raise QMPError(f"Chardev '{self.id}' is busy")
        self.frontend = frontend
        if self.connected:
            frontend.chr_open()
        self.accept_input()

    def detach(self, frontend: CharFrontend | None = None) -> None:
        """Remove ``frontend`` (default: whichever is attached)."""
        if frontend is None or frontend is self.frontend:
            self.frontend = None

    def has_room_for_frontend(self) -> bool:
        """Whether ``attach`` would take another front end (a mux takes several)."""
        return self.frontend is None

    @property
    def frontend_open(self) -> bool:
        return self.frontend is not None and self.connected

    def write(self, data: bytes) -> int:
        """Send output; returns the number of bytes taken (see module doc)."""
        if not self.connected:
            return len(data)
        return self._write(data)

    def accept_input(self) -> None:
        """The front end can take input again (``qemu_chr_fe_accept_input``)."""
        if self._pending_input:
            data, self._pending_input = self._pending_input, b""
            self.deliver(data)
        if not self._pending_input:
            self._resume_input()

    def send_break(self) -> None:
        if self.frontend is not None:
            self.frontend.chr_break()

    # -- backend side --------------------------------------------------------

    def set_connected(self, connected: bool) -> None:
        """Record that a peer appeared or left, and tell the front end."""
        if connected == self.connected:
            return
        self.connected = connected
        if not connected:
            self._pending_input = b""
        if self.frontend is not None:
            if connected:
                self.frontend.chr_open()
            else:
                self.frontend.chr_close()

    def deliver(self, data: bytes) -> None:
        """Hand input to the front end as fast as it takes it.

        What it cannot take yet is kept (at most one read's worth) and the
        backend stops reading until ``accept_input`` is called. With no
        front end yet nothing is taken: as in QEMU, whose backends do not
        read while no front end can receive, input typed before a device
        attaches (a guest's serial port at machine start) waits for it.
        """
        frontend = self.frontend
        while data and frontend is not None:
            room = frontend.chr_can_receive()
            if room <= 0:
                break
            chunk, data = data[:room], data[room:]
            frontend.chr_receive(chunk)
        if data:
            self._pending_input = data + self._pending_input
            self._pause_input()

    def writable(self) -> None:
        """The backend drained its output: tell a waiting front end."""
        if self.frontend is not None:
            self.frontend.chr_writable()

    # -- hooks ---------------------------------------------------------------

    def _write(self, data: bytes) -> int:
        """Send to the connected peer; return how much was taken."""
        return len(data)

    def _pause_input(self) -> None:
        """Stop reading from the host side until ``_resume_input``."""

    def _resume_input(self) -> None:
        """Start reading again."""
