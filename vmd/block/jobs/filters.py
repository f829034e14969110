"""The filter nodes the block jobs put into the graph while they run.

A filter has one child that it passes requests through to (role
``FILTERED``), so a chain walk skips it. A job inserts its filter above a
node with ``insert_filter`` (the node's parents and users move onto the
filter, as QEMU's bdrv_append) and takes it out with ``drop_filter``
(they move back, or onto the node that replaced it).

- ``commit_top``: above the top of an intermediate commit; takes nothing
  from its child and shares everything, so that the job may write to the
  base below even while the overlay's users forbid writes to its chain.
- ``mirror_top``: above a mirror's source (and an active commit's top);
  guest writes pass through and are reported to the job, which marks them
  dirty (or, in write-blocking mode, copies them to the target at once).
- ``copy-on-read`` (the driver's node, bounded by a base): above a
  streamed node; reads of data that only the backing chain holds are
  written into the node as they go, and the stream job copies through it.
  Copies and guest writes of overlapping ranges wait for each other, so a
  copy never overwrites newer data.

Filter nodes belong to the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from vmd.block.drivers.cor import CopyOnReadNode
from vmd.block.edge import Edge, Transaction, add_edge, drained, refresh_perms, replace_node
from vmd.block.filename import NamesOf
from vmd.block.graph import BlockGraph
from vmd.block.node import BlockNode, Extent, Status
from vmd.block.perm import ALL, NONE, Perm, Role
from vmd.errors import QMPError
from vmd.job.core import id_wellformed


class FilterNode(BlockNode):
    """A node passing every request to its one child."""

    is_filter = True
    supports_reopen = False

    def __init__(self, node_name: str, child: BlockNode) -> None:
        super().__init__(node_name, read_only=child.read_only)
        self.total_size = child.total_size

    @property
    def child_node(self) -> BlockNode:
        return self.children["backing"].child

    def exact_filename(self, options: dict[str, Any], names_of: NamesOf) -> str:
        """commit_top's and mirror_top's rule: the filtered node's name."""
        edge = self.children.get("backing")
        return names_of(edge.child).filename if edge is not None else ""

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        await self.child_node.read(offset, buf)

    async def _co_write(self, offset: int, data: memoryview) -> None:
        await self.child_node.write(offset, data)

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        await self.child_node.write_zeroes(offset, length, may_unmap)

    async def _co_discard(self, offset: int, length: int) -> None:
        await self.child_node.discard(offset, length)

    async def _co_truncate(self, size: int) -> None:
        await self.child_node.truncate(size)
        self.total_size = self.child_node.total_size

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        return await self.child_node.block_status(offset, length)


class CommitTopNode(FilterNode):
    """QEMU's commit_top: holds nothing on the chain it sits on."""

    driver = "commit_top"
    never_freeze = True

    def child_perm(self, edge: Edge, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        return NONE, ALL


class WriteObserver(Protocol):
    """What a mirror_top reports guest writes to (the mirror job)."""

    async def guest_write(self, offset: int, data: memoryview | None, length: int) -> None:
        """``data`` reached the source (None for zeroes or a discard)."""


class MirrorTopNode(FilterNode):
    """QEMU's mirror_top: passes writes through and tells the job."""

    driver = "mirror_top"
    never_freeze = True

    def __init__(self, node_name: str, child: BlockNode) -> None:
        super().__init__(node_name, child)
        self.observer: WriteObserver | None = None
        #: The job is ending: the filter forwards nothing any more and
        #: holds nothing on its child (QEMU's MirrorBDSOpaque.stop).
        self.stopped = False

    def child_perm(self, edge: Edge, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        # bdrv_mirror_top_child_perms: only what forwarding guest writes
        # needs; the users' restrictions are enforced on the filter itself,
        # and below it the job's own edges must be able to read and write.
        # (So an active commit may unshare consistent reads of the images
        # between the active layer and the base.)
        if self.stopped or self.read_only:
            return NONE, ALL
        return Perm.WRITE, ALL

    def stop(self) -> None:
        """Let go of the child before the job's switch (which may make it
        the target's backing file, where nobody may write)."""
        self.stopped = True
        with Transaction() as tran:
            refresh_perms([self], tran)

    async def _co_write(self, offset: int, data: memoryview) -> None:
        await self.child_node.write(offset, data)
        if self.observer is not None:
            await self.observer.guest_write(offset, data, len(data))

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        await self.child_node.write_zeroes(offset, length, may_unmap)
        if self.observer is not None:
            await self.observer.guest_write(offset, None, length)

    async def _co_discard(self, offset: int, length: int) -> None:
        await self.child_node.discard(offset, length)
        if self.observer is not None:
            await self.observer.guest_write(offset, None, length)


class RangeLocks:
    """Byte ranges in use; a new holder waits for the overlapping ones."""

    def __init__(self) -> None:
        self._held: list[tuple[int, int, asyncio.Event]] = []

    @contextlib.asynccontextmanager
    async def hold(self, offset: int, length: int) -> AsyncIterator[None]:
        end = offset + length
        while True:
            busy = [done for start, stop, done in self._held if start < end and offset < stop]
            if not busy:
                break
            await busy[0].wait()
        entry = (offset, end, asyncio.Event())
        self._held.append(entry)
        try:
            yield
        finally:
            self._held.remove(entry)
            entry[2].set()


class StreamCorNode(CopyOnReadNode):
    """The copy-on-read filter of block-stream: copies stop above ``base``
    (QEMU's ``bottom`` option), and copies and guest writes of overlapping
    ranges wait for each other (QEMU's serialising requests), so that a
    copy of old backing data never lands over a newer guest write."""

    def __init__(self, node_name: str, file: BlockNode, base: BlockNode | None) -> None:
        super().__init__(node_name, file, read_only=file.read_only)
        self.base = base
        self.locks = RangeLocks()

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        done = 0
        while done < len(buf):
            done += await self.copy_on_read(offset + done, buf[done:])

    async def _co_write(self, offset: int, data: memoryview) -> None:
        async with self.locks.hold(offset, len(data)):
            await self.file.write(offset, data)

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        async with self.locks.hold(offset, length):
            await self.file.write_zeroes(offset, length, may_unmap)

    async def _co_discard(self, offset: int, length: int) -> None:
        async with self.locks.hold(offset, length):
            await self.file.discard(offset, length)

    async def copy_on_read(self, offset: int, buf: memoryview) -> int:
        """Read the start of ``buf`` at ``offset``; if only the backing chain
        above ``base`` holds it, write it into the child too. Returns the
        bytes handled (at least one extent)."""
        from vmd.block.jobs.chain import allocated_above
        child = self.file
        async with self.locks.hold(offset, len(buf)):
            extent = await child.block_status(offset, len(buf))
            n = extent.length
            copy = False
            if not extent.status & Status.ALLOCATED and child.backing is not None:
                copy, n = await allocated_above(child.backing, self.base, offset, n)
            part = buf[:n]
            await child.read(offset, part)
            if copy:
                await child.write(offset, part)
        return n


def check_node_name(graph: BlockGraph, name: str) -> None:
    """QEMU's bdrv_assign_node_name checks, for a filter's name."""
    if not id_wellformed(name):
        raise QMPError(f"Invalid node-name: '{name}'")
    if len(name) > 31:
        raise QMPError("Node name too long")
    if graph.get(name) is not None:
        raise QMPError(f"Duplicate nodes with node-name='{name}'")


async def insert_filter(graph: BlockGraph, filt: BlockNode, child: BlockNode, name: str | None,
                        *, implicit: bool = False) -> None:
    """Put ``filt`` above ``child``: every parent and user of the child
    moves onto the filter (bdrv_append), in a drained section; the filter
    is named ``name`` or an implicit ``#blockNNN``. A job filter gets its
    ``backing`` edge here; a driver's filter has its edge already.
    ``implicit``: without a name the filter is QEMU's implicit node, shown
    with its child's file name (commit, mirror and stream filters; not
    backup's)."""
    if name is not None:
        check_node_name(graph, name)
    filt.implicit = implicit and name is None
    async with drained(child):
        with Transaction() as tran:
            if not filt.children:
                add_edge(filt, child, "backing", Role.FILTERED | Role.PRIMARY, tran)
            replace_node(child, filt, tran)
    graph.adopt(filt, name)
    filt.implicit = name is None


async def drop_filter(graph: BlockGraph, filt: BlockNode, replacement: BlockNode | None = None) -> None:
    """Take ``filt`` out: its parents move to ``replacement`` (default: its
    child), then it closes."""
    child = filt.filtered()
    assert child is not None
    target = replacement or child
    async with drained(filt, child):
        with Transaction() as tran:
            replace_node(filt, target, tran)
    await graph.close_tree(filt)
