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
    DriveBackup,
    JobStatus,
    JobType,
    MirrorSyncMode,
    NewImageMode,
    TransactionActionKind,
    visit_BlockdevOptions,
)
from vmd.block import aio
from vmd.block.backend import device_name
from vmd.block.create import create_image
from vmd.block.dirty_bitmap import DirtyBitmap
from vmd.block.graph import BlockGraph
from vmd.block.jobs.chain import allocated_above, backing_of
from vmd.block.jobs.filters import FilterNode, RangeLocks, drop_filter, insert_filter
from vmd.block.node import BlockNode, Status, block_status_above
from vmd.block.perm import ALL, Perm, Role
from vmd.block.transaction import Action, action
from vmd.errors import QMPError
from vmd.img.common import probe_format
from vmd.job.blockjob import BlockJob, check_not_blocked
from vmd.job.core import JobTxn

#: The arguments both backup commands share (QAPI's BackupCommon).
BackupArgs = BlockdevBackup | DriveBackup

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

    async def _copy_run(self, offset: int, n: int, zero: bool = False) -> None:
        if zero:
            try:
                await self.target.write_zeroes(offset, n)
            except Exception as error:
                raise CopyFailed(error, False) from error
        else:
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
                 on_target_error: BlockdevOnError | None, auto_finalize: bool, auto_dismiss: bool,
                 txn: JobTxn | None = None) -> None:
        super().__init__(graph, registry, job_id, cbw, speed=speed, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss, txn=txn)
        self.cbw = cbw
        self.bcs = cbw.bcs
        self.sync = sync
        self.on_source_error = on_source_error
        self.on_target_error = on_target_error
        #: drive-backup: the target was opened for the job, which closes it.
        self.owns_target = False
        try:
            # QEMU's filter holds the target as its child with "write"; the
            # job's edge holds it here.
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
            try:
                n, _ = await self.bcs.chunk(offset, CHUNK)
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
        target = self.bcs.target
        if self.owns_target and not target.parents and self.graph.get(target.node_name) is target:
            await self.graph.close_tree(target)


def _check_arguments(backup: BackupArgs, source: BlockNode, target: BlockNode) -> None:
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


async def create_backup_job(daemon: Any, backup: BackupArgs, source: BlockNode, target: BlockNode,
                            txn: JobTxn | None, *, owns_target: bool = False) -> BackupJob:
    """do_backup_common and backup_job_create: the checks, the filter above
    ``source``, the job with its first dirty bitmap; not started yet. Both
    ``blockdev-backup`` and ``drive-backup`` come here (``owns_target``:
    the job closes the target it was given when it ends)."""
    graph: BlockGraph = daemon.block
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
                        auto_dismiss=backup.auto_dismiss is not False, txn=txn)
    except BaseException:
        await drop_filter(graph, cbw)
        raise
    job.owns_target = owns_target
    try:
        await job.init_bitmap()
    except BaseException:
        await job.clean()
        job.early_fail()
        raise
    return job


class BackupAction(Action):
    """What the two backup actions share (QEMU's *_backup_prepare/commit/
    abort/clean): the job is created in ``prepare`` inside a drained
    section over the source, so it starts paused and resumes when the
    section ends (the job shows running, paused, running, as QEMU's)."""

    def __init__(self, txn: Any, data: Any) -> None:
        super().__init__(txn, data)
        self.job: BackupJob | None = None
        self.started = False

    async def prepare_job(self, source: BlockNode, target: BlockNode, *, owns_target: bool = False) -> None:
        self.job = await create_backup_job(self.daemon, self.data, source, target, self.txn.job_txn,
                                           owns_target=owns_target)
        self.job.pause()  # created inside the drained section

    async def commit(self) -> None:
        job = self.job
        assert job is not None
        job.start()
        self.started = True
        await job.wait_parked()

    async def abort(self) -> None:
        """job_cancel_sync of the job that never started."""
        if self.job is not None:
            self.job.cancel(True)
            await self.job.wait_concluded()

    async def clean(self) -> None:
        await self.end_drains()
        job = self.job
        if job is not None and self.started:
            job.resume()
            # QEMU's drained_end re-enters the job before the command returns.
            while job.status == JobStatus.PAUSED:
                await asyncio.sleep(0)


@action(TransactionActionKind.BLOCKDEV_BACKUP)
class BlockdevBackupAction(BackupAction):
    data: BlockdevBackup

    async def prepare(self) -> None:
        graph: BlockGraph = self.daemon.block
        source = graph.lookup(self.data.device, self.data.device)
        target = graph.lookup(self.data.target, self.data.target)
        await self.drain(source)
        await self.prepare_job(source, target)


@action(TransactionActionKind.DRIVE_BACKUP)
class DriveBackupAction(BackupAction):
    """drive_backup_prepare: the target image is created (unless ``mode:
    existing``) with the source's backing file for ``sync: top`` and the
    source itself for ``sync: none``, then opened and backed up to."""

    data: DriveBackup

    async def prepare(self) -> None:
        graph: BlockGraph = self.daemon.block
        data = self.data
        existing = (data.mode or NewImageMode.ABSOLUTE_PATHS) == NewImageMode.EXISTING
        source = graph.lookup(data.device, data.device)
        await self.drain(source)
        fmt = data.format or (None if existing else source.driver)
        check_not_blocked(source)
        backing: BlockNode | None = None
        if data.sync == MirrorSyncMode.TOP:
            backing = backing_of(source)
            if backing is None:
                data.sync = MirrorSyncMode.FULL
        if data.sync == MirrorSyncMode.NONE:
            backing = source
        if not existing:
            assert fmt is not None
            await create_image(data.target, fmt, source.total_size,
                               backing.filename() if backing is not None else None,
                               backing.driver if backing is not None else None)
        target = await self._open_target(graph, fmt, no_backing=data.sync == MirrorSyncMode.NONE)
        try:
            if data.sync == MirrorSyncMode.NONE:
                target.attach_child("backing", source, Role.COW)
            await self.prepare_job(source, target, owns_target=True)
        except BaseException:
            await graph.close_tree(target)
            raise

    async def _open_target(self, graph: BlockGraph, fmt: str | None, *, no_backing: bool) -> BlockNode:
        if fmt is None:
            fmt = await aio.run(probe_format, self.data.target)
        wire: dict[str, Any] = {"driver": fmt, "file": {"driver": "file", "filename": self.data.target}}
        if no_backing and fmt == "qcow2":
            wire["backing"] = None
        return await graph.open(visit_BlockdevOptions(wire, None, ""))
