"""blockdev-backup and drive-backup (QEMU's block/backup.c and blockdev.c).

A ``copy-before-write`` filter (``vmd.block.drivers.cbw``) goes above the
source, with the target as its second child; its bitmap says what is still
to be copied (everything for ``sync: full`` and ``none``, what the top
image holds for ``top``). The job copies dirty runs of up to 1 MiB, split
where the source's block status changes, to the target, while a guest write
through the filter first copies the old data it covers, so the target ends
up exactly the point-in-time image of the source when the job started.
``sync: none`` copies only before writes, until cancelled (image fleecing).
``sync: bitmap``/``incremental`` copy what a dirty bitmap marks
(``backup_bitmap``). The copy's own bitmap is an anonymous, non-recording
bitmap of the source while the job runs, as QEMU's is. On completion the
filter goes; the target stays as it is (a target ``drive-backup`` opened
closes with it).

Both commands are transaction actions (``vmd.block.transaction``): the job
is created in ``prepare`` and started in ``commit``; ``create_backup_job``
is the one path both take.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vmd._generated.types import (
    BackupPerf,
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
from vmd.block.copy import CopyFailed
from vmd.block.create import create_image
from vmd.block.dirty_bitmap import release_bitmap
from vmd.block.drivers.cbw import CHUNK, CopyBeforeWriteNode
from vmd.block.graph import BlockGraph
from vmd.block.jobs.backup_bitmap import SyncBitmap, check_sync_bitmap
from vmd.block.jobs.chain import allocated_above, backing_of
from vmd.block.jobs.filters import check_node_name, drop_filter, insert_filter
from vmd.block.node import BlockNode
from vmd.block.perm import ALL, NONE, Role
from vmd.block.transaction import Action, action
from vmd.errors import QMPError
from vmd.img.common import ImgError, probe_format
from vmd.job.blockjob import BlockJob, check_not_blocked
from vmd.job.core import JobTxn

#: INT_MAX, the most x-perf's ``max-workers`` may ask for.
INT_MAX = (1 << 31) - 1

#: The arguments both backup commands share (QAPI's BackupCommon).
BackupArgs = BlockdevBackup | DriveBackup

class BackupJob(BlockJob):
    job_type = JobType.BACKUP

    def __init__(self, graph: BlockGraph, registry: Any, job_id: str, cbw: CopyBeforeWriteNode, *,
                 sync: MirrorSyncMode, speed: int, on_source_error: BlockdevOnError | None,
                 on_target_error: BlockdevOnError | None, auto_finalize: bool, auto_dismiss: bool,
                 txn: JobTxn | None = None, sync_bitmap: SyncBitmap | None = None, max_chunk: int = 0) -> None:
        super().__init__(graph, registry, job_id, cbw, speed=speed, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss, txn=txn)
        self.cbw = cbw
        #: The largest background copy (x-perf's ``max-chunk``; 0: no limit
        #: but CHUNK's), so that a speed limit lets one such step through.
        self.chunk = min(CHUNK, max_chunk) if max_chunk else CHUNK
        self.bcs = cbw.bcs
        self.sync = sync
        self.sync_bitmap = sync_bitmap
        self.on_source_error = on_source_error
        self.on_target_error = on_target_error
        try:
            self.add_node("target", self.bcs.target, NONE, ALL)
        except BaseException:
            self.early_fail()
            raise
        self.bcs.copied.append(self.progress_update)
        self.bcs.bitmap.disabled = True
        self.bcs.source.dirty_bitmaps.insert(0, self.bcs.bitmap)

    async def init_bitmap(self) -> None:
        """What the sync mode copies (everything is dirty at first; ``top``
        drops what the top image does not hold); before the first yield,
        as QEMU's, so that ``len`` is known when the command returns."""
        source, size = self.bcs.source, self.bcs.source.total_size
        if self.sync == MirrorSyncMode.BITMAP and self.sync_bitmap is not None:
            self.bcs.bitmap.clear()
            self.bcs.bitmap.merge(self.sync_bitmap.bitmap)
        elif self.sync == MirrorSyncMode.TOP:
            offset = 0
            while offset < size:
                allocated, n = await allocated_above(source, source.backing, offset, size - offset)
                if not allocated:
                    self.bcs.bitmap.reset(offset, n)
                offset += n
        self.progress_set_remaining(self.bcs.bitmap.count())

    async def run(self) -> None:
        if self.sync == MirrorSyncMode.NONE:
            while not self.is_cancelled():
                await self.yield_()
            return
        bitmap = self.bcs.bitmap
        started = False
        while True:
            # As QEMU's block-copy call: the first chunk starts at once (a
            # pause asked right after the start finds it copied), later
            # ones after the rate limit's delay.
            if started:
                await self.ratelimit_sleep()
            started = True
            if self.is_cancelled():
                return
            offset = bitmap.next_dirty(0)
            if offset < 0:
                return
            try:
                n, _ = await self.bcs.chunk(offset, self.chunk)
                await self.bcs.copy(offset, n)
            except CopyFailed as failure:
                policy = self.on_source_error if failure.is_read else self.on_target_error
                if self.error_action(policy, failure.is_read, failure.error) == BlockErrorAction.REPORT:
                    raise failure.error from None
                continue
            self.ratelimit_processed(n)

    async def commit(self) -> None:
        if self.sync_bitmap is not None:
            self.sync_bitmap.release(True)

    async def abort(self) -> None:
        if self.sync_bitmap is not None:
            self.sync_bitmap.release(False, self.bcs.bitmap)

    async def clean(self) -> None:
        await super().clean()
        if self.sync_bitmap is not None:  # a job that never ran
            self.sync_bitmap.thaw()
        release_bitmap(self.bcs.source, self.bcs.bitmap)
        if self.progress_update in self.bcs.copied:
            self.bcs.copied.remove(self.progress_update)
        if self.cbw.parents or self.graph.get(self.cbw.node_name) is self.cbw:
            await drop_filter(self.graph, self.cbw)  # a target nobody else holds closes too


def _check_arguments(backup: BackupArgs, source: BlockNode,
                     target: BlockNode) -> tuple[MirrorSyncMode, SyncBitmap | None]:
    """do_backup_common and backup_job_create's checks, in QEMU's order;
    the sync mode the job runs and its frozen sync bitmap."""
    sync, bitmap, mode = check_sync_bitmap(backup, source)
    if source is target:
        raise QMPError("Source and target cannot be the same")
    if backup.compress:
        raise QMPError(f"Compression is not supported for this drive {target.node_name}")
    check_not_blocked(source)
    check_not_blocked(target)
    _check_perf(backup.x_perf)
    frozen = SyncBitmap.freeze(source, bitmap, mode) if bitmap is not None and mode is not None else None
    if target.total_size != source.total_size:
        if frozen is not None:
            frozen.thaw()
        raise QMPError("Source and target image have different sizes")
    return sync, frozen


def _check_perf(perf: BackupPerf | None) -> None:
    """backup_job_create's checks of ``x-perf`` before the filter exists
    (max-chunk against the cluster size comes after, ``_check_chunk``)."""
    if perf is None:
        return
    if perf.max_workers is not None and not 1 <= perf.max_workers <= INT_MAX:
        raise QMPError(f"max-workers must be between 1 and {INT_MAX}")
    if perf.max_chunk is not None and perf.max_chunk < 0:
        raise QMPError("max-chunk must be zero (which means no limit) or positive")


def _check_chunk(max_chunk: int, cluster: int) -> None:
    if max_chunk and max_chunk < cluster:
        raise QMPError(f"Required max-chunk ({max_chunk}) is less than backup cluster size ({cluster})")


async def create_backup_job(daemon: Any, backup: BackupArgs, source: BlockNode, target: BlockNode,
                            txn: JobTxn | None) -> BackupJob:
    """do_backup_common and backup_job_create: the checks, the filter above
    ``source``, the job with its first dirty bitmap; not started yet. Both
    ``blockdev-backup`` and ``drive-backup`` come here."""
    graph: BlockGraph = daemon.block
    sync, frozen = _check_arguments(backup, source, target)
    try:
        if backup.filter_node_name is not None:
            check_node_name(graph, backup.filter_node_name)
    except QMPError:
        if frozen is not None:
            frozen.thaw()
        raise
    cbw = CopyBeforeWriteNode("", source, target)
    job_id = backup.job_id if backup.job_id is not None else device_name(source)
    try:
        await insert_filter(graph, cbw, source, backup.filter_node_name)
    except BaseException:
        if frozen is not None:
            frozen.thaw()
        cbw.detach_children()
        raise
    max_chunk = (backup.x_perf.max_chunk or 0) if backup.x_perf is not None else 0
    try:
        _check_chunk(max_chunk, cbw.bcs.cluster)
        job = BackupJob(graph, daemon.jobs, job_id, cbw,
                        sync=sync, speed=backup.speed or 0, on_source_error=backup.on_source_error,
                        on_target_error=backup.on_target_error, auto_finalize=backup.auto_finalize is not False,
                        auto_dismiss=backup.auto_dismiss is not False, txn=txn, sync_bitmap=frozen,
                        max_chunk=max_chunk)
    except BaseException:
        if frozen is not None:
            frozen.thaw()
        await drop_filter(graph, cbw)
        raise
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

    async def prepare_job(self, source: BlockNode, target: BlockNode) -> None:
        self.job = await create_backup_job(self.daemon, self.data, source, target, self.txn.job_txn)
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
            await self.prepare_job(source, target)
        except BaseException:
            if not target.parents and graph.get(target.node_name) is target:
                await graph.close_tree(target)
            raise

    async def _open_target(self, graph: BlockGraph, fmt: str | None, *, no_backing: bool) -> BlockNode:
        if fmt is None:
            try:
                fmt = await aio.run(probe_format, self.data.target)
            except ImgError as error:  # qemu-img says it twice, QEMU once
                raise QMPError(error.message.removeprefix(f"Could not open '{self.data.target}': ")) from None
        wire: dict[str, Any] = {"driver": fmt, "file": {"driver": "file", "filename": self.data.target}}
        if no_backing and fmt == "qcow2":
            wire["backing"] = None
        return await graph.open(visit_BlockdevOptions(wire, None, ""))
