"""What the machine hands a device at realize (``DeviceContext``).

The machine builds one context and passes it to every device's
``realize``; it is the only way a device reaches the rest of the VM, so a
unit test can build one from plain objects and drive a device without
KVM. Every callable may be used with the BQL held from any thread and
returns at once: ``request_*`` record a request that the machine acts on
(QEMU's ``qemu_system_*_request``), they do not reset or stop anything
themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vmd._generated.types import ShutdownCause
from vmd.hw.bus import IoBus
from vmd.hw.charport import CharPort
from vmd.hw.clock import Clock
from vmd.hw.irq import IrqLine

if TYPE_CHECKING:
    from vmd.block.graph import BlockGraph
    from vmd.hw.pci.msix import MsiRoutes
    from vmd.hw.virtio.memory import GuestMemory
    from vmd.qmp.events import EventBroadcaster
    from vmd.system.runstate import RunStateMachine


class EventNotifier(Protocol):
    """An eventfd whose signals call a device back on the event loop, BQL held."""

    fd: int

    def set(self) -> None:
        """Signal it (any thread)."""

    def close(self) -> None:
        """Stop watching and close the eventfd (loop thread)."""


@dataclass
class DeviceContext:
    """The machine's services for devices.

    ``irq(n)`` is ISA/GSI line ``n``; ``chardev(id)`` the port to chardev
    ``id`` or None when there is no such chardev; ``request_exit(status)``
    ends the process with ``status`` (``isa-debug-exit``). The optional
    fields serve PCI, virtio and block devices (and QMP events) and are None where the
    machine has no such service (unit tests give plain stand-ins).
    """

    pio: IoBus
    mmio: IoBus
    irq: Callable[[int], IrqLine]
    chardev: Callable[[str], CharPort | None]
    ram_size: int
    request_reset: Callable[[], None]
    request_shutdown: Callable[[ShutdownCause], None]
    request_exit: Callable[[int], None]
    clock: Clock
    smp_cpus: int = 1
    #: The BQL, for devices that finish work on the event loop (virtio-blk).
    bql: AbstractContextManager[Any] | None = None
    #: The daemon's block graph (made on first use): ``drive=`` names its nodes.
    block: Callable[[], BlockGraph] | None = None
    #: The ids of the ``iothread`` objects (``iothread=``).
    iothreads: Callable[[], list[str]] | None = None
    #: Where device events go (``BLOCK_IO_ERROR``) and the run state an
    #: I/O error policy ``stop`` stops.
    events: EventBroadcaster | None = None
    runstate: RunStateMachine | None = None
    #: Guest RAM for device DMA (virtio rings and buffers).
    memory: GuestMemory | None = None
    #: MSI vectors (KVM GSI routes + irqfd) for MSI-X.
    msi: MsiRoutes | None = None
    #: ``notifier(callback)``: a new ``EventNotifier`` (created on the loop thread).
    notifier: Callable[[Callable[[], None]], EventNotifier] | None = None
    #: ``ioeventfd(fd, address, length, assign)``: a guest MMIO write of
    #: ``length`` bytes at ``address`` signals eventfd ``fd`` without a vCPU exit.
    ioeventfd: Callable[[int, int, int, bool], None] | None = None
