"""Buses and the device tree, and HMP ``info qtree`` in QEMU's layout.

A bus holds the devices plugged into it, newest first (QEMU inserts at
the head of the list, so ``info qtree`` lists the last device created
first); a device may own child buses. The machine builds the tree.
"""

from __future__ import annotations

from vmd.qom.device import Device
from vmd.qom.types import TYPES, TypeRegistry


class Bus:
    """A bus (QEMU's BusState): a name, a bus type and its children."""

    def __init__(self, name: str, type_name: str) -> None:
        self.name = name
        self.type_name = type_name
        self.children: list[Device] = []

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
