"""Migration commands (migration.json).

vmd cannot migrate a guest. Of QEMU's migration capabilities it has only
``events`` (send MIGRATION events on state changes): libvirt enables it
on every domain start, and it holds trivially, since vmd never migrates
and so never changes migration state. Every other capability is refused
when enabled, so a management tool is never told that vmd compresses,
post-copies or otherwise migrates.
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import MigrationCapability, MigrationCapabilityStatus
from vmd.errors import QMPError

#: The capabilities vmd has.
SUPPORTED = (MigrationCapability.EVENTS,)


def new_capability_states() -> dict[MigrationCapability, bool]:
    """A daemon's capability states (daemon-wide, as QEMU's), all off."""
    return dict.fromkeys(SUPPORTED, False)


def _states(ctx: Any) -> dict[MigrationCapability, bool]:
    states: dict[MigrationCapability, bool] = ctx.daemon.migration_capabilities
    return states


def qmp_query_migrate_capabilities(ctx: Any) -> list[MigrationCapabilityStatus]:
    return [MigrationCapabilityStatus(capability=cap, state=state)
            for cap, state in _states(ctx).items()]


def qmp_migrate_set_capabilities(ctx: Any, capabilities: list[MigrationCapabilityStatus]) -> None:
    """All or nothing: an unsupported capability turned on changes none."""
    states = _states(ctx)
    for status in capabilities:
        if status.capability not in states and status.state:
            raise QMPError(f"Migration capability '{status.capability}' is not supported by vmd")
    for status in capabilities:
        if status.capability in states:
            states[status.capability] = status.state
