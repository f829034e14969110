"""blockdev-backup (QEMU's block/backup.c, block/copy-before-write.c and
block/block-copy.c).

A ``copy-before-write`` filter goes above the source. Clusters still to be
copied are dirty in the job's bitmap (all of them for ``sync: full``, what
the top image holds for ``top``, none at first for ``none``). The job copies
dirty runs of up to 1 MiB to the target; a guest write through the filter
first copies the dirty clusters it covers (their old data) and only then
reaches the source. Copies of a range (by the job or before a write) hold a
range lock and clear the bits only once the data is on the target, so the
target ends up exactly the point-in-time image of the source when the job
started. ``sync: none`` copies only before writes, until cancelled (image
fleecing). On completion the filter goes; the target stays as it is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vmd._generated.types import (
    BlockdevBackup,
    BlockdevOnError,
    BlockErrorAction,
    JobStatus,
    JobType,
    MirrorSyncMode,
)
from vmd.block.backend import device_name
from vmd.block.dirty_bitmap import DirtyBitmap
from vmd.block.edge import drained
from vmd.block.graph import BlockGraph
from vmd.block.jobs.chain import allocated_above
from vmd.block.jobs.filters import FilterNode, RangeLocks, drop_filter, insert_filter
from vmd.block.node import BlockNode
from vmd.block.perm import ALL, Perm
from vmd.errors import QMPError
from vmd.job.blockjob import BlockJob, check_not_blocked

#: The largest single copy.
CHUNK = 1 << 20


class CopyFailed(Exception):
    """A copy failed; ``is_read`` says whether reading the source did."""

    def __init__(self, error: Exception, is_read: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.is_read = is_read


class BlockCopy:
    """The clusters of ``source`` still to be copied to ``target``."""

    def __init__(self, source: BlockNode, target: BlockNode, cluster: int) -> None:
        self.source = source
        self.target = target
        self.cluster = cluster
        self.bitmap = DirtyBitmap(source.total_size, cluster)
        self.locks = RangeLocks()
        #: Told the bytes of each copy (the job's progress).
        self.copied: list[Any] = []

    async def copy(self, offset: int, length: int) -> None:
        """Copy the dirty clusters of ``[offset, offset + length)``; raises
        CopyFailed (the bits of what failed stay set)."""
        start = offset - offset % self.cluster
        end = min(self.bitmap.size, -(-(offset + length) // self.cluster) * self.cluster)
        if start >= end or not self.bitmap.is_dirty(start, end - start):
            return
        async with self.locks.hold(start, end - start):
            pos = start
            while pos < end:
                first = self.bitmap.next_dirty(pos)
                if first < 0 or first >= end:
                    return
                n = self.bitmap.dirty_run(first, min(CHUNK, end - first))
                await self._copy_run(first, n)
                pos = first + n

    async def _copy_run(self, offset: int, n: int) -> None:
        buf = memoryview(bytearray(n))
        try:
            await self.source.read(offset, buf)
        except Exception as error:
            raise CopyFailed(error, True) from error
        try:
            await self.target.write(offset, buf)
        except Exception as error:
            raise CopyFailed(error, False) from error
        self.bitmap.reset(offset, n)
        for notify in self.copied:
            notify(n)


class CopyBeforeWriteNode(FilterNode):
    """QEMU's copy-before-write filter: old data goes to the target first."""

    driver = "copy-before-write"

    def __init__(self, node_name: str, child: BlockNode, bcs: BlockCopy) -> None:
        super().__init__(node_name, child)
        self.bcs = bcs

    async def _before_write(self, offset: int, length: int) -> None:
        try:
            await self.bcs.copy(offset, length)
        except CopyFailed as failure:  # QEMU's on-cbw-error=break-guest-write
            raise failure.error from None

    async def _co_write(self, offset: int, data: memoryview) -> None:
        await self._before_write(offset, len(data))
        await self.child_node.write(offset, data)

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        await self._before_write(offset, length)
        await self.child_node.write_zeroes(offset, length, may_unmap)

    async def _co_discard(self, offset: int, length: int) -> None:
        await self._before_write(offset, length)
        await self.child_node.discard(offset, length)


class BackupJob(BlockJob):
    job_type = JobType.BACKUP

    def __init__(self, graph: BlockGraph, registry: Any, job_id: str, cbw: CopyBeforeWriteNode, *,
                 sync: MirrorSyncMode, speed: int, on_source_error: BlockdevOnError | None,
                 on_target_error: BlockdevOnError | None, auto_finalize: bool, auto_dismiss: bool) -> None:
        super().__init__(graph, registry, job_id, cbw, speed=speed, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss)
        self.cbw = cbw
        self.bcs = cbw.bcs
        self.sync = sync
        self.on_source_error = on_source_error
        self.on_target_error = on_target_error
        try:
            # QEMU's filter holds the target as its child with "write"; the
            # job's edge holds it here (the target has no BlockBackend).
            self.add_node("target", self.bcs.target, Perm.WRITE, ALL)
        except BaseException:
            self.early_fail()
            raise
        self.bcs.copied.append(self.progress_update)

    async def init_bitmap(self) -> None:
        """What the sync mode copies; before the first yield, as QEMU's."""
        source, size = self.bcs.source, self.bcs.source.total_size
        if self.sync == MirrorSyncMode.FULL:
            self.bcs.bitmap.set(0, size)
        elif self.sync == MirrorSyncMode.TOP:
            offset = 0
            while offset < size:
                allocated, n = await allocated_above(source, source.backing, offset, size - offset)
                if allocated:
                    self.bcs.bitmap.set(offset, n)
                offset += n
        self.progress_set_remaining(self.bcs.bitmap.count() if self.sync != MirrorSyncMode.NONE else size)

    async def run(self) -> None:
        if self.sync == MirrorSyncMode.NONE:
            while not self.is_cancelled():
                await self.yield_()
            return
        bitmap = self.bcs.bitmap
        while True:
            await self.ratelimit_sleep()
            if self.is_cancelled():
                return
            offset = bitmap.next_dirty(0)
            if offset < 0:
                return
            n = bitmap.dirty_run(offset, CHUNK)
            try:
                await self.bcs.copy(offset, n)
            except CopyFailed as failure:
                policy = self.on_source_error if failure.is_read else self.on_target_error
                if self.error_action(policy, failure.is_read, failure.error) == BlockErrorAction.REPORT:
                    raise failure.error from None
                continue
            self.ratelimit_processed(n)

    async def clean(self) -> None:
        await super().clean()
        if self.progress_update in self.bcs.copied:
            self.bcs.copied.remove(self.progress_update)
        if self.cbw.parents or self.graph.get(self.cbw.node_name) is self.cbw:
            await drop_filter(self.graph, self.cbw)


def _lookup(graph: BlockGraph, name: str) -> BlockNode:
    node = graph.find_bs(name)
    if node is None:
        raise QMPError(f"Cannot find device='{name}' nor node-name='{name}'")
    return node


def _check_arguments(backup: BlockdevBackup, source: BlockNode, target: BlockNode) -> None:
    """do_backup_common and backup_job_create's checks, in QEMU's order."""
    sync = backup.sync
    if backup.bitmap is None and sync in (MirrorSyncMode.INCREMENTAL, MirrorSyncMode.BITMAP):
        raise QMPError(f"must provide a valid bitmap name for '{sync.value}' sync mode")
    if backup.bitmap is not None:
        raise QMPError(f"Bitmap '{backup.bitmap}' could not be found")
    if backup.bitmap_mode is not None:
        raise QMPError("Cannot specify bitmap sync mode without a bitmap")
    if source is target:
        raise QMPError("Source and target cannot be the same")
    if backup.compress:
        raise QMPError(f"Compression is not supported for this drive {target.node_name}")
    check_not_blocked(source)
    check_not_blocked(target)
    if backup.speed is not None and backup.speed < 0:
        raise QMPError("Parameter 'speed' expects a non-negative value")
    if target.total_size != source.total_size:
        raise QMPError("Source and target image have different sizes")


async def qmp_start_backup(daemon: Any, backup: BlockdevBackup) -> None:
    """blockdev-backup: the filter, the job, and QEMU's drain around the
    start (the job shows running, paused, running, as QEMU's does)."""
    graph: BlockGraph = daemon.block
    source = _lookup(graph, backup.device)
    target = _lookup(graph, backup.target)
    # QEMU runs blockdev-backup as a transaction: it drains everything
    # (bdrv_drain_all), then prepares the backup in a drained section over
    # the source; jobs running there pause and resume twice, even when the
    # command fails.
    async with drained(*graph):
        pass
    async with drained(source):
        _check_arguments(backup, source, target)
    cluster = min(65536, max(4096, getattr(target, "cs", 0) or 65536))
    bcs = BlockCopy(source, target, cluster)
    cbw = CopyBeforeWriteNode("", source, bcs)
    job_id = backup.job_id if backup.job_id is not None else device_name(source)
    await insert_filter(graph, cbw, source, backup.filter_node_name)
    try:
        job = BackupJob(graph, daemon.jobs, job_id, cbw,
                        sync=backup.sync, speed=backup.speed or 0, on_source_error=backup.on_source_error,
                        on_target_error=backup.on_target_error, auto_finalize=backup.auto_finalize is not False,
                        auto_dismiss=backup.auto_dismiss is not False)
    except BaseException:
        await drop_filter(graph, cbw)
        raise
    try:
        await job.init_bitmap()
    except BaseException:
        await job.clean()
        job.early_fail()
        raise
    job.pause()
    job.start()
    await job.wait_parked()
    job.resume()
    # QEMU's drained_end re-enters the job before the command returns.
    while job.status == JobStatus.PAUSED:
        await asyncio.sleep(0)
