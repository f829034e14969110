"""One QMP client's protocol state, without I/O.

Each connection starts in capabilities negotiation mode, where only
``qmp_capabilities`` exists and every other command is answered with
QEMU's fixed CommandNotFound text. ``qmp_capabilities`` switches the session
to command mode and may enable out-of-band execution. Events are delivered
only in command mode.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from vmd.qmp.dispatch import Dispatcher, Response
from vmd.qmp.errors import COMMAND_NOT_FOUND, QMPError
from vmd.qmp.json_stream import Message
from vmd.system import trace

if TYPE_CHECKING:
    from vmd.daemon import Daemon

NEGOTIATION_COMMANDS = frozenset({"qmp_capabilities"})
NEGOTIATION_ERROR = "Expecting capabilities negotiation with 'qmp_capabilities'"


class QMPSession:
    """Negotiation state of one client; the ``ctx`` that handlers receive."""

    def __init__(self, daemon: Daemon, dispatcher: Dispatcher,
                 offer_oob: bool = True) -> None:
        self.daemon = daemon
        self._dispatcher = dispatcher
        self.offer_oob = offer_oob
        self.negotiating = True
        self.oob_enabled = False

    def greeting(self) -> dict[str, Any]:
        """The message sent as soon as a client connects."""
        capabilities = ["oob"] if self.offer_oob else []
        return {"QMP": {"version": self.daemon.version_info(),
                        "capabilities": capabilities}}

    def handle(self, message: Message) -> Response | Awaitable[Response]:
        """Answer one input message (or return an awaitable answer)."""
        if message.error is not None:
            return {"error": QMPError(message.error).to_wire()}
        if trace.qmp_traced:
            trace.command_enter(message.value)
            return trace.command_exit(message.value, self._answer(message.value))
        return self._answer(message.value)

    def _answer(self, request: Any) -> Response | Awaitable[Response]:
        if not self.negotiating:
            return self._dispatcher.dispatch(
                request, self, oob_allowed=self.oob_enabled)
        response = self._dispatcher.dispatch(
            request, self, oob_allowed=False,
            available=NEGOTIATION_COMMANDS)
        assert isinstance(response, dict), "qmp_capabilities is synchronous"
        error = response.get("error")
        if error is not None and error["class"] == COMMAND_NOT_FOUND:
            error["desc"] = NEGOTIATION_ERROR
        return response

    def negotiate(self, enable: list[str] | None) -> None:
        """Leave negotiation mode (the body of ``qmp_capabilities``)."""
        if not self.negotiating:
            raise QMPError(
                "Capabilities negotiation is already complete, command ignored",
                COMMAND_NOT_FOUND)
        for capability in enable or []:
            if capability == "oob" and not self.offer_oob:
                raise QMPError("Capability oob not available")
        self.oob_enabled = "oob" in (enable or [])
        self.negotiating = False
