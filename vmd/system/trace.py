"""Trace events, QEMU's ``-trace`` and ``-d trace:PATTERN``.

A trace event is a named point in the code that, once enabled, prints one
line ``name args`` through the log (stderr, the journal or the ``-D`` file),
as QEMU's "log" trace backend does. Events are off by default and cost one
attribute test each while off. Names follow QEMU's where QEMU has the same
point (``runstate_set``, ``monitor_qmp_cmd_in_band``, ``qmp_enter_CMD`` and
``qmp_exit_CMD`` for every QMP command); vmd's own start with ``vmd_``.

Patterns use shell wildcards (``qmp_*``) and a leading ``-`` disables, as in
QEMU. Events are defined at import time, so the table is complete before
the command line is applied.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from vmd.record import Record

_log = logging.getLogger("vmd.trace")


class TraceError(Exception):
    """A ``-trace``/``-d`` argument vmd cannot apply."""


class TraceEvent(Record):
    """One event and whether it prints."""

    __slots__ = ("name", "enabled")

    def __init__(self, name: str, enabled: bool = False) -> None:
        self.name = name
        self.enabled = enabled


_EVENTS: dict[str, TraceEvent] = {}

#: True while any QMP command event is on (the one test per command when off).
qmp_traced = False
_QMP_PREFIXES = ("qmp_enter_", "qmp_exit_", "monitor_qmp_cmd_")


def define(name: str) -> TraceEvent:
    """Add an event to the table (idempotent)."""
    return _EVENTS.setdefault(name, TraceEvent(name))


def define_commands(commands: Iterable[str]) -> None:
    """``qmp_enter_CMD``/``qmp_exit_CMD`` for each QMP command (dashes as underscores)."""
    for command in commands:
        base = command.replace("-", "_")
        define(f"qmp_enter_{base}")
        define(f"qmp_exit_{base}")


def names() -> list[str]:
    """All event names, for ``-trace help``."""
    return sorted(_EVENTS)


def enable(pattern: str) -> list[str]:
    """Apply one pattern (``-name`` disables); return the warnings to print."""
    state = not pattern.startswith("-")
    pattern = pattern.lstrip("-")
    matched = [event for event in _EVENTS.values() if fnmatch.fnmatchcase(event.name, pattern)]
    for event in matched:
        event.enabled = state
    global qmp_traced
    qmp_traced = any(e.enabled for e in _EVENTS.values() if e.name.startswith(_QMP_PREFIXES))
    if not matched and not any(c in pattern for c in "*?["):
        return [f"trace event '{pattern}' does not exist"]
    return []


def enable_from_file(path: str) -> list[str]:
    """``-trace events=FILE``: one pattern per line, ``#`` comments."""
    try:
        with open(path, encoding="utf-8") as events_file:
            lines = events_file.read().splitlines()
    except OSError as error:
        raise TraceError(f"error opening trace events file '{path}': {error.strerror}") from None
    warnings: list[str] = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            warnings += enable(line)
    return warnings


def event(name: str, *args: object) -> None:
    """Print event ``name`` with ``args`` if it is enabled."""
    if _EVENTS[name].enabled:
        _log.debug(" ".join([name, *map(str, args)]))


Reply = TypeVar("Reply")


def command_enter(request: Any) -> None:
    """``monitor_qmp_cmd_*`` and ``qmp_enter_CMD`` for a request about to run."""
    if not isinstance(request, dict):
        return
    oob = "exec-oob" in request
    where = "monitor_qmp_cmd_out_of_band" if oob else "monitor_qmp_cmd_in_band"
    event(where, json.dumps(request["id"]) if "id" in request else "")
    name = request.get("exec-oob" if oob else "execute")
    if isinstance(name, str) and is_enabled(f"qmp_enter_{name.replace('-', '_')}"):
        event(f"qmp_enter_{name.replace('-', '_')}", json.dumps(request.get("arguments", {})))


def command_exit(request: Any, reply: Reply | Awaitable[Reply]) -> Reply | Awaitable[Reply]:
    """``qmp_exit_CMD result succeeded`` once the reply is there."""
    if not isinstance(request, dict):
        return reply
    name = request.get("exec-oob", request.get("execute"))
    if not isinstance(name, str) or not is_enabled(f"qmp_exit_{name.replace('-', '_')}"):
        return reply
    event_name = f"qmp_exit_{name.replace('-', '_')}"

    def report(response: Any) -> None:
        failed = isinstance(response, dict) and "error" in response
        result = response.get("error" if failed else "return") if isinstance(response, dict) else response
        event(event_name, json.dumps(result), 0 if failed else 1)

    if not inspect.isawaitable(reply):
        report(reply)
        return reply

    async def later() -> Reply:
        response = await reply
        report(response)
        return response
    return later()


def is_enabled(name: str) -> bool:
    found = _EVENTS.get(name)
    return found is not None and found.enabled


for _name in ("runstate_set", "qemu_system_shutdown_request", "qemu_system_powerdown_request",
              "monitor_qmp_cmd_in_band", "monitor_qmp_cmd_out_of_band",
              "vmd_sd_notify", "vmd_signal", "vmd_stop_begin", "vmd_stop_guest_wait"):
    define(_name)
