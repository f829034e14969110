"""A user of the block graph: QEMU's BlockBackend.

An NBD export, ``block_resize``, a job or a guest device reaches a
node only through a ``BlockBackend``, which holds one ``root`` edge with the
permissions the user needs. Replacing the node under it (a snapshot, a job's
pivot) moves the edge, and with it the user.

A backend counts its requests in flight. During a drained section over a
node below it, new requests wait at ``request_begin`` (QEMU's request
queuing) and the section starts once those in flight have ended.

A guest device and HMP ``qemu-io`` do their I/O through the backend's
``read``/``write``/``write_zeroes``/``discard``/``flush`` (QEMU's
blk_co_preadv and friends): counted in flight, and with I/O limits
(``block_set_io_throttle``, ``-drive throttling.*``) held back by the
backend's throttle group member first. The backend keeps the I/O
statistics its users account (``stats``, ``vmd.block.accounting``).

Backends belong to the event loop thread.
"""

from __future__ import annotations

import asyncio

from vmd.block.accounting import BlockAcctStats
from vmd.block.edge import Edge, RootHolder, attach, detach, set_root_perm
from vmd.block.node import BlockNode
from vmd.block.perm import NO_ROLE, Perm
from vmd.block.throttle_group import ThrottleGroupMember


class BlockBackend(RootHolder):
    """One user's root edge, its permissions and its requests."""

    def __init__(self, perm: Perm, shared: Perm, *, name: str = "",
                 registry: list[BlockBackend] | None = None) -> None:
        self.name = name
        self.perm = perm
        self.shared = shared
        self.edge: Edge | None = None
        #: Whether requests wait during drained sections; a job's own
        #: backend does not (QEMU's blk_set_disable_request_queuing), so it
        #: can reach its pause point or finish cancelling.
        self.queue_requests = True
        #: The daemon's list of backends (``x-debug-query-block-graph``).
        self._registry = registry
        #: The guest device using this backend (QEMU's blk->dev), by its
        #: QOM path; None when no device is attached.
        self.device: str | None = None
        #: QEMU's blk_enable_write_cache: with it off a device flushes every write.
        self.write_cache = True
        #: ``query-block``'s io-status: ``failed``/``nospace`` while an error stopped the VM.
        self.iostatus = "ok"
        #: What a device does on a failed read and write (QEMU's blk_set_on_error):
        #: ``report``, ``ignore``, ``stop`` or ``enospc``; ``-drive`` sets them.
        self.on_error = ("report", "enospc")
        #: What the users of the backend accounted (``query-blockstats``).
        self.stats = BlockAcctStats()
        #: The backend's place in a throttle group: in one (``group``) while
        #: it has I/O limits (``vmd.block.io_limits``).
        self.throttle = ThrottleGroupMember()
        self.in_flight = 0
        self._quiesce = 0
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def node(self) -> BlockNode:
        assert self.edge is not None, "backend without a node"
        return self.edge.child

    @property
    def graph_name(self) -> str:
        """The name ``x-debug-query-block-graph`` shows: the backend's, else its device's path."""
        return self.name or self.device or ""

    def parent_desc(self) -> str:
        return f"block device '{self.graph_name}'" if self.graph_name else "an unnamed block device"

    # -- the root edge ---------------------------------------------------------------

    def attach(self, node: BlockNode) -> None:
        """Take the permissions on ``node``; raises QMPError on a conflict."""
        self.edge = attach(self, node, "root", NO_ROLE, self.perm, self.shared)
        if self._registry is not None:
            self._registry.append(self)

    def detach(self) -> None:
        """Let go of the node; held-back requests go first, and the
        backend leaves its throttle group (blk_delete)."""
        if self.throttle.group is not None:
            self.throttle.drain_begin()
            self.throttle.leave()
            self.throttle.drain_end()
        if self.edge is None:
            return
        edge, self.edge = self.edge, None
        detach(edge)
        if self._registry is not None and self in self._registry:
            self._registry.remove(self)

    def set_perm(self, perm: Perm, shared: Perm) -> None:
        if self.edge is not None:
            set_root_perm(self.edge, perm, shared)
        self.perm, self.shared = perm, shared

    # -- requests and drained sections -----------------------------------------------------

    def try_begin(self) -> bool:
        """Count a request in flight, unless it must wait (drained): then
        return False and let ``request_begin`` wait."""
        if self._quiesce and self.queue_requests:
            return False
        self.in_flight += 1
        self._idle.clear()
        return True

    async def request_begin(self) -> None:
        """Wait while drained, then count a request in flight."""
        while not self.try_begin():
            await self._resumed.wait()

    def request_end(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    def quiesce_begin(self) -> None:
        """blk_root_drained_begin(): new requests wait, throttled ones go."""
        self._quiesce += 1
        self._resumed.clear()
        self.throttle.drain_begin()

    def quiesce_end(self) -> None:
        self._quiesce -= 1
        if not self._quiesce:
            self._resumed.set()
        self.throttle.drain_end()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # -- I/O (blk_co_*) ----------------------------------------------------------------

    async def _enter(self, is_write: bool, size: int, throttled: bool = True) -> None:
        """Count the request in flight (after a drained section), then wait
        for the I/O limits; the caller ends the request."""
        if not self.try_begin():
            await self.request_begin()
        if throttled and self.throttle.group is not None:
            try:
                await self.throttle.intercept(is_write, size)
            except BaseException:
                self.request_end()
                raise

    async def read(self, offset: int, *bufs: memoryview) -> None:
        """Fill ``bufs`` from ``offset`` on: one request, however many buffers."""
        await self._enter(False, _size(bufs) if self.throttle.group is not None else 0)
        try:
            for buf in bufs:
                await self.node.read(offset, buf)
                offset += len(buf)
        finally:
            self.request_end()

    async def write(self, offset: int, *bufs: bytes | memoryview) -> None:
        """Write ``bufs`` one after another from ``offset`` on, as one request."""
        await self._enter(True, _size(bufs) if self.throttle.group is not None else 0)
        try:
            for buf in bufs:
                await self.node.write(offset, buf)
                offset += len(buf)
        finally:
            self.request_end()

    async def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        await self._enter(True, length)
        try:
            await self.node.write_zeroes(offset, length, may_unmap)
        finally:
            self.request_end()

    async def discard(self, offset: int, length: int) -> None:
        """Not throttled here (QEMU's blk_co_pdiscard; a throttle filter does)."""
        await self._enter(True, length, throttled=False)
        try:
            await self.node.discard(offset, length)
        finally:
            self.request_end()

    async def flush(self) -> None:
        """Flushes are not throttled."""
        await self._enter(False, 0, throttled=False)
        try:
            await self.node.flush()
        finally:
            self.request_end()


def _size(bufs: tuple[bytes | memoryview, ...]) -> int:
    return sum(len(buf) for buf in bufs)


def device_name(node: BlockNode) -> str:
    """The name of the first named BlockBackend on ``node``, or ""
    (QEMU's bdrv_get_device_name: a block job's default id). A block job's
    edge is named after its job but is no device."""
    for edge in node.parents:
        if isinstance(edge.parent, BlockBackend) and edge.parent.kind == "block-backend" and edge.parent.name:
            return edge.parent.name
    return ""
