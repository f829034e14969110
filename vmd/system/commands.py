"""QMP commands for run state, identity and shutdown (run-state.json)."""

from __future__ import annotations

from typing import Any

from vmd._generated import events
from vmd._generated.types import NameInfo, ShutdownCause, StatusInfo


def qmp_query_status(ctx: Any) -> StatusInfo:
    runstate = ctx.daemon.runstate
    return StatusInfo(running=runstate.running, singlestep=False,
                      status=runstate.status)


def qmp_stop(ctx: Any) -> None:
    ctx.daemon.runstate.stop()


def qmp_cont(ctx: Any) -> None:
    ctx.daemon.runstate.cont()


def qmp_system_reset(ctx: Any) -> None:
    machine = ctx.daemon.machine
    if machine is not None:
        machine.reset(ShutdownCause.HOST_QMP_SYSTEM_RESET)
        return
    events.qapi_event_send_reset(ctx.daemon.events, guest=False,
                                 reason=ShutdownCause.HOST_QMP_SYSTEM_RESET)


def qmp_system_powerdown(ctx: Any) -> None:
    events.qapi_event_send_powerdown(ctx.daemon.events)
    if ctx.daemon.machine is not None:
        ctx.daemon.machine.powerdown()


def qmp_quit(ctx: Any) -> None:
    ctx.daemon.request_shutdown(ShutdownCause.HOST_QMP_QUIT)


def qmp_query_name(ctx: Any) -> NameInfo:
    return NameInfo(name=ctx.daemon.name)
