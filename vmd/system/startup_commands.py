"""Running QMP commands for the command line (``-blockdev``, ...).

QEMU builds ``-blockdev`` nodes with the same code as ``blockdev-add``;
vmd does too, literally: each option becomes a QMP request that goes
through the dispatcher, so validation, error texts and behaviour are those
of the command. Dotted-key options are typed by the schema first, like
QEMU's keyval visitor.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmd.cli.errors import OptionError
from vmd.qapi_keyval import command_arguments
from vmd.qmp.errors import QMPError
from vmd.qom.errors import QOMError
from vmd.system.process import StartupError

if TYPE_CHECKING:
    from vmd.cli.config import Config
    from vmd.daemon import Daemon


@dataclass
class _StartupContext:
    """What a handler sees as ``ctx`` when the command line calls it."""

    daemon: Daemon


async def execute(daemon: Daemon, command: str, arguments: dict[str, Any], option: str) -> Any:
    """Run ``command``; a failure becomes a start-up error naming ``option``."""
    response = daemon.dispatcher.dispatch(
        {"execute": command, "arguments": arguments}, _StartupContext(daemon), oob_allowed=False)
    if inspect.isawaitable(response):
        response = await response
    if "error" in response:
        raise StartupError(f"{option}: {response['error']['desc']}")
    return response["return"]


async def create_objects(daemon: Daemon, config: Config) -> None:
    """``-object`` options, in order, as ``object-add``."""
    await _add_each(daemon, config.objects, "-object", "id", "object-add")


async def create_blockdevs(daemon: Daemon, config: Config) -> None:
    """``-blockdev`` options, in order, as ``blockdev-add``."""
    await _add_each(daemon, config.blockdevs, "-blockdev", "node-name", "blockdev-add")


async def _add_each(daemon: Daemon, items: Any, flag: str, id_key: str, command: str) -> None:
    """Each option (JSON or dotted keys) as one ``command``; an error names
    the option by ``flag`` and its ``id_key`` value."""
    for item in items:
        option = f"{flag} {item.options.get(id_key, '')}"
        try:
            arguments = item.options if item.from_json else command_arguments(command, item.options)
        except (OptionError, QMPError) as error:
            raise StartupError(f"{option}: {error}") from None
        await execute(daemon, command, arguments, option)


async def create_drives(daemon: Daemon, config: Config) -> None:
    """``-drive`` options, in order, after the ``-blockdev`` nodes (as QEMU's
    configure_blockdev); ``if=virtio`` adds its ``virtio-blk-pci`` device."""
    from vmd.block.drive import open_drive
    from vmd.cli.config import DeviceConfig
    for drive in config.drives:
        try:
            await open_drive(daemon.block, drive)
            if drive.interface == "virtio":
                _check_virtio_blk(config)
        except (QMPError, QOMError) as error:
            raise StartupError(f"-drive {drive.id}: {error}") from None
        if drive.interface == "virtio":
            config.devices.append(DeviceConfig(options={"driver": VIRTIO_BLK, "drive": drive.id}))


#: The device ``if=virtio`` adds (QEMU's "virtio-blk" alias on a PC).
VIRTIO_BLK = "virtio-blk-pci"


def _check_virtio_blk(config: Config) -> None:
    """The device type must exist, and a machine to plug it into."""
    from vmd.hw import devices  # noqa: F401  (registers the device types)
    from vmd.qom.device import find_device_type
    find_device_type(VIRTIO_BLK)
    if config.machine.get("type") == "none":
        raise QOMError(f"No 'PCI' bus found for device '{VIRTIO_BLK}'")
