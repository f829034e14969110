"""QMP commands about the protocol itself (control.json, introspect.json)."""

from __future__ import annotations

from typing import Any

from vmd._generated.types import CommandInfo, QMPCapability


def qmp_qmp_capabilities(ctx: Any, enable: list[QMPCapability] | None) -> None:
    ctx.negotiate(enable)


def qmp_query_version(ctx: Any) -> dict[str, Any]:
    return ctx.daemon.version_info()


def qmp_query_commands(ctx: Any) -> list[CommandInfo]:
    return [CommandInfo(name=name) for name in ctx.daemon.dispatcher.commands]


def qmp_query_qmp_schema(ctx: Any) -> list[dict[str, Any]]:
    # Imported here: the table is large and only this command needs it.
    from vmd._generated.introspect import SCHEMA_INFO
    return SCHEMA_INFO
