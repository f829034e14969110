"""``-device help`` and ``-device TYPE,help`` in QEMU's words and layout."""

from __future__ import annotations

from vmd.qom.errors import QOMError
from vmd.qom.property import Property
from vmd.qom.types import CATEGORY_TITLES, TYPE_DEVICE, TYPES, TypeInfo, TypeRegistry


def _devinfo_line(info: TypeInfo) -> str:
    """One ``name "...", bus ..., desc "..."`` line (qdev_print_devinfo)."""
    line = f'name "{info.name}"'
    if info.bus_type:
        line += f", bus {info.bus_type}"
    if info.alias:
        line += f', alias "{info.alias}"'
    if info.desc:
        line += f', desc "{info.desc}"'
    if not info.user_creatable:
        line += ", no-user"
    return line


def device_help(registry: TypeRegistry = TYPES) -> str:
    """``-device help``: user-creatable devices by category, then the rest."""
    devices = sorted(registry.list_types(TYPE_DEVICE),
                     key=lambda info: info.name.lower())
    devices = [info for info in devices if info.user_creatable]
    groups: list[tuple[str, list[TypeInfo]]] = [
        (title, [info for info in devices if category in info.categories])
        for category, title in CATEGORY_TITLES.items()]
    groups.append(("Uncategorized",
                   [info for info in devices if not info.categories]))
    out: list[str] = []
    for title, members in groups:
        if not members:
            continue
        if out:
            out.append("")
        out.append(f"{title} devices:")
        out.extend(_devinfo_line(info) for info in members)
    return "".join(line + "\n" for line in out)


def device_properties(name: str, registry: TypeRegistry = TYPES) -> list[Property]:
    """``device-list-properties``: the properties of a concrete device type."""
    info = registry.lookup(name)
    if info is None or not registry.is_a(name, TYPE_DEVICE):
        raise QOMError(f"Device '{name}' not found")
    if info.abstract:
        raise QOMError(
            "Parameter 'typename' expects a non-abstract device type")
    return registry.properties(name)


def device_type_help(name: str, registry: TypeRegistry = TYPES) -> str:
    """``-device TYPE,help``: the properties, sorted as QEMU sorts them."""
    props = device_properties(name, registry)
    if not props:
        return f"There are no options for {name}.\n"
    lines = sorted(prop.help_line() for prop in props)
    return f"{name} options:\n" + "".join(line + "\n" for line in lines)
