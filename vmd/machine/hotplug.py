"""QMP ``device_add`` and ``device_del`` (qdev.json), as QEMU 7.2's qdev-monitor.

``device_add`` takes its arguments the way QEMU 7.2 does: through
QemuOpts (qemu_opts_from_qdict), so a string ``id`` must be an identifier
and any other ``id`` is ignored, numbers and booleans become the strings
``-device`` would have had (``5``, ``on``), and lists or objects are
dropped; the device is then created as a ``-device`` is
(``vmd.machine.peripherals``). With ``-M none`` there is only the system
bus, so every device fails with QEMU's "No '...' bus found".

``device_del`` finds the device by id or by QOM path (relative paths are
taken from ``/machine/peripheral``) and asks for its removal; the device
goes when the guest ejects it, with ``DEVICE_DELETED``.
"""

from __future__ import annotations

from typing import Any

from vmd.cli.qemu_opts import is_valid_id
from vmd.errors import DEVICE_NOT_FOUND, QMPError
from vmd.machine.peripherals import Peripherals, placement
from vmd.qom.device import Device
from vmd.qom.errors import QOMError
from vmd.qom.objects import ensure_registered
from vmd.qom.qtree import Bus
from vmd.qom.tree import build_tree, resolve


def device_options(arguments: dict[str, Any]) -> dict[str, str]:
    """QEMU's qemu_opts_from_qdict: the string options of a ``device_add``."""
    options: dict[str, str] = {}
    dev_id = arguments.get("id")
    if isinstance(dev_id, str):
        if not is_valid_id(dev_id):
            raise QMPError("Parameter 'id' expects an identifier")
        options["id"] = dev_id
    for key, value in arguments.items():
        if key == "id":
            continue
        if isinstance(value, bool):
            options[key] = "on" if value else "off"
        elif isinstance(value, int):
            options[key] = str(value)
        elif isinstance(value, float):
            options[key] = f"{value:.17g}"
        elif isinstance(value, str):
            options[key] = value
    return options


def _peripherals(ctx: Any) -> Peripherals | None:
    machine = ctx.daemon.machine
    return None if machine is None else machine.board.peripherals


def qmp_device_add(ctx: Any, arguments: dict[str, Any]) -> None:
    options = device_options(arguments)
    ensure_registered()
    peripherals = _peripherals(ctx)
    try:
        if peripherals is None:
            placement(Bus("main-system-bus", "System"), options, hotplug=True)
            raise QOMError(f"Device '{options['driver']}' can not be hotplugged on this machine")
        with ctx.daemon.machine.bql:
            peripherals.add(options, hotplug=True)
    except QOMError as error:
        raise QMPError(str(error)) from None


def qmp_device_del(ctx: Any, id: str) -> None:
    peripherals = _peripherals(ctx)
    device = _find(ctx, peripherals, id)
    if device is None or peripherals is None:
        raise QMPError(f"Device '{id}' not found", DEVICE_NOT_FOUND)
    try:
        with ctx.daemon.machine.bql:
            peripherals.unplug(device, id)
    except QOMError as error:
        raise QMPError(str(error)) from None


def _find(ctx: Any, peripherals: Peripherals | None, name: str) -> Device | None:
    """QEMU's find_device_state: a path from ``/machine/peripheral``; an
    object there that is no device is an error of its own."""
    path = name if name.startswith("/") else f"/machine/peripheral/{name}".rstrip("/")
    device = None if peripherals is None else peripherals.by_path(path)
    if device is not None:
        return device
    try:
        resolve(build_tree(ctx.daemon), path)
    except QMPError:
        return None
    raise QMPError(f"{name} is not a hotpluggable device")


# -- HMP ------------------------------------------------------------------------

def hmp_device_add(ctx: Any, args: list[str]) -> str:
    """``device_add driver[,prop=value][,...]``: the ``-device`` syntax.

    A malformed option (a bad ``id``) is reported on QEMU's standard error,
    not in the monitor: the monitor shows only the hint to ``help``.
    """
    from vmd.cli.errors import OptionError
    from vmd.cli.parser import DEVICE_SPEC
    from vmd.cli.qemu_opts import parse_opts
    try:
        opts = parse_opts(DEVICE_SPEC, args[0] if args else "")
    except OptionError:
        return 'Try "help device_add" for more information\n'
    options: dict[str, Any] = opts.to_dict()
    if opts.id is not None:
        options["id"] = opts.id
    return _hmp_error(qmp_device_add, ctx, options)


def hmp_device_del(ctx: Any, args: list[str]) -> str:
    return _hmp_error(qmp_device_del, ctx, args[0])


def _hmp_error(command: Any, ctx: Any, argument: Any) -> str:
    """Run a QMP command for HMP: nothing on success, ``Error: ...`` otherwise."""
    try:
        command(ctx, argument)
    except QMPError as error:
        return f"Error: {error.desc}\n"
    return ""
