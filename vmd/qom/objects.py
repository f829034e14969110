"""The QOM types of what vmd has besides device models.

QEMU's type table also holds containers, machines, accelerators and
chardev backends; ``qom-list-types`` lists them and management tools
(libvirt) decide from that list what to ask for. vmd registers them here
from its real registries, so the list grows only when vmd really gains a
machine type or a chardev backend, never by editing a table of names:

* chardev backends: one ``chardev-KIND`` per backend the chardev registry
  can open (QEMU's parents: the fd-based ones below ``chardev-fd``,
  ``memory`` below ``chardev-ringbuf``);
* machines: ``NAME-machine`` per machine type the command line accepts,
  with the properties vmd's ``-machine`` honours;
* accelerators: ``kvm-accel`` (vmd runs guests on KVM only);
* CPU models: ``MODEL-x86_64-cpu`` per model ``-cpu`` takes (``vmd.accel.cpuid``);
* user-creatable objects: ``secret``, ``memory-backend-ram``, ``iothread``
  (``vmd.qom.user_objects``);
* device models: importing ``vmd.hw.devices`` registers them.

Registration runs once, on the first QOM command (``ensure_registered``),
so a daemon that never introspects never imports the device models.
"""

from __future__ import annotations

from vmd.qom.property import Property
from vmd.qom.types import TYPE_DEVICE, TYPE_OBJECT, TYPES, TypeInfo, TypeRegistry

TYPE_CONTAINER = "container"
TYPE_MACHINE = "machine"
TYPE_CHARDEV = "chardev"
TYPE_ACCEL = "accel"
TYPE_CPU = "cpu"
TYPE_X86_CPU = "x86_64-cpu"

#: QEMU's parents of chardev types that do not derive from ``chardev``.
_CHARDEV_PARENTS = {"file": "chardev-fd", "pipe": "chardev-fd",
                    "stdio": "chardev-fd", "serial": "chardev-fd",
                    "memory": "chardev-ringbuf"}

#: QEMU's abstract machine types between ``machine`` and a board's type,
#: (name, parent) from the top down.
_MACHINE_PARENTS = {"generic-pc-machine": (("x86-machine", TYPE_MACHINE),
                                           ("generic-pc-machine", "x86-machine"))}

#: The ``-machine`` properties vmd honours, beside ``type`` and ``accel``:
#: the RAM's backend; ``dump-guest-core=off`` keeps guest RAM out of core
#: files (MADV_DONTDUMP). vmd has no USB and no graphics, so those accept
#: only ``off`` (vmd.cli.parser checks the values; README "libvirt").
MACHINE_PROPERTIES = (
    Property("memory-backend", "link<memory-backend>",
             description="Set RAM backendValid value is ID of hostmem based backend"),
    Property("usb", "bool", default=False, description="Set on/off to enable/disable usb"),
    Property("graphics", "bool", default=False,
             description="Set on/off to enable/disable graphics emulation"),
    Property("dump-guest-core", "bool", default=True,
             description="Include guest memory in a core dump"),
)
#: Machine properties that exist only switched off.
ABSENT_FEATURES = {"usb": "USB", "graphics": "graphics"}


def machine_type_name(machine: str) -> str:
    """The QOM type of machine ``machine`` (QEMU's MACHINE_TYPE_NAME)."""
    return f"{machine}-machine"


def cpu_type_name(model: str) -> str:
    """The QOM type of CPU model ``model`` (QEMU's X86_CPU_TYPE_NAME)."""
    return f"{model}-{TYPE_X86_CPU}"


def chardev_type_name(kind: str) -> str:
    """The QOM type of chardev backend ``kind``."""
    return f"chardev-{kind}"


def ensure_registered(registry: TypeRegistry = TYPES) -> None:
    """Register every type vmd has, once per registry."""
    if registry.lookup(TYPE_CONTAINER) is not None:
        return
    from vmd.hw import devices  # noqa: F401  (registers the device types)
    registry.register(TypeInfo(TYPE_CONTAINER, TYPE_OBJECT))
    _register_accels(registry)
    _register_machines(registry)
    _register_chardevs(registry)
    _register_cpus(registry)
    registry.register(TypeInfo("secret_common", TYPE_OBJECT, abstract=True))
    registry.register(TypeInfo("event-loop-base", TYPE_OBJECT, abstract=True))
    registry.register(TypeInfo("secret", "secret_common"))
    size = Property("size", "int", description="Size of the memory region (ex: 500M)")
    registry.register(TypeInfo("memory-backend", TYPE_OBJECT, abstract=True, properties=(size,)))
    registry.register(TypeInfo("memory-backend-ram", "memory-backend"))
    registry.register(TypeInfo("iothread", "event-loop-base"))


def _register_accels(registry: TypeRegistry) -> None:
    registry.register(TypeInfo(TYPE_ACCEL, TYPE_OBJECT))  # not abstract in QEMU either
    registry.register(TypeInfo("kvm-accel", TYPE_ACCEL))


def _register_machines(registry: TypeRegistry) -> None:
    from vmd.cli.config import MACHINE_CLASSES
    registry.register(TypeInfo(TYPE_MACHINE, TYPE_OBJECT, abstract=True,
                               properties=MACHINE_PROPERTIES))
    for machine in MACHINE_CLASSES:
        for parent in _MACHINE_PARENTS.get(machine.qom_parent, ()):
            if registry.lookup(parent[0]) is None:
                registry.register(TypeInfo(parent[0], parent[1], abstract=True))
        registry.register(TypeInfo(machine_type_name(machine.name), machine.qom_parent))


def _register_cpus(registry: TypeRegistry) -> None:
    """CPU models: ``MODEL-x86_64-cpu`` below QEMU's abstract ``cpu`` and
    ``x86_64-cpu``; made by ``-cpu``, not ``-device``."""
    from vmd.accel.cpuid import ALIASES, MODELS
    registry.register(TypeInfo(TYPE_CPU, TYPE_DEVICE, abstract=True, user_creatable=False))
    registry.register(TypeInfo(TYPE_X86_CPU, TYPE_CPU, abstract=True, user_creatable=False))
    for model in MODELS:
        registry.register(TypeInfo(cpu_type_name(model), TYPE_X86_CPU, user_creatable=False))
    for alias, model in ALIASES.items():  # QEMU's host-x86_64-cpu derives from max
        registry.register(TypeInfo(cpu_type_name(alias), cpu_type_name(model), user_creatable=False))


def _register_chardevs(registry: TypeRegistry) -> None:
    from vmd.chardev.registry import backend_names
    registry.register(TypeInfo(TYPE_CHARDEV, TYPE_OBJECT, abstract=True))
    registry.register(TypeInfo("chardev-fd", TYPE_CHARDEV, abstract=True))
    # Kinds whose parent is another kind's type come after that kind.
    for kind in sorted(backend_names(), key=lambda k: _CHARDEV_PARENTS.get(k, "") == "chardev-ringbuf"):
        registry.register(TypeInfo(chardev_type_name(kind),
                                   _CHARDEV_PARENTS.get(kind, TYPE_CHARDEV)))
