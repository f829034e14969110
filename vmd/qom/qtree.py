"""Buses and the device tree, and HMP ``info qtree`` in QEMU's layout.

A bus holds the devices plugged into it, newest first (QEMU inserts at
the head of the list, so ``info qtree`` lists the last device created
first); a device may own child buses. The machine builds the tree.

A bus that takes devices while the machine runs (``hotpluggable``) may
have a hotplug controller (QEMU's hotplug handler): it tells the guest of
a new device (``plugged``) and asks the guest to let one go
(``unplug_request``); without a controller a device leaves at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from vmd.qom.device import Device
from vmd.qom.errors import QOMError
from vmd.qom.types import TYPES, TypeInfo, TypeRegistry


class HotplugController(Protocol):
    """What tells the guest about devices coming and going (ACPI PCI hotplug)."""

    def plugged(self, device: Device) -> None:
        """``device`` was added to a running machine."""

    def unplug_request(self, device: Device) -> None:
        """Ask the guest to eject ``device``; the machine removes it then."""


class Bus:
    """A bus (QEMU's BusState): a name, a bus type and its children."""

    def __init__(self, name: str, type_name: str) -> None:
        self.name = name
        self.type_name = type_name
        self.children: list[Device] = []
        self.hotpluggable = False
        self.hotplug: HotplugController | None = None

    def plug(self, device: Device) -> None:
        device.parent_bus = self
        self.children.insert(0, device)

    def unplug(self, device: Device) -> None:
        self.children.remove(device)
        device.parent_bus = None

    def attach(self, device: Device) -> None:
        """Plug ``device`` before it is realized; a bus with addresses (PCI,
        virtio-serial) checks and assigns them here, raising ``QOMError``."""
        self.plug(device)

    def detach(self, device: Device) -> None:
        """Undo ``attach`` (the device failed to realize, or was unplugged)."""
        self.unplug(device)


def buses(bus: Bus) -> Iterator[Bus]:
    """Every bus of the tree under ``bus``, parents first (QEMU's qbus_find_recursive order)."""
    yield bus
    for device in bus.children:  # newest first, as QEMU searches
        for child in device.child_buses:
            yield from buses(child)


def devices(bus: Bus) -> Iterator[Device]:
    """Every device under ``bus``, children before the device that owns their bus."""
    for device in bus.children:
        for child in device.child_buses:
            yield from devices(child)
        yield device


def find_bus(root: Bus, info: TypeInfo, name: str | None) -> Bus:
    """The bus ``bus=`` names, or the first of the device's bus type (QEMU's
    qdev_device_add_from_qdict)."""
    wanted = info.bus_type
    if name is not None:
        bus = next((b for b in buses(root) if b.name == name), None)
        if bus is None:
            raise QOMError(f"Bus '{name}' not found")
        if bus.type_name != wanted:
            raise QOMError(f"Device '{info.name}' can't go on {bus.type_name} bus")
        return bus
    bus = next((b for b in buses(root) if b.type_name == wanted), None)
    if bus is None:
        raise QOMError(f"No '{wanted}' bus found for device '{info.name}'")
    return bus


def _device_lines(device: Device, indent: int, registry: TypeRegistry) -> list[str]:
    pad = " " * indent
    lines = [f'{pad}dev: {device.type_name}, id "{device.id or ""}"']
    inner = " " * (indent + 2)
    for direction, name, count in device.gpios:
        lines.append(f'{inner}gpio-{direction} "{name}" {count}')
    for prop in registry.properties(device.type_name):
        if prop.in_qtree:
            lines.append(f"{inner}{prop.name} = "
                         f"{prop.format(device.props.get(prop.name))}")
    lines.extend(inner + line for line in device.qtree_lines())
    for bus in device.child_buses:
        lines.extend(_bus_lines(bus, indent + 2, registry))
    return lines


def _bus_lines(bus: Bus, indent: int, registry: TypeRegistry) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}bus: {bus.name}", f"{pad}  type {bus.type_name}"]
    for device in bus.children:
        lines.extend(_device_lines(device, indent + 2, registry))
    return lines


def qtree(root: Bus, registry: TypeRegistry = TYPES) -> str:
    """The text of HMP ``info qtree`` for the tree under ``root``."""
    return "".join(line + "\n" for line in _bus_lines(root, 0, registry))
