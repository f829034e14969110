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
from dataclasses import dataclass

from vmd._generated.types import ShutdownCause
from vmd.hw.bus import IoBus
from vmd.hw.charport import CharPort
from vmd.hw.clock import Clock
from vmd.hw.irq import IrqLine


@dataclass
class DeviceContext:
    """The machine's services for devices.

    ``irq(n)`` is ISA/GSI line ``n``; ``chardev(id)`` the port to chardev
    ``id`` or None when there is no such chardev; ``request_exit(status)``
    ends the process with ``status`` (``isa-debug-exit``).
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
