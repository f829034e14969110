"""A device's end of a chardev (QEMU's ``CharBackend``), across threads.

Chardevs belong to the event loop thread; device code runs under the BQL
on a vCPU thread too. ``CharPort`` is the chardev front end that bridges
the two:

* output: ``write`` (under the BQL, any thread) appends to a small queue
  and schedules a flush on the loop. When ``OUTPUT_LIMIT`` bytes wait --
  the peer does not read -- ``write`` takes nothing and returns 0; the
  device keeps its byte (the UART leaves THRE clear, as QEMU's does while
  its chardev is full) and is told ``writable()`` once the queue drains;
* input: the chardev calls ``chr_can_receive``/``chr_receive`` on the
  loop; the port takes the BQL and asks the device, so input a device
  cannot take stays in the chardev (and the kernel), not in memory. A
  device that makes room again calls ``accept_input``.

The chardev is looked up by id at each use, so ``chardev-change`` under a
running guest moves the port to the new backend.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import AbstractContextManager
from typing import Any, Protocol

from vmd.chardev.registry import ChardevRegistry

OUTPUT_LIMIT = 4096


class CharHandlers(Protocol):
    """What a device implements to use a chardev."""

    def can_receive(self) -> int:
        """How many input bytes the device takes now (QEMU's can_receive)."""

    def receive(self, data: bytes) -> None:
        """Input, at most the last ``can_receive()`` bytes."""

    def receive_break(self) -> None:
        """A serial break arrived."""

    def writable(self) -> None:
        """Output space again after ``write`` returned 0."""

    def peer(self, connected: bool) -> None:
        """A peer connected to (True) or left (False) the chardev."""


class CharPort:
    """One device's connection to chardev ``chardev_id`` (see module doc)."""

    def __init__(self, registry: ChardevRegistry, chardev_id: str,
                 loop: asyncio.AbstractEventLoop,
                 bql: AbstractContextManager[Any]) -> None:
        self.chardev_id = chardev_id
        self._registry = registry
        self._loop = loop
        self._bql = bql
        self._handlers: CharHandlers | None = None
        self._lock = threading.Lock()  # guards the output queue only
        self._out = bytearray()
        self._flush_scheduled = False
        self._blocked = False

    # -- device side (BQL held, any thread) --------------------------------

    def connect(self, handlers: CharHandlers) -> None:
        """Attach the device as the chardev's front end (at realize)."""
        self._handlers = handlers
        self._loop.call_soon_threadsafe(self._attach)

    def write(self, data: bytes) -> int:
        """Queue output; returns len(data), or 0 when the queue is full."""
        with self._lock:
            if len(self._out) >= OUTPUT_LIMIT:
                self._blocked = True
                return 0
            self._out += data
            schedule = not self._flush_scheduled
            self._flush_scheduled = True
        if schedule:
            self._loop.call_soon_threadsafe(self._flush)
        return len(data)

    def accept_input(self) -> None:
        """The device has room for input again."""
        self._loop.call_soon_threadsafe(self._accept_input)

    def disconnect(self) -> None:
        """The device is gone (loop thread): the chardev may serve another front end."""
        self._handlers = None
        chardev = self._registry.get(self.chardev_id)
        if chardev is not None:
            chardev.detach(self)

    # -- loop side -------------------------------------------------------------

    def _attach(self) -> None:
        chardev = self._registry.get(self.chardev_id)
        if chardev is not None and chardev.has_room_for_frontend():
            chardev.attach(self)

    def _accept_input(self) -> None:
        chardev = self._registry.get(self.chardev_id)
        if chardev is not None and chardev.frontend is self:
            chardev.accept_input()

    def _flush(self) -> None:
        chardev = self._registry.get(self.chardev_id)
        with self._lock:
            self._flush_scheduled = False
            data = bytes(self._out)
        taken = chardev.write(data) if chardev is not None and data else len(data)
        with self._lock:
            del self._out[:taken]
            notify = self._blocked and len(self._out) < OUTPUT_LIMIT
            if notify:
                self._blocked = False
        if notify and self._handlers is not None:
            with self._bql:
                self._handlers.writable()

    # -- CharFrontend (called by the chardev on the loop) --------------------

    def chr_open(self) -> None:
        if self._handlers is not None:
            with self._bql:
                self._handlers.peer(True)

    def chr_close(self) -> None:
        if self._handlers is not None:
            with self._bql:
                self._handlers.peer(False)

    def chr_can_receive(self) -> int:
        if self._handlers is None:
            return 0
        with self._bql:
            return self._handlers.can_receive()

    def chr_receive(self, data: bytes) -> None:
        if self._handlers is not None:
            with self._bql:
                self._handlers.receive(data)

    def chr_writable(self) -> None:
        self._flush()

    def chr_break(self) -> None:
        if self._handlers is not None:
            with self._bql:
                self._handlers.receive_break()
