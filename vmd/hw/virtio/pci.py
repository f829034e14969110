"""The virtio 1.x modern PCI transport (QEMU's virtio-pci with disable-legacy=on).

Layout, as QEMU's: BAR1 is the exclusive MSI-X BAR (table at 0, PBA at
0x800); BAR4 (64-bit, prefetchable, 16 KiB) holds the common config at
0x0000, the ISR at 0x1000, the device config at 0x2000 and the
notification area at 0x3000 (``notify_off_multiplier`` 4: queue n at
0x3000 + 4n). Vendor capabilities (cfg_type 1..5) point the driver at
them, and the PCI-config window capability (cfg_type 5) reaches BAR4
through config space. The device id is 0x1040 + virtio id, revision 1.

Notifications: each queue has an eventfd whose signals call
``VirtioDevice.kick`` on the event loop with the BQL. When BAR4 decodes,
the queue's doorbell address is registered with ``KVM_IOEVENTFD`` (2-byte
writes, what Linux's ``vp_notify`` does), so a kick does not exit to
Python; other widths reach ``NotifyRegion`` and signal the same eventfd.
Interrupts: the MSI-X vector of the queue (or of config changes) when
MSI-X is on, otherwise the ISR bit plus INTx, lowered when the driver
reads the ISR (read-to-clear).

vmd does not implement the legacy (virtio 0.9) I/O BAR: ``disable-legacy``
other than on/auto and ``disable-modern=on`` are refused, so by default
vmd's functions look like QEMU's with ``disable-legacy=on`` (device 0x104x
instead of the transitional 0x10xx; no BAR0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from vmd.hw.pci import config as cfg
from vmd.hw.pci.device import BAR_UNMAPPED, TYPE_PCI_BUS, TYPE_PCI_DEVICE, Bar, PciDevice
from vmd.hw.pci.msix import Msix
from vmd.hw.virtio.device import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, STATUS_DRIVER_OK, VirtioDevice
from vmd.hw.virtio.memory import GuestMemory
from vmd.hw.virtio.queue import VirtQueue
from vmd.qom.errors import QOMError
from vmd.qom.property import Property
from vmd.qom.types import TYPES, TypeInfo

if TYPE_CHECKING:
    from vmd.hw.context import DeviceContext, EventNotifier

log = logging.getLogger(__name__)

TYPE_VIRTIO_PCI = "virtio-pci"
VENDOR_REDHAT = 0x1AF4
MODERN_DEVICE_BASE = 0x1040
NO_VECTOR = 0xFFFF

CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE, CAP_PCI_CFG = 1, 2, 3, 4, 5
MODERN_BAR, MSIX_BAR = 4, 1
MODERN_BAR_SIZE = 0x4000
REGION_SIZE = 0x1000
COMMON_OFFSET, ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET = 0x0000, 0x1000, 0x2000, 0x3000
NOTIFY_MULTIPLIER = 4
COMMON_SIZE = 56
ISR_QUEUE, ISR_CONFIG = 0x1, 0x2

TYPES.register(TypeInfo(TYPE_VIRTIO_PCI, TYPE_PCI_DEVICE, abstract=True, bus_type=TYPE_PCI_BUS, properties=(
    Property("disable-legacy", "OnOffAuto", "auto", "on/off/auto", enum=("on", "off", "auto")),
    Property("disable-modern", "bool", False),
    Property("ioeventfd", "bool", True, "on/off"),
    Property("event_idx", "bool", True, "on/off", in_qtree=False),
    Property("indirect_desc", "bool", True, "on/off", in_qtree=False),
)))


class VirtioPciDevice(PciDevice):
    """A virtio device on PCI; subclasses say which model with ``create_vdev``."""

    vendor_id = VENDOR_REDHAT
    revision = 1
    interrupt_pin = 1
    #: The QEMU class code of the function (e.g. 0x078000 for virtio-serial).
    pci_class: ClassVar[int] = 0x00FF00

    def __init__(self, props: dict[str, Any], dev_id: str | None = None) -> None:
        self.vdev = self.create_vdev(props)
        if not props.get("event_idx", True):
            self.vdev.host_features &= ~F_RING_EVENT_IDX
        if not props.get("indirect_desc", True):
            self.vdev.host_features &= ~F_RING_INDIRECT_DESC
        self.class_id = self.pci_class
        self.device_id = MODERN_DEVICE_BASE + self.vdev.device_id
        super().__init__(props, dev_id)
        self.isr = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self.config_vector = NO_VECTOR
        self.memory = GuestMemory([])  # no RAM until realize
        self._notifiers: list[EventNotifier] = []
        self._ioeventfd: Callable[[int, int, int, bool], None] | None = None
        self._add_capabilities()
        self.modern = self.add_bar(Bar(MODERN_BAR, MODERN_BAR_SIZE, io=False, handler=ModernRegion(self),
                                       name=f"virtio-pci-{self.type_name}", mem64=True, prefetch=True))
        self.modern.moved.append(self._doorbells_moved)
        self.msix = Msix(self, int(props.get("vectors", 2)), MSIX_BAR)
        self.config_watchers.append((self.msix.cap, self.msix.cap + 4, self.msix.control_written))
        self.vdev.transport = self

    def create_vdev(self, props: dict[str, Any]) -> VirtioDevice:
        raise NotImplementedError

    # -- capabilities -----------------------------------------------------------

    def _add_capabilities(self) -> None:
        c = self.config
        self.pci_cfg_cap = self._vendor_cap(CAP_PCI_CFG, 0, 0, 0, extra=4)
        c.wmask[self.pci_cfg_cap + 4] = 0xFF
        c.wmask[self.pci_cfg_cap + 8:self.pci_cfg_cap + 20] = b"\xff" * 12
        notify = self._vendor_cap(CAP_NOTIFY, MODERN_BAR, NOTIFY_OFFSET, REGION_SIZE, extra=4)
        c.set_long(notify + 16, NOTIFY_MULTIPLIER)
        self._vendor_cap(CAP_DEVICE, MODERN_BAR, DEVICE_OFFSET, REGION_SIZE)
        self._vendor_cap(CAP_ISR, MODERN_BAR, ISR_OFFSET, REGION_SIZE)
        self._vendor_cap(CAP_COMMON, MODERN_BAR, COMMON_OFFSET, REGION_SIZE)

    def _vendor_cap(self, cfg_type: int, bar: int, offset: int, length: int, extra: int = 0) -> int:
        """A ``virtio_pci_cap``: len, cfg_type, bar, offset, length (+extra bytes)."""
        at = self.config.add_capability(cfg.CAP_ID_VNDR, 16 + extra)
        self.config.set_byte(at + 2, 16 + extra)
        self.config.set_byte(at + 3, cfg_type)
        self.config.set_byte(at + 4, bar)
        self.config.set_long(at + 8, offset)
        self.config.set_long(at + 12, length)
        return at

    def config_read(self, offset: int, size: int) -> int:
        window = self.pci_cfg_cap + 16
        if window <= offset < window + 4:
            return self._pci_cfg_access(size, None)
        return super().config_read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        window = self.pci_cfg_cap + 16
        if window <= offset < window + 4:
            self._pci_cfg_access(size, value)
            return
        super().config_write(offset, size, value)

    def _pci_cfg_access(self, size: int, value: int | None) -> int:
        """The cfg_type 5 window: an access of ``length`` bytes at ``offset`` of BAR ``bar``."""
        c = self.config
        bar, offset, length = c.data[self.pci_cfg_cap + 4], c.get(self.pci_cfg_cap + 8, 4), \
            c.get(self.pci_cfg_cap + 12, 4)
        if bar != MODERN_BAR or length not in (1, 2, 4) or length > size or offset + length > MODERN_BAR_SIZE:
            return 0
        if value is None:
            return self.modern.handler.read(offset, length)
        self.modern.handler.write(offset, length, value & ((1 << (8 * length)) - 1))
        return 0

    # -- realize, reset ------------------------------------------------------------

    def realize(self, ctx: DeviceContext) -> None:
        if self.props.get("disable-legacy") == "off" or self.props.get("disable-modern"):
            raise QOMError(f"{self.type_name}: vmd has no legacy virtio transport "
                           "(use disable-legacy=on, disable-modern=off)")
        if ctx.memory is None:
            raise QOMError(f"{self.type_name}: the machine has no guest RAM for DMA")
        self.memory = ctx.memory
        if ctx.bql is not None:
            self.vdev.bql = ctx.bql
        if ctx.notifier is not None:
            self._notifiers = [ctx.notifier(self._kick_callback(queue.index)) for queue in self.vdev.queues]
        if self.props.get("ioeventfd", True):
            self._ioeventfd = ctx.ioeventfd
        super().realize(ctx)

    def _kick_callback(self, index: int) -> Callable[[], None]:
        return lambda: self.vdev.kick(index)

    def reset(self) -> None:
        self._reset_transport()
        self.msix.reset()
        super().reset()

    def _reset_transport(self) -> None:
        self.vdev.reset()
        for queue in self.vdev.queues:
            queue.vector = NO_VECTOR
        self.config_vector = NO_VECTOR
        self.queue_select = self.device_feature_select = self.driver_feature_select = 0
        self.isr = 0
        self.set_irq(0)

    async def release(self) -> None:
        """The bus has unmapped the BARs, and with them the doorbells: no
        new kick comes; requests under way end first (subclasses wait)."""
        self.msix.reset()
        self.vdev.reset()
        for notifier in self._notifiers:
            notifier.close()
        self._notifiers = []

    def inner_paths(self) -> list[str]:
        return [f"{self.qom_path}/virtio-backend"]

    # -- notifications -------------------------------------------------------------

    def _doorbells_moved(self, old: int, new: int) -> None:
        if self._ioeventfd is None:
            return
        for notifier, queue in zip(self._notifiers, self.vdev.queues):
            offset = NOTIFY_OFFSET + NOTIFY_MULTIPLIER * queue.index
            if old != BAR_UNMAPPED:
                self._ioeventfd(notifier.fd, old + offset, 2, False)
            if new != BAR_UNMAPPED:
                self._ioeventfd(notifier.fd, new + offset, 2, True)

    def catch_up(self) -> None:
        """At DRIVER_OK, look at every enabled queue once: buffers made
        available before the driver said OK were never kicked (QEMU does the
        same when it starts its ioeventfds)."""
        for queue in self.vdev.queues:
            if queue.enabled:
                self.doorbell(queue.index)

    def doorbell(self, index: int) -> None:
        """A notify write that reached Python (no ioeventfd for that width)."""
        if index < len(self._notifiers):
            self._notifiers[index].set()
        elif not self._notifiers:
            self.vdev.kick(index)

    # -- interrupts (Transport) ---------------------------------------------------

    def notify_queue(self, queue: VirtQueue) -> None:
        self._interrupt(queue.vector, ISR_QUEUE)

    def notify_config(self) -> None:
        self._interrupt(self.config_vector, ISR_CONFIG)

    def _interrupt(self, vector: int, isr_bit: int) -> None:
        if self.msix.enabled:
            if vector != NO_VECTOR:
                self.msix.notify(vector)
            return
        self.isr |= isr_bit
        self.set_irq(1)

    def read_isr(self) -> int:
        value, self.isr = self.isr, 0
        self.set_irq(0)
        return value


class ModernRegion:
    """BAR4: common config, ISR, device config, notifications (max 4-byte accesses)."""

    def __init__(self, proxy: VirtioPciDevice) -> None:
        self.proxy = proxy
        self.common = CommonConfig(proxy)

    def read(self, offset: int, size: int) -> int:
        proxy = self.proxy
        if offset < ISR_OFFSET:
            return self.common.read(offset, size)
        if offset < DEVICE_OFFSET:
            return proxy.read_isr() if offset == ISR_OFFSET else 0
        if offset < NOTIFY_OFFSET:
            at = offset - DEVICE_OFFSET
            proxy.vdev.read_config()
            return int.from_bytes(proxy.vdev.config[at:at + size].ljust(size, b"\0"), "little")
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        proxy = self.proxy
        if offset < ISR_OFFSET:
            self.common.write(offset, size, value)
        elif DEVICE_OFFSET <= offset < NOTIFY_OFFSET:
            at = offset - DEVICE_OFFSET
            if at < len(proxy.vdev.config):
                proxy.vdev.write_config(at, value.to_bytes(size, "little"))
        elif offset >= NOTIFY_OFFSET:
            proxy.doorbell((offset - NOTIFY_OFFSET) // NOTIFY_MULTIPLIER)


class CommonConfig:
    """``struct virtio_pci_common_cfg`` (virtio 1.x 4.1.4.3)."""

    def __init__(self, proxy: VirtioPciDevice) -> None:
        self.proxy = proxy

    def _queue(self) -> VirtQueue | None:
        queues = self.proxy.vdev.queues
        select = self.proxy.queue_select
        return queues[select] if select < len(queues) else None

    def _snapshot(self) -> bytes:
        proxy, vdev = self.proxy, self.proxy.vdev
        features = vdev.host_features >> (32 * proxy.device_feature_select) \
            if proxy.device_feature_select < 2 else 0
        driver = vdev.guest_features >> (32 * proxy.driver_feature_select) \
            if proxy.driver_feature_select < 2 else 0
        queue = self._queue()
        fields = [
            proxy.device_feature_select.to_bytes(4, "little"), (features & 0xFFFFFFFF).to_bytes(4, "little"),
            proxy.driver_feature_select.to_bytes(4, "little"), (driver & 0xFFFFFFFF).to_bytes(4, "little"),
            proxy.config_vector.to_bytes(2, "little"), len(vdev.queues).to_bytes(2, "little"),
            bytes([vdev.status, vdev.config_generation]), proxy.queue_select.to_bytes(2, "little")]
        if queue is None:
            fields.append(bytes(2) + NO_VECTOR.to_bytes(2, "little") + bytes(28))
        else:
            fields += [queue.size.to_bytes(2, "little"), queue.vector.to_bytes(2, "little"),
                       int(queue.enabled).to_bytes(2, "little"), queue.index.to_bytes(2, "little"),
                       queue.desc_addr.to_bytes(8, "little"), queue.avail_addr.to_bytes(8, "little"),
                       queue.used_addr.to_bytes(8, "little")]
        return b"".join(fields)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self._snapshot()[offset:offset + size].ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        proxy, vdev = self.proxy, self.proxy.vdev
        if offset == 0:
            proxy.device_feature_select = value
        elif offset == 8:
            proxy.driver_feature_select = value
        elif offset == 12 and proxy.driver_feature_select < 2 and not vdev.status & 0x08:
            shift = 32 * proxy.driver_feature_select
            vdev.guest_features = vdev.guest_features & ~(0xFFFFFFFF << shift) | (value & 0xFFFFFFFF) << shift
        elif offset == 16:
            proxy.config_vector = value if value < proxy.msix.count else NO_VECTOR
        elif offset == 20 and size == 1:
            self._status(value)
        elif offset == 22:
            proxy.queue_select = value & 0xFFFF
        elif offset >= 24:
            self._queue_field(offset, size, value)

    def _status(self, value: int) -> None:
        proxy = self.proxy
        if value == 0:
            proxy._reset_transport()
            return
        was_ok = proxy.vdev.status & STATUS_DRIVER_OK
        proxy.vdev.set_status(value)
        if not was_ok and proxy.vdev.status & STATUS_DRIVER_OK:
            proxy.catch_up()

    def _queue_field(self, offset: int, size: int, value: int) -> None:
        proxy, queue = self.proxy, self._queue()
        if queue is None or (queue.enabled and offset != 26):
            return  # the spec forbids changing an enabled queue
        if offset == 24:
            queue.size = value & 0xFFFF
        elif offset == 26:
            queue.vector = value if value < proxy.msix.count else NO_VECTOR
        elif offset == 28 and value == 1:
            proxy.vdev.enable_queue(queue.index)
        elif 32 <= offset < 56:
            name = ("desc_addr", "avail_addr", "used_addr")[(offset - 32) // 8]
            shift = 32 * ((offset % 8) // 4) if size == 4 else 0
            mask = ((1 << (8 * size)) - 1) << shift
            setattr(queue, name, getattr(queue, name) & ~mask | (value << shift) & mask)
