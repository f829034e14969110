"""QMP monitors: listening sockets whose clients each get a QMP session.

A QEMU socket chardev serves one client at a time; a vmd QMP monitor on a
socket serves any number of clients at once, each with its own negotiation
state, so a second tool can attach without waiting for the first to leave.
On the command line a server socket waits for its first client before the
daemon goes on (``wait=on``, QEMU's default), unless ``wait=off``. The
socket may also be one the daemon was handed at start (``fd=``, or systemd
socket activation: ``vmd.system.listen_fds``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import TYPE_CHECKING

from vmd.chardev.base import Chardev
from vmd.cli.chardev import socket_flags
from vmd.cli.config import ChardevConfig
from vmd.early_greeter import EarlyGreeter, listen_unix, unlink_stale_socket
from vmd.qmp.connection import QMPConnection
from vmd.qmp.session import QMPSession
from vmd.system import listen_fds

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
        self._address = ""  # of a passed socket, in describe()'s form

    async def start(self) -> None:
        """Start listening; register as chardev ``self.chardev.id``."""
        await self._listen()
        self.daemon.chardevs.insert(_ListenerChardev(self))

    async def wait_for_client_if_asked(self) -> None:
        """Honour ``wait=on`` for a server socket, as QEMU does at start-up."""
        if self.chardev.backend != "socket":
            return
        server, wait = socket_flags(self.chardev)
        if server and wait and not self._first_client.is_set():
            print(f"vmd: info: waiting for connection on: "
                  f"{self.describe()},server=on", file=sys.stderr, flush=True)
            await self._first_client.wait()

    @staticmethod
    def serves(chardev: ChardevConfig) -> bool:
        """Whether a control monitor on ``chardev`` is a QMPMonitor.

        Server sockets are; other chardevs carry one stream and get a
        ``QMPChardevMonitor`` as their front end instead.
        """
        return chardev.backend == "socket" and socket_flags(chardev)[0]

    def describe(self) -> str:
        """The address in QEMU's chardev filename style."""
        options = self.chardev.options
        if self._address:
            return self._address
        if "path" in options:
            return f"unix:{options['path']}"
        if "fd" in options:
            return f"fd:{options['fd']}"
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
            if "fd" in options:
                await self._serve_passed(listen_fds.take(options["fd"]))
            elif "path" in options:
                path = options["path"]
                passed = listen_fds.take_bound_to(path)
                if passed is not None:
                    await self._serve_passed(passed)
                else:
                    self._unix_path = path  # ours: removed at close
                    if not await self._adopt_early(path):
                        unlink_stale_socket(path)
                        self._server = await loop.create_unix_server(
                            self._new_connection, sock=socket.socket(fileno=listen_unix(path).detach()))
            else:
                host = options.get("host") or "0.0.0.0"
                port = int(options.get("port", "0"))
                self._server = await loop.create_server(
                    self._new_connection, host, port, reuse_address=True,
                    family=socket.AF_UNSPEC)
        except listen_fds.FdError as error:
            raise MonitorError(f"-chardev {self.chardev.id}: {error}") from None
        except OSError as error:
            raise MonitorError(
                f"Failed to bind socket to {self.describe()}: "
                f"{error.strerror or error}") from None

    async def _serve_passed(self, sock: socket.socket) -> None:
        """Serve on a socket the daemon was handed; it is not ours to unlink.

        Like QEMU, report it by its bound address from then on.
        """
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            self._address = f"unix:{name.decode(errors='replace') if isinstance(name, bytes) else name}"
            self._server = await asyncio.get_running_loop().create_unix_server(self._new_connection, sock=sock)
        else:
            self._address = f"tcp:{name[0]}:{name[1]}"
            self._server = await asyncio.get_running_loop().create_server(self._new_connection, sock=sock)

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


class _ListenerChardev(Chardev):
    """How a QMP monitor's listening socket shows up in ``query-chardev``."""

    kind = "socket"

    def __init__(self, monitor: QMPMonitor) -> None:
        super().__init__(monitor.chardev.id)
        self._monitor = monitor
        self.frontend = monitor  # type: ignore[assignment]  # always busy

    @property
    def frontend_open(self) -> bool:
        return bool(self._monitor.connections)

    def filename(self) -> str:
        prefix = "" if self._monitor.connections else "disconnected:"
        return f"{prefix}{self._monitor.describe()},server=on"

    async def close(self) -> None:
        await self._monitor.close()
