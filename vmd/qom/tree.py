"""The QOM composition tree as ``qom-list`` and ``qom-get`` see it.

QEMU keeps every object in one tree: ``/machine`` (with its
``peripheral``, ``peripheral-anon`` and ``unattached`` containers) and
``/chardevs`` with one child per chardev. vmd keeps that state in its own
registries (the daemon's config and chardev registry), so the tree is a
view built from them on each command: nothing can go stale. Each object
has ``type`` (a string property), its child<> properties and whatever
plain properties its type declares.

Path lookup follows QEMU's object_resolve_path: an absolute path walks
child properties from the root; a partial path (no leading ``/``) names
the object it is a suffix of, and must name exactly one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vmd.cli.config import machine_class
from vmd.errors import DEVICE_NOT_FOUND, QMPError
from vmd.qom.objects import MACHINE_PROPERTIES, TYPE_CONTAINER, chardev_type_name, machine_type_name
from vmd.qom.property import Property
from vmd.qom.types import TYPES

#: QOM types of user-created objects (vmd.qom.user_objects).
SECRET_TYPE = "secret"
RAM_BACKEND_TYPE = "memory-backend-ram"
IOTHREAD_TYPE = "iothread"


@dataclass
class QomNode:
    """One object: its type, plain property values and children."""

    type_name: str
    values: dict[str, Any] = field(default_factory=dict)
    children: dict[str, QomNode] = field(default_factory=dict)

    def properties(self) -> list[tuple[str, str]]:
        """(name, type) of each property, as ``qom-list`` shows them."""
        props = [("type", "string")]
        props += [(p.name, p.type) for p in self._declared() if p.name in self.values]
        props += [(name, f"child<{child.type_name}>") for name, child in self.children.items()]
        return props

    def _declared(self) -> list[Property]:
        return TYPES.properties(self.type_name)


def build_tree(daemon: Any) -> QomNode:
    """The tree of ``daemon`` as it is now."""
    config = daemon.config
    machine_name = machine_class(config.machine.get("type", "none"))
    machine = QomNode(machine_type_name(machine_name.name if machine_name else "none"),
                      values=_machine_values(config.machine))
    for name in ("peripheral-anon", "peripheral", "unattached"):
        machine.children[name] = QomNode(TYPE_CONTAINER)
    chardevs = QomNode(TYPE_CONTAINER, children={
        chardev.id: QomNode(chardev_type_name(chardev.kind)) for chardev in daemon.chardevs})
    root = QomNode(TYPE_CONTAINER, children={"machine": machine, "chardevs": chardevs})
    if daemon.objects.container:
        root.children["objects"] = QomNode(TYPE_CONTAINER, children={
            object_id: QomNode(obj.type_name) for object_id, obj in daemon.objects})
    return root


def _machine_values(options: dict[str, str]) -> dict[str, Any]:
    """The machine's properties as ``-machine`` set them (the parser let
    through only values vmd honours); the RAM backend is a link's path."""
    values: dict[str, Any] = {}
    for prop in MACHINE_PROPERTIES:
        if prop.type == "bool":
            values[prop.name] = prop.parse(options[prop.name]) if prop.name in options else prop.default
    backend = options.get("memory-backend")
    values["memory-backend"] = f"/objects/{backend}" if backend else ""
    return values


def _walk(node: QomNode, path: str) -> Iterator[tuple[str, QomNode]]:
    yield path, node
    for name, child in node.children.items():
        yield from _walk(child, f"{path.rstrip('/')}/{name}")


def resolve(root: QomNode, path: str) -> tuple[str, QomNode]:
    """The canonical path and the object that ``path`` names."""
    if path.startswith("/"):
        node = root
        for part in (p for p in path.split("/") if p):
            child = node.children.get(part)
            if child is None:
                raise QMPError(f"Device '{path}' not found", DEVICE_NOT_FOUND)
            node = child
        return "/" + "/".join(p for p in path.split("/") if p), node
    suffix = [p for p in path.split("/") if p]
    matches = [(p, n) for p, n in _walk(root, "/")
               if p.split("/")[-len(suffix):] == suffix] if suffix else []
    if len(matches) > 1:
        raise QMPError(f"Path '{path}' is ambiguous")
    if not matches:
        raise QMPError(f"Device '{path}' not found", DEVICE_NOT_FOUND)
    return matches[0]


def get_property(root: QomNode, path: str, name: str) -> Any:
    """``qom-get``: a plain value, the type name, or a child's path."""
    canonical, node = resolve(root, path)
    if name == "type":
        return node.type_name
    if name in node.children:
        return f"{canonical.rstrip('/')}/{name}"
    if name in node.values:
        return node.values[name]
    raise QMPError(f"Property '{node.type_name}.{name}' not found")
