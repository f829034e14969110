"""An NBD server on the event loop: named exports of block nodes.

``NBDServer`` listens on a Unix or TCP socket. Each connection runs the
handshake of ``protocol.ServerConnection``, then serves requests
concurrently: each checked request starts at once, in the receive loop, and
one that must wait (for the disk, a lock, a drained section) goes on as a
task of its own; one that needs no wait (a read the page cache serves) is
answered without a task. Replies go out in whatever order requests finish
(each request's chunks are queued together,
so replies never interleave; the replies queued in one turn of the event
loop go out in one gathered write). The receive loop stops
reading while a client has ``MAX_REQUESTS`` requests or ``MAX_BYTES`` of
data in flight, so a client cannot make the server buffer more than that
(plus one request); a task holds its share until the reply is written.

A client that goes away costs the requests it already had in flight, whose
replies are dropped; requests not yet started are skipped.

An export may offer dirty bitmaps (``qemu:dirty-bitmap:NAME``): they are
busy while exported, so nobody changes them under a client; a block
status request answers one chunk per context the client chose.

An export reaches its node through a ``BlockBackend`` (a root edge holding
read, and write when writable, sharing all but resize, as QEMU's exports
do), so a snapshot or a job's pivot moves the export with the edge; each
request waits while the backend is drained and counts as in flight.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import types
from collections.abc import Coroutine, Generator, Sequence
from contextlib import suppress
from typing import Any

from vmd.block.backend import BlockBackend
from vmd.block.dirty_bitmap import DirtyBitmap
from vmd.block.nbd import protocol as p
from vmd.block.node import BlockNode, Status, block_status_above
from vmd.block.perm import NONE, Perm
from vmd.errors import QMPError
from vmd.memory_cap import CAP, Holder

log = logging.getLogger(__name__)

#: Requests in flight per client (QEMU's MAX_NBD_REQUESTS).
MAX_REQUESTS = 16
#: Read/write bytes in flight per client; one request is always admitted.
MAX_BYTES = 64 << 20
# One read takes up to a whole 1 MiB write request and more; small reads
# cost a loop iteration and a copy each (measured: 256 KiB reads left
# sequential writes at 0.6x of QEMU, 4 MiB brings them level).
_READ_SIZE = 4 << 20

Address = str | tuple[str, int]

_READ, _WRITE = p.Cmd.READ, p.Cmd.WRITE  # module globals: found sooner than Cmd's attributes

#: What an export holds on its node: read, and write when writable; others
#: may do anything but resize it while it is exported.
EXPORT_PERM = Perm.CONSISTENT_READ
EXPORT_SHARED = Perm.CONSISTENT_READ | Perm.WRITE | Perm.WRITE_UNCHANGED


class Export:
    """One named export of the node under ``backend``."""

    def __init__(self, name: str, backend: BlockBackend, writable: bool = False,
                 description: str | None = None, bitmaps: list[DirtyBitmap] | None = None) -> None:
        self.name = name
        self.backend = backend
        self.writable = writable
        self.description = description
        self.bitmaps = bitmaps or []
        for bitmap in self.bitmaps:
            bitmap.busy = True
        # As in QEMU, the size is fixed while the export exists.
        self.size = backend.node.total_size
        self.clients: set[_Client] = set()

    @classmethod
    def of(cls, name: str, node: BlockNode, *, writable: bool = False, description: str | None = None,
           registry: list[BlockBackend] | None = None, bitmaps: list[DirtyBitmap] | None = None) -> Export:
        """An export of ``node`` holding QEMU's export permissions on it
        (blk_exp_add, nbd_export_create); raises QMPError on a conflict."""
        backend = BlockBackend(EXPORT_PERM | (Perm.WRITE if writable else NONE), EXPORT_SHARED, registry=registry)
        backend.attach(node)
        return cls(name, backend, writable=writable, description=description, bitmaps=bitmaps)

    @property
    def node(self) -> BlockNode:
        """The node exported now (it changes when the edge is moved)."""
        return self.backend.node

    def info(self) -> p.ExportInfo:
        return p.ExportInfo(
            name=self.name, size=self.size, read_only=not self.writable,
            description=self.description,
            min_block=max(1, self.node.request_alignment),
            max_block=p.MAX_PAYLOAD,
            # Fast zeroing is offered; requests the node cannot do fast fail
            # at once with ENOTSUP, as the specification allows.
            fast_zero=True,
            bitmaps=tuple(bitmap.name or "" for bitmap in self.bitmaps))

    def detach(self) -> None:
        """Let go of the node and the bitmaps."""
        self.backend.detach()
        for bitmap in self.bitmaps:
            bitmap.busy = False
        self.bitmaps = []


class NBDServer:
    """A listening socket and the exports it offers."""

    def __init__(self, max_connections: int = 0) -> None:
        self.max_connections = max_connections
        self.exports: dict[str, Export] = {}
        self._servers: list[asyncio.Server] = []
        self._clients: set[_Client] = set()
        self._unix_path: str | None = None
        self._room = asyncio.Condition()

    # -- catalog (protocol.Catalog) ------------------------------------------------

    def find_export(self, name: str) -> p.ExportInfo | None:
        export = self.exports.get(name)
        return export.info() if export is not None else None

    def list_exports(self) -> Sequence[p.ExportInfo]:
        return [export.info() for export in self.exports.values()]

    # -- life cycle ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._servers)

    async def start(self, address: Address) -> None:
        """Listen on a Unix socket path or a (host, port) pair."""
        try:
            if isinstance(address, str):
                server = await asyncio.start_unix_server(self._accept, path=address, limit=_READ_SIZE)
                self._unix_path = address
            else:
                host, port = address
                server = await asyncio.start_server(self._accept, host=host, port=port,
                                                    reuse_address=True, limit=_READ_SIZE)
        except OSError as error:
            where = f" to {address}" if isinstance(address, str) else ""
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise QMPError(f"Failed to bind socket{where}: {reason}") from None
        self._servers.append(server)

    def sockets(self) -> list[socket.socket]:
        return [sock for server in self._servers for sock in server.sockets]

    async def stop(self) -> list[Export]:
        """Stop listening, disconnect every client, drop every export."""
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._unix_path is not None:
            with suppress(OSError):
                os.unlink(self._unix_path)
            self._unix_path = None
        await self._disconnect(list(self._clients))
        removed = list(self.exports.values())
        for export in removed:
            export.detach()
        self.exports.clear()
        return removed

    # -- exports -------------------------------------------------------------------

    def add_export(self, export: Export) -> None:
        if export.name in self.exports:
            raise QMPError(f"NBD server already has export named '{export.name}'")
        self.exports[export.name] = export

    async def remove_export(self, name: str) -> Export:
        """Withdraw an export and disconnect its clients."""
        export = self.exports.pop(name)
        await self._disconnect(list(export.clients))
        export.detach()
        return export

    async def _disconnect(self, clients: list[_Client]) -> None:
        for client in clients:
            client.abort()
        async with self._room:
            self._room.notify_all()
        for client in clients:
            await client.finished.wait()

    # -- connections -----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(self, reader, writer)
        self._clients.add(client)
        try:
            if self.max_connections:
                # Like QEMU, a client over the limit waits for a free slot.
                async with self._room:
                    await self._room.wait_for(lambda: self._serving() < self.max_connections
                                              or client.aborted)
            if not client.aborted:
                client.serving = True
                await client.run()
        finally:
            self._clients.discard(client)
            if client.export is not None:
                client.export.clients.discard(client)
            await client.close()
            async with self._room:
                self._room.notify_all()

    def _serving(self) -> int:
        return sum(1 for client in self._clients if client.serving)


@types.coroutine
def _go_on(coro: Coroutine[Any, Any, None], waiting_for: Any) -> Generator[Any, None, None]:
    """The rest of a request coroutine that was started by hand and had to wait.

    As a task's own first step, this hands the task what the coroutine waits
    for (a future, or None for a bare yield); once that is done, the
    coroutine goes on inside the task, where its ``await`` sees the result.
    (Python 3.12's eager tasks do the same.) Request tasks are never
    cancelled: a client's requests are waited for when it goes away.
    """
    yield waiting_for
    yield from coro  # type: ignore[misc]  # a started coroutine, resumed


class _Client:
    """One connection: the receive loop and its request tasks."""

    def __init__(self, server: NBDServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        # Kept: asyncio.get_running_loop() costs a getpid() system call.
        self._event_loop = asyncio.get_running_loop()
        #: Up to this many unsent reply bytes the transport is not paused
        #: (it pauses above its high-water mark, resumes at this one).
        self._low_water = writer.transport.get_write_buffer_limits()[0]
        self._transport = writer.transport
        self.conn = p.ServerConnection(server)
        self.export: Export | None = None
        self.serving = False
        self.aborted = False
        self.finished = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._outgoing: list[bytes | memoryview] = []
        self._requests = 0
        self._bytes = 0
        self._capacity = asyncio.Event()
        self._capacity.set()
        #: What this client makes vmd hold, against the daemon-wide cap.
        self.holder = Holder("NBD client", self._held, self.abort)
        CAP.add(self.holder)

    def abort(self) -> None:
        """Hang up now (export removed, server stopped)."""
        self.aborted = True
        self.writer.transport.abort()
        self._capacity.set()

    async def run(self) -> None:
        try:
            await self._loop()
        except (ConnectionError, OSError) as error:
            log.debug("NBD client lost: %s", error)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        self.aborted = True
        CAP.remove(self.holder)
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        self.finished.set()

    def _held(self) -> int:
        """Request and reply bytes in flight, and replies the client has not read."""
        return self._bytes + self.writer.transport.get_write_buffer_size()

    async def _send(self, data: bytes) -> None:
        if data and not self.writer.is_closing():
            self.writer.write(data)
            await self.writer.drain()

    async def _loop(self) -> None:
        conn = self.conn
        await self._send(conn.data_to_send())
        while not self.aborted:
            if not self._capacity.is_set():
                await self._capacity.wait()
            event = conn.next_event()
            if output := conn.data_to_send():
                await self._send(output)
            if event is p.NEED_DATA:
                data = await self.reader.read(_READ_SIZE)
                conn.receive_data(data)
            elif isinstance(event, p.Request):
                self._admit(event)
            elif isinstance(event, p.Ready):
                export = self.server.exports.get(event.export.name)
                if export is None:
                    return
                self.export = export
                export.clients.add(self)
            elif isinstance(event, p.Closed):
                if not event.clean:
                    log.debug("NBD client dropped: %s", event.reason)
                return

    # -- requests ------------------------------------------------------------------

    def _admit(self, request: p.Request) -> None:
        cost = request.length if request.command in p.DATA_COMMANDS else 0
        self._requests += 1
        self._bytes += cost
        if self._requests >= MAX_REQUESTS or self._bytes >= MAX_BYTES:
            self._capacity.clear()
        if CAP.check(self.holder):
            return
        coro = self._serve(request, cost)
        try:
            waiting_for = coro.send(None)  # run it now, up to its first wait
        except StopIteration:
            return  # served without a wait: no task needed
        task = self._event_loop.create_task(_go_on(coro, waiting_for))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: p.Request, cost: int) -> None:
        transport = self._transport
        try:
            if self.aborted or transport.is_closing():
                return
            assert self.export is not None
            backend = self.export.backend
            if not backend.try_begin():
                await backend.request_begin()
            try:
                reply = await self._execute(request)
            except OSError as error:
                code = p.nbd_error(error.errno or errno.EIO)
                reply = [self.conn.reply_error(request, code, os.strerror(error.errno or errno.EIO))]
            except QMPError as error:
                reply = [self.conn.reply_error(request, p.EIO, error.desc)]
            finally:
                backend.request_end()
            if not transport.is_closing():
                self._queue_reply(reply)
                # drain() waits only while writing is paused; most replies
                # find it running and need no coroutine for that.
                if transport.get_write_buffer_size() > self._low_water:
                    await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._requests -= 1
            self._bytes -= cost
            if self._requests < MAX_REQUESTS and self._bytes < MAX_BYTES:
                self._capacity.set()

    def _queue_reply(self, reply: list[bytes | memoryview]) -> None:
        """Send ``reply`` with the others finished in this turn of the loop."""
        if not self._outgoing:
            self._event_loop.call_soon(self._send_replies)
        self._outgoing += reply

    def _send_replies(self) -> None:
        replies, self._outgoing = self._outgoing, []
        if not self.writer.is_closing():
            self.writer.writelines(replies)
            CAP.check(self.holder)

    async def _execute(self, request: p.Request) -> list[bytes | memoryview]:
        assert self.export is not None
        node = self.export.node
        command = request.command
        fua = bool(request.flags & p.CMD_FLAG_FUA)
        if command == _READ:
            if fua:
                await node.flush()
            return await self._read(request)
        if command == _WRITE:
            assert request.data is not None
            await node.write(request.offset, request.data)
        elif command == p.Cmd.WRITE_ZEROES:
            if request.flags & p.CMD_FLAG_FAST_ZERO and not getattr(node, "fast_zeroes", False):
                return [self.conn.reply_error(request, p.ENOTSUP, "writing to file failed")]
            await node.write_zeroes(request.offset, request.length,
                                    may_unmap=not request.flags & p.CMD_FLAG_NO_HOLE)
        elif command == p.Cmd.TRIM:
            await node.discard(request.offset, request.length)
        elif command == p.Cmd.FLUSH:
            fua = True
        # NBD_CMD_CACHE is a hint; nodes have no cache to fill, so it succeeds.
        elif command == p.Cmd.BLOCK_STATUS:
            return await self._block_status(request)
        if fua:
            await node.flush()
        return [self.conn.reply_ok(request)]

    async def _read(self, request: p.Request) -> list[bytes | memoryview]:
        assert self.export is not None
        node = self.export.node
        cookie, offset, length = request.cookie, request.offset, request.length
        buf = memoryview(bytearray(length))
        if not self.conn.structured:
            await node.read(offset, buf)
            return [p.simple_reply(cookie), buf]
        if length == 0:
            return [p.none_chunk(cookie)]
        if request.flags & p.CMD_FLAG_DF:
            await node.read(offset, buf)
            return p.offset_data_chunk(cookie, offset, buf, True)
        # A sparse read: holes are described, not sent.
        segments: list[list[int]] = []    # [start, length, is_data]
        pos = 0
        while pos < length:
            extent = await block_status_above(node, offset + pos, length - pos)
            size = min(extent.length, length - pos) if extent.length > 0 else length - pos
            is_data = 0 if extent.status & Status.ZERO else 1
            if segments and segments[-1][2] == is_data:
                segments[-1][1] += size
            else:
                segments.append([pos, size, is_data])
            pos += size
        parts: list[bytes | memoryview] = []
        for index, (start, size, is_data) in enumerate(segments):
            done = index == len(segments) - 1
            if is_data:
                piece = buf[start:start + size]
                await node.read(offset + start, piece)
                parts += p.offset_data_chunk(cookie, offset + start, piece, done)
            else:
                parts.append(p.offset_hole_chunk(cookie, offset + start, size, done))
        return parts

    async def _block_status(self, request: p.Request) -> list[bytes | memoryview]:
        """One chunk per chosen context, in QEMU's order; the last ends the reply."""
        assert self.export is not None
        limit = 1 if request.flags & p.CMD_FLAG_REQ_ONE else p.MAX_EXTENTS
        contexts = self.conn.contexts
        chunks: list[bytes | memoryview] = []
        for index, context_id in enumerate(contexts):
            if context_id == p.BASE_ALLOCATION_ID:
                extents = await self._allocation(request, limit)
            else:
                bitmap = self.export.bitmaps[context_id - p.DIRTY_BITMAP_ID]
                extents = bitmap_extents(bitmap, request.offset, request.length, limit)
            chunks.append(p.block_status_chunk(request.cookie, context_id, extents, index == len(contexts) - 1))
        return chunks

    async def _allocation(self, request: p.Request, limit: int) -> list[tuple[int, int]]:
        """``base:allocation`` extents from the start of the request."""
        assert self.export is not None
        node = self.export.node
        extents: list[tuple[int, int]] = []
        pos, end = request.offset, request.offset + request.length
        while pos < end:
            extent = await block_status_above(node, pos, end - pos)
            size = min(extent.length, end - pos) if extent.length > 0 else end - pos
            flags = (0 if extent.status & Status.DATA else p.STATE_HOLE) | \
                    (p.STATE_ZERO if extent.status & Status.ZERO else 0)
            if extents and extents[-1][1] == flags and extents[-1][0] + size <= 0xFFFFFFFF:
                extents[-1] = (extents[-1][0] + size, flags)
            elif len(extents) < limit:
                extents.append((size, flags))
            else:
                break
            pos += size
        return extents


def bitmap_extents(bitmap: DirtyBitmap, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
    """(length, flags) extents of ``qemu:dirty-bitmap:`` from ``offset``
    (QEMU's bitmap_to_extents): alike neighbours merge up to 4 GiB - 1;
    the list ends where ``limit`` extents are full."""
    extents: list[tuple[int, int]] = []

    def add(size: int, flags: int) -> bool:
        if not size:
            return True
        if extents and extents[-1][1] == flags and extents[-1][0] + size <= 0xFFFFFFFF:
            extents[-1] = (extents[-1][0] + size, flags)
            return True
        if len(extents) >= limit:
            return False
        extents.append((size, flags))
        return True

    pos, end = offset, offset + length
    for start, size in bitmap.dirty_ranges(offset, end):
        if not (add(start - pos, 0) and add(size, p.STATE_DIRTY)):
            return extents
        pos = start + size
    add(end - pos, 0)
    return extents
