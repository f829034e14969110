"""I/O limits of a BlockBackend (QEMU's blk_io_limits_* and blockdev.c's
``block_set_io_throttle`` and ``-drive`` throttling options).

A backend with limits is a member of a throttle group (by default named
after the backend, or after the ``id`` the command was given); the group's
limits are the ones last set through any of its members, as in QEMU.
Setting every average limit to zero takes the backend out of its group,
after a drained section has let its held-back requests go. ``query-block``
shows the limits in ``inserted`` (``bps`` ... ``iops_wr`` always, the
burst and size limits and ``group`` while limits are on).
"""

from __future__ import annotations

from typing import Any

from vmd.block.backend import BlockBackend
from vmd.block.edge import drained
from vmd.block.graph import block_graph
from vmd.block.throttle_group import BUCKETS, buckets_of
from vmd.errors import DEVICE_NOT_FOUND, QMPError

#: BlockIOThrottle's (and BlockDeviceInfo's) names of the limits, with
#: their ThrottleLimits names.
_AVERAGES = {"bps": "bps-total", "bps_rd": "bps-read", "bps_wr": "bps-write",
             "iops": "iops-total", "iops_rd": "iops-read", "iops_wr": "iops-write"}
_BURSTS = {f"{short}_max": f"{limit}-max" for short, limit in _AVERAGES.items()}
_LENGTHS = {f"{short}_max_length": f"{limit}-max-length" for short, limit in _AVERAGES.items()}


async def set_limits(backend: BlockBackend, given: dict[str, int], group: str | None, default_group: str) -> None:
    """Apply limits in ThrottleLimits' names (checked first): join a group
    (``group``, else ``default_group``) or change it, or leave it when no
    average limit is set (blk_io_limits_enable/_update_group/_disable)."""
    buckets = buckets_of(given)
    member = backend.throttle
    if not any(given.get(limit) for limit in BUCKETS):
        if member.group is not None:
            await _leave(backend)
        return
    if member.group is None:
        member.join(group if group is not None else default_group)
    elif group is not None and group != member.group.name:
        await _leave(backend)
        member.join(group)
    assert member.group is not None
    member.group.configure(buckets, given.get("iops-size", 0))
    member.restart()


async def _leave(backend: BlockBackend) -> None:
    """blk_io_limits_disable(): a drained section lets held requests go first."""
    if backend.edge is None:
        backend.throttle.leave()
        return
    async with drained(backend.node):
        backend.throttle.leave()


def limits_info(backend: BlockBackend) -> dict[str, Any]:
    """The limits members of ``BlockDeviceInfo`` for a backend's inserted node."""
    info: dict[str, Any] = dict.fromkeys(_AVERAGES, 0)
    group = backend.throttle.group
    if group is None:
        return info
    limits = group.limits()
    info.update({short: limits[limit] for short, limit in _AVERAGES.items()})
    for short, limit in _BURSTS.items():
        if limits[limit]:
            info[short] = limits[limit]
            info[f"{short}_length"] = limits[f"{limit}-length"]
    if limits["iops-size"]:
        info["iops_size"] = limits["iops-size"]
    info["group"] = group.name
    return info


async def qmp_block_set_io_throttle(ctx: Any, arg: Any) -> None:
    """``block_set_io_throttle``: the backend named by ``device``, or the
    one of the guest device ``id``."""
    backend = _backend_of(ctx, arg.device, arg.id)
    if backend.edge is None:
        raise QMPError("Device has no medium")
    given = {limit: getattr(arg, short) for short, limit in _AVERAGES.items()}
    given.update({limit: value for short, limit in (*_BURSTS.items(), *_LENGTHS.items())
                  if (value := getattr(arg, short)) is not None})
    if arg.iops_size is not None:
        given["iops-size"] = arg.iops_size
    await set_limits(backend, given, arg.group, arg.device if arg.device is not None else arg.id)


def _backend_of(ctx: Any, device: str | None, qdev_id: str | None) -> BlockBackend:
    """qmp_get_blk(): a backend by name, or by its guest device's id."""
    if (device is None) == (qdev_id is None):
        raise QMPError("Need exactly one of 'device' and 'id'")
    graph = block_graph(ctx)
    if device is not None:
        backend = graph.named_backend(device)
        if backend is None:
            raise QMPError(f"Device '{device}' not found", DEVICE_NOT_FOUND)
        return backend
    path = f"/machine/peripheral/{qdev_id}"
    backend = next((b for b in graph.backends if b.device == path), None)
    if backend is not None:
        return backend
    machine = ctx.daemon.machine
    if machine is not None and any(dev.qom_path == path for dev in machine.board.devices):
        raise QMPError("Device does not have a block device backend")
    raise QMPError(f"Device '{qdev_id}' not found", DEVICE_NOT_FOUND)


def drive_limits(options: dict[str, str]) -> dict[str, int]:
    """``-drive``'s ``throttling.*`` options (the command line turns the
    short spellings into these), parsed and checked before the image is
    opened, as QEMU does; ``set_limits`` applies them."""
    given: dict[str, int] = {}
    for key, value in options.items():
        if key != "group":
            try:
                given[key] = int(value, 0)
            except ValueError:
                raise QMPError(f"Parameter 'throttling.{key}' expects a number") from None
    buckets_of(given)
    return given
