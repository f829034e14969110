"""The device base class and ``-device``-style creation from options.

A device instance carries its properties (set before realize, read-only
after) and is realized once with the ``DeviceContext`` the machine
builds: realize maps its I/O regions, takes its IRQ lines and chardev.
``create_device`` applies QEMU's checks in QEMU's order with QEMU's texts
(unknown driver, abstract or non-pluggable type, unknown property, bad
value); the machine uses ``user=False`` for its built-in devices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from vmd.qom.errors import PropertyValueError, QOMError
from vmd.qom.types import TYPE_DEVICE, TYPES, TypeInfo, TypeRegistry

if TYPE_CHECKING:
    from vmd.hw.context import DeviceContext
    from vmd.qom.qtree import Bus

# Options of -device that are not properties of the type.
_GENERIC_OPTIONS = ("driver", "id", "bus")


class Device:
    """A device model (QEMU's DeviceState).

    Subclasses implement ``realize`` and ``reset``; their guest-facing
    methods run with the BQL held and never block (see ``vmd.hw``).
    """

    type_info: ClassVar[TypeInfo]
    #: ``info qtree``'s GPIO lines: (``in``/``out``, name, count).
    gpios: ClassVar[tuple[tuple[str, str, int], ...]] = ()

    def __init__(self, props: dict[str, Any], dev_id: str | None = None) -> None:
        self.id = dev_id
        self.props = props
        #: The path in the composition tree: the board sets it for ``-device``s
        #: (``/machine/peripheral/ID`` or ``/machine/peripheral-anon/device[N]``).
        self.qom_path = ""
        self.realized = False
        #: Added to a running machine (QEMU's dev->hotplugged).
        self.hotplugged = False
        #: When the guest was asked to eject it (``device_del``), in the
        #: machine's count of VM starts; None when it was not asked.
        self.unplug_requested: int | None = None
        self.parent_bus: Bus | None = None
        self.child_buses: list[Bus] = []

    @property
    def type_name(self) -> str:
        return self.type_info.name

    def realize(self, ctx: DeviceContext) -> None:
        """Wire the device into the machine; raise ``QOMError`` on failure."""
        self.realized = True

    def reset(self) -> None:
        """Return to the power-on state (QEMU's ``dc->reset``)."""

    def unrealize(self) -> None:
        """Leave the machine after the bus let go of it (BQL held, any
        thread): stop whatever the guest could still trigger."""
        self.realized = False

    async def release(self) -> None:
        """After ``unrealize``, on the event loop: let go of what the
        device held outside the machine (a block backend, a chardev)."""

    def inner_paths(self) -> list[str]:
        """QOM paths of the devices QEMU builds inside this one (a virtio
        proxy's ``virtio-backend``); each gets its own DEVICE_DELETED."""
        return []

    def qtree_lines(self) -> list[str]:
        """Lines ``info qtree`` prints after the properties (``mmio`` ...)."""
        return []


def find_device_type(name: str, user: bool = True,
                     registry: TypeRegistry = TYPES,
                     parameter: str = "driver") -> TypeInfo:
    """The concrete device type ``name`` or QEMU's error for it."""
    info = registry.lookup(name) or registry.by_alias(name)
    if info is not None:
        name = info.name
    if info is None or not registry.is_a(name, TYPE_DEVICE):
        raise QOMError(f"'{name}' is not a valid device model name")
    if info.abstract:
        raise QOMError(
            f"Parameter '{parameter}' expects a non-abstract device type")
    if user and not info.user_creatable:
        raise QOMError(
            f"Parameter '{parameter}' expects a pluggable device type")
    return info


def create_device(options: dict[str, Any], user: bool = True,
                  registry: TypeRegistry = TYPES) -> Device:
    """Build (not realize) a device from ``-device`` options.

    ``options`` holds ``driver``, maybe ``id`` and the properties, as
    strings from the command line or typed values from JSON.
    """
    driver = options.get("driver")
    if not isinstance(driver, str):
        raise QOMError("Parameter 'driver' is missing")
    info = find_device_type(driver, user, registry)
    props = {prop.name: prop.default for prop in registry.properties(info.name)}
    known = {prop.name: prop for prop in registry.properties(info.name)}
    for key, value in options.items():
        if key in _GENERIC_OPTIONS:
            continue
        prop = known.get(key)
        if prop is None:
            raise QOMError(f"Property '{info.name}.{key}' not found")
        try:
            props[key] = prop.parse(value)
        except PropertyValueError:
            raise QOMError(f"Property '{info.name}.{key}' doesn't take value '{value}'") from None
    dev_id = options.get("id")
    device: Device = info.instance(props, dev_id if isinstance(dev_id, str) else None)
    return device
