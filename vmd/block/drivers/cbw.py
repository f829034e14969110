"""The ``copy-before-write`` filter and its block copy (QEMU 7.2's
block/copy-before-write.c and block/block-copy.c).

A filter with two children: ``file``, the node it passes requests to, and
``target``. Clusters of ``file`` not yet copied are dirty in the copy's
bitmap (all of them at first). A write, write-zeroes or discard through the
filter first copies the dirty clusters it covers to the target (their old
data), and only then goes on to ``file``; a failed copy fails the write
(``on-cbw-error: break-guest-write``), so the target never misses data it
should hold. Copies of a range (before a write, or by a backup job) hold a
range lock and clear their bits only once the data is on the target, so
the target receives exactly the point-in-time content of ``file``.

The filter also offers QEMU's snapshot-access API, read by a
``snapshot-access`` node above it (image fleecing): ``snapshot_read``
returns the point-in-time data, from the target where it was copied (the
``done`` bitmap) and from ``file`` elsewhere; a read from ``file`` holds
its range so that a guest write there first waits for it (after copying
the old data away). ``snapshot_discard`` tells the filter a range is no
longer needed: it is neither copied nor readable any more (``access``).

When a copy fails, ``on-cbw-error`` decides who pays: ``break-guest-write``
(the default) fails the guest's write, ``break-snapshot`` lets it through
and breaks the snapshot for good (every snapshot read fails with EACCES
from then on, and no more copies are made). ``cbw-timeout`` (seconds)
bounds the wait for a copy: past it the copy counts as failed with
ETIMEDOUT, starts no further chunk, and the chunk under way finishes in
the background (the node's close waits for it, as QEMU keeps it in
flight).

Everything here belongs to the event loop thread.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from typing import Any

from vmd._generated.types import OnCbwError
from vmd.block.copy import CopyFailed, copy_range
from vmd.block.dirty_bitmap import DirtyBitmap
from vmd.block.edge import Edge, drained
from vmd.block.filename import NamesOf
from vmd.block.graph import BlockGraph, driver, node_name_of
from vmd.block.jobs.filters import RangeLocks
from vmd.block.node import BlockNode, Extent, Status, block_status_above
from vmd.block.perm import ALL, Perm, Role, default_perms

#: The largest single copy (BLOCK_COPY_MAX_BUFFER).
CHUNK = 1 << 20


def copy_cluster_size(target: BlockNode) -> int:
    """block_copy_calculate_cluster_size: the target's cluster size, but at
    least 64 KiB (64 KiB when it has none). Never smaller than the target's
    clusters: a target without a backing file would fill the rest of a
    partly copied cluster with zeroes."""
    return max(65536, getattr(target, "cs", 0))


class CopyCall:
    """One copy that its caller may stop waiting for (block-copy's call
    state): once cancelled it starts no further chunk."""

    def __init__(self) -> None:
        self.cancelled = False


class BlockCopy:
    """The clusters of ``source`` still to be copied to ``target``."""

    def __init__(self, source: BlockNode, target: BlockNode) -> None:
        self.source = source
        self.target = target
        self.cluster = copy_cluster_size(target)
        self.bitmap = DirtyBitmap(source.total_size, self.cluster)
        self.bitmap.set(0, source.total_size)
        self.locks = RangeLocks()
        #: Told the bytes of each copy (a backup job's progress).
        self.copied: list[Callable[[int], None]] = []

    def aligned(self, offset: int, length: int) -> tuple[int, int]:
        """``[offset, offset + length)`` widened to whole clusters."""
        start = offset - offset % self.cluster
        end = min(self.bitmap.size, -(-(offset + length) // self.cluster) * self.cluster)
        return start, end

    async def copy(self, offset: int, length: int, call: CopyCall | None = None) -> None:
        """Copy the dirty clusters of ``[offset, offset + length)``; raises
        CopyFailed (the bits of what failed stay set). A cancelled ``call``
        starts no further chunk."""
        start, end = self.aligned(offset, length)
        if start >= end or not self.bitmap.is_dirty(start, end - start):
            return
        async with self.locks.hold(start, end - start):
            pos = start
            while pos < end and not (call is not None and call.cancelled):
                first = self.bitmap.next_dirty(pos)
                if first < 0 or first >= end:
                    return
                n, zero = await self.chunk(first, end - first)
                await self._copy_run(first, n, zero)
                pos = first + n

    async def chunk(self, offset: int, limit: int) -> tuple[int, bool]:
        """The next copy at dirty ``offset``: the dirty run, at most
        ``CHUNK`` and ``limit``, cut where the source's block status changes
        (rounded up to clusters), and whether it reads as zeroes, as QEMU's
        block_copy_dirty_clusters splits its tasks."""
        n = self.bitmap.dirty_run(offset, min(CHUNK, limit))
        try:
            extent = await block_status_above(self.source, offset, n)
        except Exception as error:
            raise CopyFailed(error, True) from error
        if extent.length < n:
            n = max(self.cluster, -(-extent.length // self.cluster) * self.cluster)
            n = self.bitmap.dirty_run(offset, n)
        zero = bool(extent.status & Status.ZERO) and extent.length >= n
        return n, zero

    async def _copy_run(self, offset: int, n: int, zero: bool) -> None:
        if zero:
            try:
                await self.target.write_zeroes(offset, n)
            except Exception as error:
                raise CopyFailed(error, False) from error
        else:
            await copy_range(self.source, self.target, offset, memoryview(bytearray(n)))
        self.bitmap.reset(offset, n)
        for notify in self.copied:
            notify(n)


class CopyBeforeWriteNode(BlockNode):
    """QEMU's copy-before-write filter: old data goes to the target first."""

    driver = "copy-before-write"
    is_filter = True
    supports_reopen = False

    def __init__(self, node_name: str, file: BlockNode, target: BlockNode, *,
                 on_cbw_error: OnCbwError = OnCbwError.BREAK_GUEST_WRITE, timeout: float = 0.0) -> None:
        super().__init__(node_name, read_only=file.read_only)
        self.on_cbw_error = on_cbw_error
        #: ``cbw-timeout`` in seconds; 0: wait for copies as long as they take.
        self.timeout = timeout
        #: A copy failed under ``break-snapshot`` (QEMU's snapshot_error).
        self.snapshot_broken = False
        #: Timed-out copies still running.
        self._background: set[asyncio.Task[None]] = set()
        self.total_size = file.total_size
        self.attach_child("file", file, Role.FILTERED | Role.PRIMARY)
        try:
            self.attach_child("target", target, Role.DATA)
        except BaseException:
            self.detach_children()
            raise
        self.bcs = BlockCopy(file, target)
        #: Clusters the snapshot-access API may read (QEMU's access_bitmap).
        self.access = DirtyBitmap(file.total_size, self.bcs.cluster)
        self.access.set(0, file.total_size)
        #: Clusters a copy-before-write put on the target (done_bitmap).
        self.done = DirtyBitmap(file.total_size, self.bcs.cluster)
        #: Snapshot reads from ``file`` under way (frozen_read_reqs).
        self._reads = RangeLocks()

    def exact_filename(self, options: dict[str, Any], names_of: NamesOf) -> str:
        """cbw_refresh_filename: the source's name."""
        return names_of(self.file).filename

    def child_perm(self, edge: Edge, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        """cbw_child_perm: the target is written and may not be resized;
        the source is read consistently while anybody writes through."""
        if not edge.role & Role.FILTERED:
            return Perm.WRITE, ALL & ~Perm.RESIZE
        nperm, nshared = default_perms(not self.read_only, edge.role, perm, shared)
        if self.parents:
            if perm & Perm.WRITE:
                nperm |= Perm.CONSISTENT_READ
            nshared &= ~(Perm.WRITE | Perm.RESIZE)
        return nperm, nshared

    # -- the filter ---------------------------------------------------------------

    async def _before_write(self, offset: int, length: int) -> None:
        """cbw_do_copy_before_write: copy the old data (a failure fails
        the write or breaks the snapshot), then wait for the snapshot reads
        of the range still reading it from ``file``. A broken snapshot
        copies nothing more."""
        if self.snapshot_broken:
            return
        start, end = self.bcs.aligned(offset, length)
        try:
            await self._copy_old_data(start, end)
        except Exception:
            if self.on_cbw_error == OnCbwError.BREAK_GUEST_WRITE:
                raise
            self.snapshot_broken = True
        else:
            self.done.set(start, end - start)
        async with self._reads.hold(start, end - start):
            pass

    async def _copy_old_data(self, start: int, end: int) -> None:
        """block_copy of ``[start, end)``, within ``cbw-timeout`` if set;
        raises what failed (OSError ETIMEDOUT when the time ran out)."""
        try:
            if self.timeout:
                await self._copy_within_timeout(start, end)
            else:
                await self.bcs.copy(start, end - start)
        except CopyFailed as failure:
            raise failure.error from None

    async def _copy_within_timeout(self, start: int, end: int) -> None:
        """The copy runs as a task of its own that outlives a timeout."""
        call = CopyCall()
        task = asyncio.get_running_loop().create_task(self.bcs.copy(start, end - start, call))
        self._background.add(task)
        task.add_done_callback(self._copy_ended)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except TimeoutError:
            call.cancelled = True
            raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)) from None

    def _copy_ended(self, task: asyncio.Task[None]) -> None:
        """A copy ended; a timed-out one's failure was already reported."""
        self._background.discard(task)
        if not task.cancelled():
            task.exception()

    async def close(self) -> None:
        """Copies that timed out finish before the children go, in a
        drained section over the target (a throttle there lets them go at
        once, as QEMU drains every node before closing at exit)."""
        target = self.child("target")
        if self._background and target is not None:
            async with drained(target):
                while self._background:
                    await asyncio.wait(list(self._background))

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        await self.file.read(offset, buf)

    async def _co_write(self, offset: int, data: memoryview) -> None:
        await self._before_write(offset, len(data))
        await self.file.write(offset, data)

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        await self._before_write(offset, length)
        await self.file.write_zeroes(offset, length, may_unmap)

    async def _co_discard(self, offset: int, length: int) -> None:
        await self._before_write(offset, length)
        await self.file.discard(offset, length)

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        return await self.file.block_status(offset, length)

    # -- the snapshot-access API --------------------------------------------------------

    def _readable(self, offset: int, length: int) -> int:
        """How many bytes from ``offset`` the next snapshot read takes from
        one place; raises EACCES for a range no longer accessible (or
        anywhere once the snapshot is broken)."""
        if self.snapshot_broken or self.access.dirty_run(offset, length) < length:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        if self.done.is_dirty(offset, 1):
            return self.done.dirty_run(offset, length)
        following = self.done.next_dirty(offset)
        return length if following < 0 else min(length, following - offset)

    async def snapshot_read(self, offset: int, buf: memoryview) -> None:
        """cbw_co_preadv_snapshot: the point-in-time data."""
        done = 0
        while done < len(buf):
            pos = offset + done
            n = self._readable(pos, len(buf) - done)
            part = buf[done:done + n]
            if self.done.is_dirty(pos, 1):
                await self.child("target").read(pos, part)  # type: ignore[union-attr]
            else:
                async with self._reads.hold(pos, n):
                    await self.file.read(pos, part)
            done += n

    async def snapshot_block_status(self, offset: int, length: int) -> Extent:
        """cbw_co_snapshot_block_status, from where the data is."""
        n = self._readable(offset, length)
        if self.done.is_dirty(offset, 1):
            extent = await self.child("target").block_status(offset, n)  # type: ignore[union-attr]
            return Extent(extent.length, extent.status | Status.ALLOCATED, extent.file_offset)
        async with self._reads.hold(offset, n):
            return await block_status_above(self.file, offset, n)

    async def snapshot_discard(self, offset: int, length: int) -> None:
        """cbw_co_pdiscard_snapshot: the range is neither read nor copied
        any more; the target may drop it."""
        self.access.reset(offset, length)
        start, end = self.bcs.aligned(offset, length)
        inner_start = -(-offset // self.bcs.cluster) * self.bcs.cluster
        inner_end = min(end, (offset + length) // self.bcs.cluster * self.bcs.cluster)
        if start < end and inner_start < inner_end:
            self.bcs.bitmap.reset(inner_start, inner_end - inner_start)
        await self.child("target").discard(offset, length)  # type: ignore[union-attr]


@driver("copy-before-write")
async def open_cbw(options: Any, graph: BlockGraph) -> BlockNode:
    """``blockdev-add`` ``driver: copy-before-write`` (``file``, ``target``,
    ``on-cbw-error``, ``cbw-timeout``)."""
    u = options.u
    name = node_name_of(options)
    file = await graph.open_child(u.file, options, "file")
    target = await graph.open_child(u.target, options, "target")
    return CopyBeforeWriteNode(name, file, target, on_cbw_error=u.on_cbw_error or OnCbwError.BREAK_GUEST_WRITE,
                               timeout=float(u.cbw_timeout or 0))
