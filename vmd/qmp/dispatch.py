"""Running one QMP request: QEMU's qmp_dispatch().

The dispatcher checks the request envelope (``execute``/``exec-oob``,
``arguments``, ``id``), finds the command, lets the generated marshaller
check the arguments and call the handler, and builds the response. It knows
nothing about sockets or negotiation; ``session.QMPSession`` adds those.

``CommandTurns`` is QEMU's monitor dispatcher: in-band commands of all
monitors run one at a time, whoever waits longest goes next (round robin),
so a command that yields (``blockdev-add`` opening images) never sees
another client's command change the daemon half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Mapping
from typing import Any

from vmd.qapi_runtime import CommandDef
from vmd.qmp.errors import COMMAND_NOT_FOUND, QMPError

log = logging.getLogger(__name__)

Response = dict[str, Any]


class Dispatcher:
    """The table of commands and the handlers that implement them."""

    def __init__(self, commands: Mapping[str, CommandDef],
                 handlers: Mapping[str, Callable[..., Any]]) -> None:
        self.commands = commands
        self._handlers = handlers

    def dispatch(self, request: Any, ctx: Any, *, oob_allowed: bool,
                 available: Container[str] | None = None
                 ) -> Response | Awaitable[Response]:
        """Run ``request``; return the response, or an awaitable for it.

        ``available`` restricts the commands that exist (negotiation mode).
        A coroutine command returns an awaitable; everything else runs now.
        """
        if not isinstance(request, dict):
            return error_response(QMPError("QMP input must be a JSON object"))
        try:
            name, oob = check_envelope(request, oob_allowed)
            command = self._find(name, available)
            if oob and not command.allow_oob:
                raise QMPError(f"The command {name} does not support OOB")
            arguments = request.get("arguments", {})
            handler = self._handlers[command.handler_name]
            if command.coroutine:
                return self._run_coroutine(command, handler, ctx, arguments,
                                           request)
            result = command.marshal(handler, ctx, arguments)
        except QMPError as error:
            return _with_id(error_response(error), request)
        except Exception as error:  # a bug must not take the daemon down
            return _with_id(internal_error(request, error), request)
        return _with_id({"return": result}, request)

    def _find(self, name: str, available: Container[str] | None) -> CommandDef:
        command = self.commands.get(name)
        if command is None or (available is not None
                               and name not in available):
            raise QMPError(f"The command {name} has not been found",
                           COMMAND_NOT_FOUND)
        return command

    async def _run_coroutine(self, command: CommandDef,
                             handler: Callable[..., Any], ctx: Any,
                             arguments: dict[str, Any],
                             request: dict[str, Any]) -> Response:
        try:
            result = await command.marshal(handler, ctx, arguments)
        except QMPError as error:
            return _with_id(error_response(error), request)
        except Exception as error:
            return _with_id(internal_error(request, error), request)
        return _with_id({"return": result}, request)


class CommandTurns:
    """Who may run an in-band command now (QEMU's monitor_qmp_dispatcher_co).

    A client with a request calls ``try_begin``; if another command is
    running, or other clients have waited for a turn longer, it is put in
    line and its ``wake`` callback is called (soon, on the loop) when its
    turn comes. ``end`` finishes a command; ``leave`` drops a client that
    went away from the line. OOB commands never take a turn.
    """

    def __init__(self) -> None:
        self._busy = False
        #: Clients waiting for a turn, in arrival order, with their wake-up.
        self._line: dict[object, Callable[[], None]] = {}
        self._woken: object | None = None

    def try_begin(self, client: object, wake: Callable[[], None]) -> bool:
        if self._busy or (self._line and next(iter(self._line)) is not client):
            self._line.setdefault(client, wake)
            return False
        self._line.pop(client, None)
        self._busy = True
        return True

    def end(self) -> None:
        self._busy = False
        self._wake_next()

    def leave(self, client: object) -> None:
        if self._line.pop(client, None) is not None and not self._busy:
            self._wake_next()

    def start_task(self, command: Awaitable[None]) -> asyncio.Future[None]:
        """Run a command that yields as a task that can find these turns
        (``outside_turn``)."""
        token = _CURRENT_TURNS.set(self)
        try:
            return asyncio.ensure_future(command)
        finally:
            _CURRENT_TURNS.reset(token)

    async def _take_back(self) -> None:
        key = object()
        woken = asyncio.Event()
        while not self.try_begin(key, woken.set):
            await woken.wait()
            woken.clear()

    def _wake_next(self) -> None:
        if self._line:
            asyncio.get_running_loop().call_soon(next(iter(self._line.values())))


_CURRENT_TURNS: contextvars.ContextVar[CommandTurns | None] = contextvars.ContextVar(
    "vmd_command_turns", default=None)


@contextlib.asynccontextmanager
async def outside_turn() -> AsyncIterator[None]:
    """Let other clients' commands run while the current command waits for
    something outside the daemon (a chardev's first client with
    ``wait: true``; QEMU freezes there), then take the turn back."""
    turns = _CURRENT_TURNS.get()
    if turns is None:
        yield
        return
    turns.end()
    try:
        yield
    finally:
        await turns._take_back()


def check_envelope(request: dict[str, Any], oob_allowed: bool
                   ) -> tuple[str, bool]:
    """Validate the request's top-level members (qmp_dispatch_check_obj).

    Returns the command name and whether it came as ``exec-oob``.
    """
    exec_key: str | None = None
    for key, value in request.items():
        if key == "execute" or (key == "exec-oob" and oob_allowed):
            if not isinstance(value, str):
                raise QMPError(f"QMP input member '{key}' must be a string")
            if exec_key is not None:
                raise QMPError(
                    f"QMP input member '{key}' clashes with '{exec_key}'")
            exec_key = key
        elif key == "arguments":
            if not isinstance(value, dict):
                raise QMPError(
                    "QMP input member 'arguments' must be an object")
        elif key != "id":
            raise QMPError(f"QMP input member '{key}' is unexpected")
    if exec_key is None:
        raise QMPError("QMP input lacks member 'execute'")
    return request[exec_key], exec_key == "exec-oob"


def is_oob_request(request: Any) -> bool:
    """Whether QEMU would run this request out of band (qmp_is_oob)."""
    return (isinstance(request, dict) and "exec-oob" in request
            and "execute" not in request)


def error_response(error: QMPError) -> Response:
    return {"error": error.to_wire()}


def internal_error(request: dict[str, Any], error: Exception) -> Response:
    """A handler raised something unexpected: log it, report it, go on."""
    log.error("command %r failed unexpectedly", request.get("execute")
              or request.get("exec-oob"), exc_info=error)
    return error_response(QMPError(f"internal error: {error}"))


def _with_id(response: Response, request: dict[str, Any]) -> Response:
    if "id" in request:
        response["id"] = request["id"]
    return response
