"""A small blocking QMP client for ``vmdctl`` (works with QEMU too).

vmdctl runs one short conversation at a time, so plain sockets suffice:
no event loop, no dependency beyond the standard library. QMP servers end
every message with a newline (vmd and QEMU alike), so messages are read
line by line; events that arrive while a reply is awaited are kept for
``wait_for_event``.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any


class QMPClientError(Exception):
    """The server answered with an error, or the conversation failed."""


class QMPClient:
    """One negotiated QMP connection over a Unix socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as error:
            self._sock.close()
            raise QMPClientError(f"cannot connect to {path}: {error.strerror or error}") from None
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        self.greeting = self._read()
        if "QMP" not in self.greeting:
            raise QMPClientError(f"{path} is not a QMP socket")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command``; its ``return`` value, or QMPClientError with the server's text."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode())
        while True:
            message = self._read()
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise QMPClientError(message["error"].get("desc", "error"))
            else:
                return message.get("return")

    def wait_for_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The first event ``name`` within ``timeout`` s; None on timeout or when the server closes."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name:
                    self.events.remove(event)
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                self.events.append(self._read())
            except (TimeoutError, EOFError):
                return None

    def _read(self) -> dict[str, Any]:
        """The next message; a timeout leaves a partial line buffered."""
        while b"\n" not in self._buffer:
            data = self._sock.recv(65536)
            if not data:
                raise EOFError("the QMP server closed the connection")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message
