"""QMP monitors: listening sockets whose clients each get a QMP session.

A QEMU socket chardev serves one client at a time; a vmd QMP monitor on a
socket serves any number of clients at once, each with its own negotiation
state, so a second tool can attach without waiting for the first to leave.
On the command line a server socket waits for its first client before the
daemon goes on (``wait=on``, QEMU's default), unless ``wait=off``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import sys
from typing import TYPE_CHECKING

from vmd.cli.chardev import socket_flags
from vmd.cli.config import ChardevConfig
from vmd.early_greeter import EarlyGreeter, unlink_stale_socket
from vmd.qmp.connection import QMPConnection
from vmd.qmp.session import QMPSession

if TYPE_CHECKING:
    from vmd.daemon import Daemon

log = logging.getLogger(__name__)


class MonitorError(Exception):
    """A monitor could not be set up; the message says why."""


class QMPMonitor:
    """One ``-qmp``/``-mon mode=control`` monitor and its clients."""

    def __init__(self, daemon: Daemon, chardev: ChardevConfig,
                 early: EarlyGreeter | None = None) -> None:
        self.daemon = daemon
        self.chardev = chardev
        self._early = early
        self.connections: set[QMPConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._first_client = asyncio.Event()
        self._unix_path: str | None = None

    async def start(self) -> None:
        """Start listening (or attach to stdio)."""
        backend = self.chardev.backend
        if backend == "socket":
            await self._listen()
        elif backend == "stdio":
            await self._attach_stdio()
        else:
            raise MonitorError(
                f"chardev '{self.chardev.id}': backend '{backend}' is not "
                "supported for QMP monitors yet (use socket or stdio)")

    async def wait_for_client_if_asked(self) -> None:
        """Honour ``wait=on`` for a server socket, as QEMU does at start-up."""
        if self.chardev.backend != "socket":
            return
        server, wait = socket_flags(self.chardev)
        if server and wait and not self._first_client.is_set():
            print(f"vmd: info: waiting for connection on: "
                  f"{self.describe()},server=on", file=sys.stderr, flush=True)
            await self._first_client.wait()

    def describe(self) -> str:
        """The address in QEMU's chardev filename style."""
        options = self.chardev.options
        if "path" in options:
            return f"unix:{options['path']}"
        return f"tcp:{options.get('host', '')}:{options.get('port', '')}"

    def yank_id(self) -> str:
        return self.chardev.id

    async def close(self) -> None:
        """Stop accepting clients; let connected clients' output drain."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()
        if self._unix_path is not None:
            unlink_stale_socket(self._unix_path)

    def _new_connection(self, greeted: bool = False) -> QMPConnection:
        session = QMPSession(self.daemon, self.daemon.dispatcher)
        connection = QMPConnection(session, self.connections.discard, greeted)
        self.connections.add(connection)
        self._first_client.set()
        return connection

    async def _listen(self) -> None:
        options = self.chardev.options
        server, _wait = socket_flags(self.chardev)
        if not server:
            raise MonitorError(
                f"chardev '{self.chardev.id}': QMP client sockets are not "
                "supported yet; use server=on")
        loop = asyncio.get_running_loop()
        try:
            if "path" in options:
                path = options["path"]
                self._unix_path = path
                if not await self._adopt_early(path):
                    unlink_stale_socket(path)
                    self._server = await loop.create_unix_server(
                        self._new_connection, path)
            else:
                host = options.get("host") or "0.0.0.0"
                port = int(options.get("port", "0"))
                self._server = await loop.create_server(
                    self._new_connection, host, port, reuse_address=True,
                    family=socket.AF_UNSPEC)
        except OSError as error:
            raise MonitorError(
                f"Failed to bind socket to {self.describe()}: "
                f"{error.strerror or error}") from None

    async def _adopt_early(self, path: str) -> bool:
        """Take over the socket (and clients) the early greeter set up."""
        taken = self._early.take(path) if self._early is not None else None
        if taken is None:
            return False
        loop = asyncio.get_running_loop()
        listener, clients = taken
        self._server = await loop.create_unix_server(
            self._new_connection, sock=socket.socket(fileno=listener.detach()))
        for client in clients:
            await loop.connect_accepted_socket(
                lambda: self._new_connection(greeted=True),
                sock=socket.socket(fileno=client.detach()))
        return True

    async def _attach_stdio(self) -> None:
        for stream in (sys.stdin, sys.stdout):
            mode = os.fstat(stream.fileno()).st_mode
            if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
                    or stat.S_ISCHR(mode)):
                raise MonitorError(
                    "-qmp stdio needs stdin and stdout to be pipes, sockets "
                    "or terminals, not files")
        loop = asyncio.get_running_loop()
        connection = self._new_connection()
        transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(os.dup(sys.stdout.fileno()), "wb"))
        reader = _StdioReader(connection, transport)
        await loop.connect_read_pipe(
            lambda: reader, os.fdopen(os.dup(sys.stdin.fileno()), "rb"))


class _StdioReader(asyncio.Protocol):
    """Joins stdin and stdout into the one transport a connection expects."""

    def __init__(self, connection: QMPConnection,
                 output: asyncio.BaseTransport) -> None:
        self._connection = connection
        self._output = output

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connection.connection_made(_JoinedTransport(transport,
                                                          self._output))

    def data_received(self, data: bytes) -> None:
        self._connection.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection.connection_lost(exc)


class _JoinedTransport(asyncio.Transport):
    """A read pipe and a write pipe presented as one transport."""

    def __init__(self, reader: asyncio.BaseTransport,
                 writer: asyncio.BaseTransport) -> None:
        super().__init__()
        self._reader = reader
        self._writer = writer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._writer.write(data)  # type: ignore[attr-defined]

    def get_write_buffer_size(self) -> int:
        return self._writer.get_write_buffer_size()  # type: ignore[attr-defined]

    def set_write_buffer_limits(self, high: int | None = None,
                                low: int | None = None) -> None:
        self._writer.set_write_buffer_limits(high, low)  # type: ignore[attr-defined]

    def pause_reading(self) -> None:
        self._reader.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        self._reader.resume_reading()  # type: ignore[attr-defined]

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    def abort(self) -> None:
        self.close()
