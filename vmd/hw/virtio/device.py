"""``VirtioDevice``: what a virtio device model implements, knowing nothing of PCI.

The contract (the blk and serial models are written against it):

* A model subclasses ``VirtioDevice``, sets ``device_id`` (virtio id: 2
  block, 3 console), ``type_name`` (QEMU's inner device, e.g.
  ``virtio-blk-device``), and calls ``__init__`` with its queue sizes,
  its device feature bits (the transport adds VERSION_1, EVENT_IDX and
  INDIRECT_DESC) and the size of its config space, kept little-endian in
  ``self.config`` (a bytearray the model fills; ``read_config`` is called
  before each driver read, ``write_config`` on each driver write).
* ``handle_queue(index)`` runs when the driver kicks queue ``index``: the
  model takes requests with ``self.pop(index)`` until None and returns
  each with ``self.push(index, element, written)``, which also raises the
  queue's interrupt when the ring asks for one (event index or
  NO_INTERRUPT); ``push(..., notify=False)`` then ``notify(index)``
  batches several completions into one interrupt. A request may be pushed later, from an asyncio callback
  (block I/O); a request popped before a reset is silently dropped by
  ``push``, so late completions are harmless.
* ``reset()`` (driver wrote status 0, or system reset) must drop the
  model's per-request state and call ``super().reset()``; ``driver_ok()``
  runs when the driver sets DRIVER_OK (start I/O, announce ports).
* A guest that breaks the rules (bad ring, bad request) is reported with
  ``self.error(text)`` (``pop`` does it for ring errors): the device
  stops, sets NEEDS_RESET and raises a config interrupt, QEMU's
  ``virtio_error``; the daemon and other devices carry on.

Threads: every method here runs with the BQL (``Machine.bql``) held.
Driver register accesses come from vCPU threads; ``handle_queue`` runs on
the event-loop thread (the transport turns the kick eventfd, which KVM
signals without a vCPU exit, into a loop callback), so a model may start
asyncio work there and call ``push`` from its completion callback after
taking the BQL. Interrupts are eventfd writes (irqfd), cheap from any
thread; nothing here blocks.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, Protocol

from vmd.hw.virtio.memory import GuestMemory
from vmd.hw.virtio.queue import Element, VirtioError, VirtQueue

log = logging.getLogger(__name__)

STATUS_ACKNOWLEDGE = 0x01
STATUS_DRIVER = 0x02
STATUS_DRIVER_OK = 0x04
STATUS_FEATURES_OK = 0x08
STATUS_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

F_RING_INDIRECT_DESC = 1 << 28
F_RING_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32
TRANSPORT_FEATURES = F_RING_INDIRECT_DESC | F_RING_EVENT_IDX | F_VERSION_1


class Transport(Protocol):
    """What the model's transport (virtio-pci) does for it."""

    memory: GuestMemory

    def notify_queue(self, queue: VirtQueue) -> None:
        """Raise the queue's interrupt (MSI-X vector, or INTx + ISR bit 0)."""

    def notify_config(self) -> None:
        """Raise the configuration-change interrupt."""


class VirtioDevice:
    """The transport-independent part of a virtio device (QEMU's VirtIODevice)."""

    device_id: ClassVar[int] = 0
    type_name: ClassVar[str] = "virtio-device"

    def __init__(self, queue_sizes: list[int], features: int, config_size: int) -> None:
        self.queues = [VirtQueue(index, size) for index, size in enumerate(queue_sizes)]
        self.host_features = features | TRANSPORT_FEATURES
        self.guest_features = 0
        self.config = bytearray(config_size)
        self.config_generation = 0
        self.status = 0
        self.broken = False
        self.transport: Transport | None = None
        #: The BQL (the machine's, set by the transport at realize): take it in
        #: asyncio callbacks before ``push``.
        self.bql: AbstractContextManager[Any] = nullcontext()

    # -- for the model -----------------------------------------------------------

    def has_feature(self, bit: int) -> bool:
        return bool(self.guest_features & (1 << bit))

    def pop(self, index: int) -> Element | None:
        """The next request of queue ``index``; None when empty or broken."""
        if self.broken:
            return None
        try:
            return self.queues[index].pop()
        except VirtioError as error:
            self.error(str(error))
            return None

    def push(self, index: int, element: Element, written: int, notify: bool = True) -> None:
        """Complete ``element``; interrupts the driver if the ring asks for it.

        With ``notify=False`` the interrupt waits for ``self.notify(index)``,
        so a batch of completions costs one interrupt.
        """
        queue = self.queues[index]
        if self.broken or not queue.push(element, written):
            return
        if notify:
            self.notify(index)

    def notify(self, index: int) -> None:
        """Interrupt the driver for queue ``index`` if its ring asks for it."""
        queue = self.queues[index]
        if not self.broken and queue.should_notify() and self.transport is not None:
            self.transport.notify_queue(queue)

    def notify_config(self) -> None:
        """The config space changed (new generation, config interrupt)."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.transport is not None and self.status & STATUS_DRIVER_OK:
            self.transport.notify_config()

    def error(self, text: str) -> None:
        """QEMU's virtio_error: stop, ask the driver for a reset."""
        log.error("%s: %s", self.type_name, text)
        self.broken = True
        self.status |= STATUS_NEEDS_RESET
        if self.transport is not None:
            self.transport.notify_config()

    # -- hooks the model overrides --------------------------------------------------

    def handle_queue(self, index: int) -> None:
        """The driver kicked queue ``index``."""

    def driver_ok(self) -> None:
        """The driver finished initialisation (status DRIVER_OK)."""

    def read_config(self) -> None:
        """Refresh ``self.config`` before the driver reads it."""

    def write_config(self, offset: int, data: bytes) -> None:
        """The driver wrote ``data`` at ``offset`` of the config space (ignored by default)."""
        del offset, data

    def reset(self) -> None:
        """Device reset: queues, features, status; models drop their requests first."""
        for queue in self.queues:
            queue.reset()
        self.guest_features = 0
        self.status = 0
        self.broken = False

    # -- for the transport ---------------------------------------------------------

    def set_status(self, value: int) -> None:
        """The driver wrote the status byte (0 = reset)."""
        value &= 0xFF
        if value == 0:
            self.reset()
            return
        newly = value & ~self.status
        if newly & STATUS_FEATURES_OK and not self._features_ok():
            value &= ~STATUS_FEATURES_OK
        self.status = value | (self.status & STATUS_NEEDS_RESET)
        if newly & STATUS_DRIVER_OK and not self.broken:
            self.driver_ok()

    def _features_ok(self) -> bool:
        """Refuse features we did not offer, or a driver without VERSION_1."""
        return not self.guest_features & ~self.host_features and bool(self.guest_features & F_VERSION_1)

    def enable_queue(self, index: int) -> None:
        """The driver enabled queue ``index`` with the addresses it wrote."""
        if self.transport is None:
            return
        try:
            self.queues[index].enable(self.transport.memory, bool(self.guest_features & F_RING_EVENT_IDX),
                                      bool(self.guest_features & F_RING_INDIRECT_DESC))
        except VirtioError as error:
            self.error(str(error))

    def kick(self, index: int) -> None:
        """A notification for queue ``index`` arrived (event-loop thread, BQL held)."""
        if self.broken or not self.status & STATUS_DRIVER_OK or index >= len(self.queues):
            return
        if self.queues[index].enabled:
            self.handle_queue(index)
