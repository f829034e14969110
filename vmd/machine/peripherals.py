"""The user's devices (``-device``, ``device_add``, ``device_del``) on a board's buses.

``add`` is QEMU's qdev_device_add_from_qdict for both the command line and
hotplug, with its checks in its order: the driver, the bus (``bus=`` or the
first of the driver's bus type), whether that bus takes hotplug, the id
(unique; a device without one takes the next ``peripheral-anon`` number
even if it then fails, as QEMU's counter does), the properties, then
realize on the bus. A hotplugged device is then announced to the guest by
the bus's hotplug controller (ACPI PCI hotplug on ``pci.0``).

``unplug`` is QEMU's qdev_unplug: a bus with a controller asks the guest
(the device leaves when the guest ejects it: ``remove``); one without
(virtio-serial ports) lets the device go at once.

``remove`` takes a device off its bus and out of the guest's reach at
once (BQL held, possibly on a vCPU thread in the middle of the guest's
eject write), then, on the event loop, lets go of what the device held
outside the machine (a disk's block backend; a ``-drive`` is deleted with
its device, as QEMU's blockdev_auto_del) and sends ``DEVICE_DELETED`` for
each device that went, in QEMU's order: the devices on its buses (newest
first), its inner virtio device (``.../virtio-backend``, without
``device``), then itself. QEMU sends these from its RCU thread some time
after the eject; vmd sends them once the backends are released, so a
client that sees the last event may ``blockdev-del`` the disk's node.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vmd._generated import events
from vmd._generated.types import RunState
from vmd.hw.context import DeviceContext
from vmd.qom.device import Device, create_device, find_device_type
from vmd.qom.errors import QOMError
from vmd.qom.qtree import Bus, devices, find_bus
from vmd.qom.types import TypeInfo

log = logging.getLogger(__name__)


def placement(root: Bus, options: dict[str, Any], hotplug: bool) -> tuple[TypeInfo, Bus]:
    """The driver's type and the bus it goes on, or QEMU's error for them."""
    driver = options.get("driver")
    if not isinstance(driver, str):
        raise QOMError("Parameter 'driver' is missing")
    info = find_device_type(driver)
    bus = find_bus(root, info, options.get("bus"))
    if hotplug and not bus.hotpluggable:
        raise QOMError(f"Bus '{bus.name}' does not support hotplugging")
    return info, bus


class Peripherals:
    """The devices of a board, by id and QOM path; BQL held for every verb."""

    def __init__(self, root: Bus, context: DeviceContext, loop: asyncio.AbstractEventLoop) -> None:
        self.root = root
        self.context = context
        self._loop = loop
        #: Every realized device, the board's own first.
        self.devices: list[Device] = []
        self._anonymous = 0
        self._releases: set[asyncio.Task[None]] = set()
        #: Counts the VM's starts, for ``device_del`` of a pending device.
        self._runs = 0
        if context.runstate is not None:
            context.runstate.add_listener(self._state_changed)

    def _state_changed(self, state: RunState) -> None:
        if state == RunState.RUNNING:
            self._runs += 1

    def realize(self, device: Device, bus: Bus) -> Device:
        """Attach ``device`` to ``bus`` and realize it; detached again if that fails."""
        bus.attach(device)
        try:
            device.realize(self.context)
        except QOMError:
            bus.detach(device)
            raise
        self.devices.append(device)
        return device

    def add(self, options: dict[str, Any], hotplug: bool) -> Device:
        """``-device`` (``hotplug`` false) or ``device_add``; raises QOMError."""
        _info, bus = placement(self.root, options, hotplug)
        dev_id = options.get("id")
        if dev_id is not None and self.find(dev_id) is not None:
            raise QOMError(f"Duplicate device ID '{dev_id}'")
        if dev_id is None:
            path = f"/machine/peripheral-anon/device[{self._anonymous}]"
            self._anonymous += 1
        else:
            path = f"/machine/peripheral/{dev_id}"
        device = create_device(options)
        device.qom_path = path
        device.hotplugged = hotplug
        self.realize(device, bus)
        if hotplug and bus.hotplug is not None:
            bus.hotplug.plugged(device)
        return device

    def find(self, dev_id: str) -> Device | None:
        return next((device for device in self.devices if device.id == dev_id), None)

    def by_path(self, path: str) -> Device | None:
        return next((device for device in self.devices if device.qom_path == path), None)

    def unplug(self, device: Device, name: str) -> None:
        """``device_del`` of ``device`` (called ``name`` there): QEMU's
        qdev_unplug, ask the guest or remove at once.

        QEMU refuses to ask again until its virtual clock moved a
        millisecond past the request; vmd has no such clock and refuses
        until the VM has run after the request.
        """
        runstate = self.context.runstate
        running = runstate is not None and runstate.running
        if device.unplug_requested == self._runs and not running:
            raise QOMError(f"Device {name} is already in the process of unplug")
        bus = device.parent_bus
        if bus is None or not bus.hotpluggable:
            raise QOMError(f"Bus '{bus.name if bus else ''}' does not support hotplugging")
        device.unplug_requested = self._runs - 1 if running else self._runs
        if bus.hotplug is not None:
            bus.hotplug.unplug_request(device)
        else:
            self.remove(device)

    def remove(self, device: Device) -> None:
        """Take ``device`` and what is on its buses out of the machine now;
        release their backends and announce them on the loop."""
        gone: list[Device] = []
        for child_bus in device.child_buses:
            gone.extend(devices(child_bus))
        gone.append(device)
        for each in gone:
            bus = each.parent_bus
            if bus is not None:
                bus.detach(each)
            each.unrealize()
            self.devices.remove(each)
        self._loop.call_soon_threadsafe(self._start_release, gone)

    def _start_release(self, gone: list[Device]) -> None:
        task = self._loop.create_task(self._release(gone))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, gone: list[Device]) -> None:
        for device in gone:
            try:
                await device.release()
            except Exception:  # a failing close must not keep the events back
                log.exception("releasing %s", device.qom_path)
        for device in gone:
            for path in device.inner_paths():
                events.qapi_event_send_device_deleted(self.context.events, path=path)
            events.qapi_event_send_device_deleted(self.context.events, device=device.id, path=device.qom_path)
