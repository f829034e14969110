"""``yank`` and ``query-yank``: out-of-band recovery of stuck connections.

QEMU registers a yank instance for every socket chardev, block node with a
network connection and migration. vmd's QMP monitors register as chardev
instances; later subsystems add theirs. Yanking a monitor's chardev drops
its connected clients at once, which is what a client stuck on a dead
connection needs. These commands run out of band, on the loop thread.
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import YankInstance, YankInstanceChardev, YankInstanceType
from vmd.qmp.errors import DEVICE_NOT_FOUND, QMPError


def _chardev_monitors(ctx: Any) -> dict[str, Any]:
    return {monitor.yank_id(): monitor for monitor in ctx.daemon.monitors
            if monitor.chardev.backend == "socket"}


def qmp_query_yank(ctx: Any) -> list[YankInstance]:
    return [YankInstance(type=YankInstanceType.CHARDEV,
                         u=YankInstanceChardev(id=chardev_id))
            for chardev_id in _chardev_monitors(ctx)]


def qmp_yank(ctx: Any, instances: list[YankInstance]) -> None:
    monitors = _chardev_monitors(ctx)
    targets = []
    for instance in instances:
        target = None
        if instance.type == YankInstanceType.CHARDEV:
            assert isinstance(instance.u, YankInstanceChardev)
            target = monitors.get(instance.u.id)
        if target is None:
            raise QMPError("Instance not found", DEVICE_NOT_FOUND)
        targets.append(target)
    for monitor in targets:
        for connection in list(monitor.connections):
            connection.abort()
