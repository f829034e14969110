"""QOM introspection commands (qom.json, qdev.json, machine.json,
machine-target.json).

Every answer comes from the type registry (``vmd.qom.types``, filled by
``vmd.qom.objects`` from vmd's real registries) or from the composition
tree (``vmd.qom.tree``), so a management tool learns only of types,
properties and CPU models vmd really has. Error classes and texts are
QEMU 7.2's: unknown names are ``DeviceNotFound``, which libvirt's probe
tolerates for the devices it asks about.
"""

from __future__ import annotations

import json
from typing import Any

from vmd._generated.types import (
    CpuDefinitionInfo,
    MachineInfo,
    ObjectPropertyInfo,
    ObjectTypeInfo,
    SysEmuTarget,
    TargetInfo,
)
from vmd.cli.config import MACHINE_CLASSES
from vmd.errors import DEVICE_NOT_FOUND, QMPError
from vmd.qom.objects import TYPE_X86_CPU, ensure_registered
from vmd.qom.property import Property
from vmd.qom.tree import build_tree, get_property, resolve
from vmd.qom.types import TYPE_DEVICE, TYPES, TypeInfo

CPU_TYPE_SUFFIX = "-" + TYPE_X86_CPU


def _property_info(prop: Property) -> ObjectPropertyInfo:
    default = json.loads(prop.default_json()) if prop.default is not None else None
    return ObjectPropertyInfo(name=prop.name, type=prop.type, description=prop.description or None,
                              default_value=default)


#: Types vmd does not have but libvirt 9.0 asks ``qom-list-properties``
#: about unconditionally: on QEMU's "not found" error it dereferences the
#: missing list and crashes (virQEMUCapsProcessStringFlags). vmd answers
#: "no properties" instead; ``qom-list-types`` does not list the type, so
#: nothing claims vmd has it and libvirt uses no file memory backend
#: (it uses ``memory-backend-ram``, which vmd has).
LIBVIRT_ASSUMED_CLASSES = ("memory-backend-file",)


def _lookup_class(typename: str) -> TypeInfo | None:
    ensure_registered()
    info = TYPES.lookup(typename)
    if info is None and typename not in LIBVIRT_ASSUMED_CLASSES:
        raise QMPError(f"Class '{typename}' not found", DEVICE_NOT_FOUND)
    return info


def qmp_qom_list_types(ctx: Any, implements: str | None = None,
                       abstract: bool | None = None) -> list[ObjectTypeInfo]:
    ensure_registered()
    return [ObjectTypeInfo(name=info.name, abstract=info.abstract or None, parent=info.parent)
            for info in TYPES.list_types(implements, bool(abstract))]


def qmp_qom_list_properties(ctx: Any, typename: str) -> list[ObjectPropertyInfo]:
    """``type`` first, then the type's own properties and inherited ones."""
    if _lookup_class(typename) is None:
        return []
    return [ObjectPropertyInfo(name="type", type="string")] + [
        _property_info(prop) for prop in TYPES.properties(typename)]


def qmp_device_list_properties(ctx: Any, typename: str) -> list[ObjectPropertyInfo]:
    ensure_registered()
    info = TYPES.lookup(typename)
    if info is None:
        raise QMPError(f"Device '{typename}' not found", DEVICE_NOT_FOUND)
    if info.abstract or not TYPES.is_a(typename, TYPE_DEVICE):
        raise QMPError("Parameter 'typename' expects a non-abstract device type")
    return [_property_info(prop) for prop in TYPES.properties(typename)]


def qmp_qom_list(ctx: Any, path: str) -> list[ObjectPropertyInfo]:
    ensure_registered()
    _canonical, node = resolve(build_tree(ctx.daemon), path)
    return [ObjectPropertyInfo(name=name, type=kind) for name, kind in node.properties()]


def qmp_qom_get(ctx: Any, path: str, property: str) -> Any:
    ensure_registered()
    return get_property(build_tree(ctx.daemon), path, property)


def qmp_query_cpu_definitions(ctx: Any) -> list[CpuDefinitionInfo]:
    """The CPU models: the concrete types below ``x86_64-cpu``; none
    without KVM, since vmd runs no CPU any other way."""
    ensure_registered()
    if ctx.daemon.accel != "kvm":
        return []
    return [CpuDefinitionInfo(name=info.name.removesuffix(CPU_TYPE_SUFFIX),
                              typename=info.name, static=False,
                              migration_safe=False, deprecated=False,
                              unavailable_features=[])
            for info in TYPES.list_types(TYPE_X86_CPU)]


def qmp_query_target(ctx: Any) -> TargetInfo:
    return TargetInfo(arch=SysEmuTarget.X86_64)


def qmp_query_machines(ctx: Any) -> list[MachineInfo]:
    """The machine table; vmd hotplugs no CPU and has no NUMA. Without
    KVM only ``none`` can run, so only ``none`` is listed (vmd.system.accel)."""
    return [MachineInfo(name=machine.name, alias=machine.alias, is_default=machine.is_default or None,
                        cpu_max=machine.cpu_max, hotpluggable_cpus=False, numa_mem_supported=False,
                        deprecated=False, default_cpu_type=machine.default_cpu_type,
                        default_ram_id=machine.default_ram_id)
            for machine in MACHINE_CLASSES
            if ctx.daemon.accel == "kvm" or machine.name == "none"]
