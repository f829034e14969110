"""The ``socket`` chardev: a Unix or TCP stream, as server or client.

Behaviour follows QEMU's chardev/char-socket.c:

* a server listens and serves ONE client at a time; while a client is
  connected the listener is not polled, so further clients wait in the
  kernel's backlog and are accepted when the current one leaves;
* a client connects at open; without ``reconnect`` a failure fails the
  open, with ``reconnect`` > 0 the open succeeds and the connection is
  retried every ``reconnect`` seconds, also after the peer disconnects;
* ``query-chardev`` shows ``disconnected:ADDRESS`` while no peer is
  connected and the socket's local (and for TCP the peer) address when one
  is.

Input and output obey the flow control contract of ``vmd.chardev.base``:
reading stops while the front end cannot take input, and at most
``OUTPUT_LIMIT`` bytes of output wait in the transport.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from typing import Any, cast

from vmd._generated.types import (
    ChardevSocket,
    SocketAddressLegacy,
    SocketAddressType,
    StringWrapper,
    visit_SocketAddressLegacy,
)
from vmd.chardev.base import OUTPUT_LIMIT, Chardev, ChardevError
from vmd.chardev.registry import ChardevRegistry, backend
from vmd.qmp.dispatch import outside_turn
from vmd.system import listen_fds

log = logging.getLogger(__name__)

# Output below this much in the transport (after ``write`` came up short)
# makes the backend call ``chr_writable``.
_RESUME_LEVEL = OUTPUT_LIMIT // 4
_BACKLOG = 1  # QEMU listens with a backlog of 1 too (one client at a time)
_UNIX_PATH_MAX = 108  # sizeof(sun_path) on Linux


def _strerror(error: OSError) -> str:
    if error.errno is not None:
        return os.strerror(error.errno)
    return str(error)


def _host_port(address: Any) -> str:
    """``host:port`` of a socket address, IPv6 hosts in brackets."""
    host, port = address[0], address[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def _local_unix_path(name: Any) -> str:
    """The path a Unix socket is bound to, "" when unnamed or abstract."""
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    if not isinstance(name, str) or name.startswith("\0"):
        return ""
    return name


class _Link(asyncio.Protocol):
    """The protocol of one connection; forwards to its chardev."""

    def __init__(self, owner: SocketChardev) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self.read_paused = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        # pause_writing fires once the buffer holds OUTPUT_LIMIT bytes (what
        # ``_write`` lets it reach), resume_writing once it drained.
        transport.set_write_buffer_limits(high=OUTPUT_LIMIT - 1, low=_RESUME_LEVEL)
        self.owner._link_up(self)

    def data_received(self, data: bytes) -> None:
        self.owner._link_data(self, data)

    def eof_received(self) -> bool:
        return False  # a half-closed peer is a disconnected peer, as in QEMU

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.owner._link_down(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.owner._link_drained(self)


class SocketChardev(Chardev):
    kind = "socket"

    def __init__(self, chardev_id: str, options: ChardevSocket) -> None:
        super().__init__(chardev_id)
        self._validate(options)
        self._options = options
        self._server = options.server if options.server is not None else True
        self._wait = bool(options.wait)
        self._nodelay = bool(options.nodelay)
        reconnect = options.reconnect or 0
        self._reconnect = reconnect if reconnect > 0 and not self._server else 0
        addr = options.addr
        self._passed: socket.socket | None = None
        if isinstance(addr.u, StringWrapper):
            addr = self._take_passed(addr.u.data.str, self._server)
        assert addr.u is not None
        self._is_unix = addr.type == SocketAddressType.UNIX
        self._unix: Any = addr.u.data if self._is_unix else None
        self._inet: Any = None if self._is_unix else addr.u.data
        self._loop = asyncio.get_running_loop()
        self._listener: socket.socket | None = None
        self._listening = False  # the listener is being polled
        self._created: tuple[str, int, int] | None = None  # path, dev, ino
        self._link: _Link | None = None
        self._pending: asyncio.Task[None] | None = None  # accept / connect
        self._retry: asyncio.TimerHandle | None = None
        self._first_client: asyncio.Future[None] | None = None
        self._want_writable = False
        self._connect_error_logged = False
        self._closed = False
        self._disconnected_name = self._describe_address()
        self._connected_name = ""

    # -- validation ------------------------------------------------------------

    @staticmethod
    def _validate(options: ChardevSocket) -> None:
        server = options.server if options.server is not None else True
        if server and options.reconnect is not None:
            raise ChardevError("'reconnect' option is incompatible with socket in server listen mode")
        if not server and options.wait is not None:
            raise ChardevError("'wait' option is incompatible with socket in client connect mode")
        kind = options.addr.type
        if kind == SocketAddressType.VSOCK:
            raise ChardevError(f"socket address type '{kind}' is not supported by vmd here "
                               "(unix, inet and fd)")
        unsupported = [("tls-creds", options.tls_creds is not None), ("tls-authz", options.tls_authz is not None),
                       ("telnet", bool(options.telnet)), ("tn3270", bool(options.tn3270)),
                       ("websocket", bool(options.websocket)), ("logfile", options.logfile is not None)]
        for name, used in unsupported:
            if used:
                raise ChardevError(f"the socket chardev option '{name}' is not supported by vmd")

    def _take_passed(self, spec: str, server: bool) -> SocketAddressLegacy:
        """Adopt a socket handed over at start (``fd=``): a listener for a
        server, an already connected socket for a client (as QEMU's test
        harness passes its monitor). QEMU then reports (and vmd treats) it
        by its bound address."""
        try:
            self._passed = listen_fds.take(spec, listen=server)
        except listen_fds.FdError as error:
            raise ChardevError(str(error)) from None
        name = self._passed.getsockname()
        if self._passed.family == socket.AF_UNIX:
            path = name.decode(errors="replace") if isinstance(name, bytes) else name
            wire = {"type": "unix", "data": {"path": path}}
        else:
            wire = {"type": "inet", "data": {"host": name[0], "port": str(name[1])}}
        return visit_SocketAddressLegacy(wire, None, "")

    # -- addresses --------------------------------------------------------------

    def _unix_address(self) -> str | bytes:
        path: str = self._unix.path
        if not self._unix.abstract:
            return path
        name = b"\0" + os.fsencode(path)
        if self._unix.tight is False:
            name = name.ljust(_UNIX_PATH_MAX, b"\0")
        return name

    def _describe_address(self, bound: Any = None) -> str:
        """The ``disconnected:`` form QEMU shows (``bound``: the listener's address)."""
        suffix = ",server=on" if self._server else ""
        if self._is_unix:
            extra = ""
            if self._unix.abstract:
                extra = ",abstract=on" + ("" if self._unix.tight is False else ",tight=on")  # as QEMU prints it
            return f"disconnected:unix:{self._unix.path}{extra}{suffix}"
        host, port = (bound[0], bound[1]) if bound is not None else (self._inet.host, self._inet.port)
        return f"disconnected:tcp:{host}:{port}{suffix}"

    def _target(self) -> str:
        return self._unix.path if self._is_unix else f"{self._inet.host}:{self._inet.port}"

    async def _resolve(self, passive: bool) -> list[tuple[int, Any]]:
        """The (family, sockaddr) pairs of the inet address, in order."""
        inet = self._inet
        family = socket.AF_UNSPEC
        if inet.ipv4 and not inet.ipv6:
            family = socket.AF_INET
        elif inet.ipv6 and not inet.ipv4:
            family = socket.AF_INET6
        flags = (socket.AI_PASSIVE if passive else 0) | (socket.AI_NUMERICHOST if inet.numeric else 0)
        host = inet.host or None
        try:
            try:
                # Numeric addresses resolve at once, without the resolver.
                infos = socket.getaddrinfo(host, inet.port, family, socket.SOCK_STREAM, 0,
                                           flags | socket.AI_NUMERICHOST)
            except socket.gaierror as error:
                if inet.numeric or error.errno != socket.EAI_NONAME:
                    raise
                infos = await self._loop.getaddrinfo(host, inet.port, family=family,
                                                     type=socket.SOCK_STREAM, flags=flags)
        except socket.gaierror as error:
            raise ChardevError(f"address resolution failed for {inet.host}:{inet.port}: {error.strerror}") from None
        return [(info[0], info[4]) for info in infos]

    # -- life cycle -----------------------------------------------------------------

    async def open(self) -> None:
        try:
            if self._server:
                await self._listen()
                if self._wait:
                    self._first_client = self._loop.create_future()
                    self._start_accepting()
                    async with outside_turn():
                        await self._first_client
                else:
                    self._start_accepting()
            elif self._reconnect:
                self._start_connect()
            else:
                await self._connect()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._first_client is not None and not self._first_client.done():
            self._first_client.cancel()
        self._stop_accepting()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._unlink_created()
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            self._close_transport(link.transport)
        self.set_connected(False)

    def _unlink_created(self) -> None:
        """Remove the socket file this chardev bound, unless replaced since."""
        if self._created is None:
            return
        path, dev, ino = self._created
        self._created = None
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)
        except OSError:
            pass

    def _close_transport(self, transport: asyncio.Transport) -> None:
        transport.close()  # sends what is buffered (at most OUTPUT_LIMIT) first
        if transport.get_write_buffer_size():
            # A peer that never reads must not keep it forever.
            self._loop.call_later(5.0, transport.abort)

    def filename(self) -> str:
        return self._connected_name if self.connected else self._disconnected_name

    # -- server ------------------------------------------------------------------------

    async def _listen(self) -> None:
        if self._passed is not None:
            self._listener, self._passed = self._passed, None
            if not self._is_unix:
                self._disconnected_name = self._describe_address(self._listener.getsockname())
        elif self._is_unix:
            self._listen_unix()
        else:
            await self._listen_inet()

    def _listen_unix(self) -> None:
        path = self._unix.path
        if not self._unix.abstract:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise ChardevError(f"Failed to bind socket to {path}: {_strerror(error)}") from None
            else:
                if stat.S_ISSOCK(st.st_mode):
                    os.unlink(path)  # a socket left behind (QEMU unlinks it too)
                # Anything else stays: bind fails with "Address already in use".
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self._unix_address())
            sock.listen(_BACKLOG)
        except OSError as error:
            sock.close()
            raise ChardevError(f"Failed to bind socket to {path}: {_strerror(error)}") from None
        sock.setblocking(False)
        self._listener = sock
        if not self._unix.abstract:
            st = os.stat(path)
            self._created = (path, st.st_dev, st.st_ino)

    async def _listen_inet(self) -> None:
        inet = self._inet
        addresses = await self._resolve(passive=True)
        try:
            first = int(inet.port)
        except ValueError:
            first = -1
        ports = [first]
        if first > 0 and inet.to is not None and inet.to > first:
            ports = list(range(first, inet.to + 1))
        last: OSError | None = None
        for family, sockaddr in addresses:
            for port in ports:
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((sockaddr[0], port if port >= 0 else sockaddr[1], *sockaddr[2:]))
                    sock.listen(_BACKLOG)
                except OSError as error:
                    sock.close()
                    last = error
                    if error.errno != errno.EADDRINUSE:
                        break  # another port will not help with this address
                    continue
                sock.setblocking(False)
                self._listener = sock
                self._disconnected_name = self._describe_address(sock.getsockname())
                return
        reason = _strerror(last) if last is not None else "no address to listen on"
        raise ChardevError(f"Failed to find an available port: {reason}")

    def _start_accepting(self) -> None:
        if self._closed or self._listening or self._listener is None or self._link is not None:
            return
        self._loop.add_reader(self._listener.fileno(), self._on_acceptable)
        self._listening = True

    def _stop_accepting(self) -> None:
        if self._listening and self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
        self._listening = False

    def _on_acceptable(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            # Out of descriptors and the like: try again later, not in a busy loop.
            log.warning("chardev %s: accept failed: %s", self.id, _strerror(error))
            self._stop_accepting()
            self._retry = self._loop.call_later(1.0, self._start_accepting)
            return
        # One client at a time: the next ones wait in the backlog.
        self._stop_accepting()
        self._pending = self._loop.create_task(self._adopt(conn))

    async def _adopt(self, conn: socket.socket) -> None:
        try:
            self._configure(conn)
            await self._loop.connect_accepted_socket(lambda: _Link(self), conn)
        except OSError as error:
            log.warning("chardev %s: dropping a client: %s", self.id, _strerror(error))
            conn.close()
            self._pending = None
            self._start_accepting()
            return
        except BaseException:
            conn.close()
            raise
        self._pending = None

    # -- client ------------------------------------------------------------------------

    def _start_connect(self) -> None:
        self._retry = None
        if self._closed or self._link is not None or self._pending is not None:
            return
        self._pending = self._loop.create_task(self._connect_in_background())

    async def _connect_in_background(self) -> None:
        try:
            await self._connect()
        except ChardevError as error:
            self._pending = None
            report = log.warning if not self._connect_error_logged else log.debug
            report("chardev %s: %s; retrying in %d s", self.id, error, self._reconnect)
            self._connect_error_logged = True
            self._schedule_reconnect()
            return
        self._pending = None
        self._connect_error_logged = False

    def _schedule_reconnect(self) -> None:
        if self._reconnect and not self._closed and self._retry is None:
            self._retry = self._loop.call_later(self._reconnect, self._start_connect)

    async def _connect(self) -> None:
        if self._passed is not None:
            sock, self._passed = self._passed, None
            await self._link_socket(sock)
            return
        if self._is_unix:
            candidates: list[tuple[int, Any]] = [(socket.AF_UNIX, self._unix_address())]
        else:
            candidates = await self._resolve(passive=False)
        last: OSError | None = None
        for family, sockaddr in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await self._loop.sock_connect(sock, sockaddr)
                self._configure(sock)
            except OSError as error:
                sock.close()
                last = error
                continue
            except BaseException:
                sock.close()
                raise
            await self._link_socket(sock)
            return
        reason = _strerror(last) if last is not None else "no address to connect to"
        raise ChardevError(f"Failed to connect to '{self._target()}': {reason}")

    async def _link_socket(self, sock: socket.socket) -> None:
        """Serve a connected client socket (the socket is closed on failure)."""
        try:
            await self._loop.connect_accepted_socket(lambda: _Link(self), sock)
        except BaseException:
            sock.close()
            raise

    def _configure(self, sock: socket.socket) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            if self._nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._inet is not None and self._inet.keep_alive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    # -- the connection (called by _Link) --------------------------------------------------

    def _link_up(self, link: _Link) -> None:
        transport = link.transport
        assert transport is not None
        if self._closed or self._link is not None:
            transport.abort()
            return
        self._link = link
        self._connected_name = self._describe_connection(transport)
        self._want_writable = False
        self.set_connected(True)
        if self._first_client is not None and not self._first_client.done():
            self._first_client.set_result(None)

    def _describe_connection(self, transport: asyncio.Transport) -> str:
        local = transport.get_extra_info("sockname")
        suffix = ",server=on" if self._server else ""
        if self._is_unix:
            return f"unix:{_local_unix_path(local)}{suffix}"
        peer = transport.get_extra_info("peername")
        return f"tcp:{_host_port(local)}{suffix} <-> {_host_port(peer)}"

    def _link_data(self, link: _Link, data: bytes) -> None:
        if link is self._link:
            self.deliver(data)

    def _link_down(self, link: _Link) -> None:
        if link is not self._link:
            return
        self._link = None
        self.set_connected(False)
        if self._want_writable:
            # A front end waiting to write may go on: output is dropped now.
            self._want_writable = False
            self.writable()
        if self._closed:
            return
        if self._server:
            self._start_accepting()
        else:
            self._schedule_reconnect()

    def _link_drained(self, link: _Link) -> None:
        if link is self._link and self._want_writable:
            self._want_writable = False
            self.writable()

    # -- flow control hooks -------------------------------------------------------------------

    def _write(self, data: bytes) -> int:
        link = self._link
        if link is None or link.transport is None or link.transport.is_closing():
            return len(data)  # the peer is going away: dropped, as when disconnected
        transport = link.transport
        room = OUTPUT_LIMIT - transport.get_write_buffer_size()
        taken = data[:max(room, 0)]
        if taken:
            transport.write(taken)
        if len(taken) < len(data):
            self._want_writable = True
            if not link.write_paused:
                # The transport sent part of it at once and is below its
                # limit: there is room again right away.
                self._loop.call_soon(self._link_drained, link)
        return len(taken)

    def _pause_input(self) -> None:
        link = self._link
        if link is not None and link.transport is not None and not link.read_paused:
            link.read_paused = True
            if not link.transport.is_closing():
                link.transport.pause_reading()

    def _resume_input(self) -> None:
        link = self._link
        if link is not None and link.transport is not None and link.read_paused:
            link.read_paused = False
            if not link.transport.is_closing():
                link.transport.resume_reading()


@backend("socket")
def _open_socket(chardev_id: str, options: ChardevSocket, registry: ChardevRegistry) -> Chardev:
    return SocketChardev(chardev_id, options)
