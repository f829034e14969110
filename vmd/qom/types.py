"""The QOM type registry: what types exist and how they relate.

A type has a name, a parent, may be abstract and may implement interfaces
(QEMU's ``TypeInfo``); a device type adds its properties, the bus it plugs
into, its ``-device help`` category and whether users may create it
(QEMU's ``DeviceClass``). The registry answers the questions QEMU's QOM
answers: ``qom-list-types`` (``implements``, ``abstract``),
``device-list-properties`` (the properties of a type and its ancestors)
and ``is_a``. Device models register with ``@device_type``; later
subsystems (PCI, virtio) register their own abstract types and
interfaces the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from vmd.qom.property import Property


class Category(enum.IntEnum):
    """QEMU's DeviceCategory, in ``-device help`` order."""

    BRIDGE = 0
    USB = 1
    STORAGE = 2
    NETWORK = 3
    INPUT = 4
    DISPLAY = 5
    SOUND = 6
    MISC = 7
    CPU = 8
    WATCHDOG = 9


CATEGORY_TITLES = {
    Category.BRIDGE: "Controller/Bridge/Hub",
    Category.USB: "USB",
    Category.STORAGE: "Storage",
    Category.NETWORK: "Network",
    Category.INPUT: "Input",
    Category.DISPLAY: "Display",
    Category.SOUND: "Sound",
    Category.MISC: "Misc",
    Category.CPU: "CPU",
    Category.WATCHDOG: "Watchdog",
}


@dataclass(frozen=True)
class TypeInfo:
    """One registered type.

    ``properties`` are the ones this type declares; ``TypeRegistry.
    properties`` adds the inherited ones. ``instance`` is the class that
    builds objects of a concrete type.
    """

    name: str
    parent: str | None
    abstract: bool = False
    interfaces: tuple[str, ...] = ()
    properties: tuple[Property, ...] = ()
    categories: tuple[Category, ...] = ()
    bus_type: str | None = None
    desc: str | None = None
    user_creatable: bool = True
    instance: Any = None
    #: The short name ``-device`` also takes (QEMU's qdev_alias_table).
    alias: str | None = None


class TypeRegistry:
    """All types by name (QEMU's type table); filled at import time."""

    def __init__(self) -> None:
        self._types: dict[str, TypeInfo] = {}

    def register(self, info: TypeInfo) -> TypeInfo:
        if info.name in self._types:
            raise ValueError(f"type '{info.name}' registered twice")
        if info.parent is not None and info.parent not in self._types:
            raise ValueError(f"type '{info.name}': unknown parent '{info.parent}'")
        self._types[info.name] = info
        return info

    def lookup(self, name: str) -> TypeInfo | None:
        return self._types.get(name)

    def by_alias(self, alias: str) -> TypeInfo | None:
        """The type whose ``alias`` is ``alias`` (``virtio-blk``), if any."""
        return next((info for info in self._types.values() if info.alias == alias), None)

    def __iter__(self) -> Iterator[TypeInfo]:
        return iter(list(self._types.values()))

    def ancestors(self, name: str) -> list[TypeInfo]:
        """The type itself, then its parent, up to the root."""
        chain = []
        info = self._types.get(name)
        while info is not None:
            chain.append(info)
            info = self._types.get(info.parent) if info.parent else None
        return chain

    def is_a(self, name: str, base: str) -> bool:
        """``object_class_dynamic_cast``: a subtype or an implementer of ``base``."""
        for info in self.ancestors(name):
            if info.name == base:
                return True
            if any(self.is_a(iface, base) for iface in info.interfaces):
                return True
        return False

    def properties(self, name: str) -> list[Property]:
        """The properties of a type, its own first, then inherited ones."""
        props: list[Property] = []
        for info in self.ancestors(name):
            props.extend(info.properties)
        return props

    def list_types(self, implements: str | None = None,
                   abstract: bool = False) -> list[TypeInfo]:
        """``qom-list-types``: types that are (or implement) ``implements``;
        abstract types only when ``abstract`` is true."""
        return [info for info in self._types.values()
                if (abstract or not info.abstract)
                and (implements is None or self.is_a(info.name, implements))]


#: The registry of this process (QEMU has one global type table too).
TYPES = TypeRegistry()

TYPE_OBJECT = "object"
TYPE_INTERFACE = "interface"
TYPE_DEVICE = "device"
TYPE_BUS = "bus"
TYPE_SYS_BUS_DEVICE = "sys-bus-device"
TYPE_ISA_DEVICE = "isa-device"
TYPE_SYSTEM_BUS = "System"
TYPE_ISA_BUS = "ISA"

for _info in (
    TypeInfo(TYPE_OBJECT, None, abstract=True),
    TypeInfo(TYPE_INTERFACE, None, abstract=True),
    TypeInfo(TYPE_DEVICE, TYPE_OBJECT, abstract=True),
    TypeInfo(TYPE_BUS, TYPE_OBJECT, abstract=True),
    TypeInfo(TYPE_SYSTEM_BUS, TYPE_BUS),
    TypeInfo(TYPE_ISA_BUS, TYPE_BUS),
    TypeInfo(TYPE_SYS_BUS_DEVICE, TYPE_DEVICE, abstract=True),
    TypeInfo(TYPE_ISA_DEVICE, TYPE_DEVICE, abstract=True, bus_type=TYPE_ISA_BUS),
):
    TYPES.register(_info)

C = TypeVar("C")


def device_type(name: str, parent: str, *, properties: tuple[Property, ...] = (),
                categories: tuple[Category, ...] = (), desc: str | None = None,
                user_creatable: bool = True, abstract: bool = False,
                interfaces: tuple[str, ...] = (), alias: str | None = None) -> Callable[[C], C]:
    """Class decorator: register a device model as QOM type ``name``.

    The bus type is inherited from the parent type, as in QEMU where
    ``isa-device`` sets ``bus_type`` for every ISA device.
    """
    def register(cls: C) -> C:
        parent_info = TYPES.lookup(parent)
        bus_type = parent_info.bus_type if parent_info else None
        info = TypeInfo(name, parent, abstract=abstract, interfaces=interfaces,
                        properties=properties, categories=categories,
                        bus_type=bus_type, desc=desc, alias=alias,
                        user_creatable=user_creatable, instance=cls)
        TYPES.register(info)
        setattr(cls, "type_info", info)  # noqa: B010  (C is any class)
        return cls
    return register
