"""Mirror and active commit (QEMU's block/mirror.c).

A ``mirror_top`` filter goes above the source; the users of the source
move onto it. The job marks what it must copy in a dirty bitmap (all of
the source for ``sync: full``, what the top image holds for ``top``,
what lies above the base for an active commit, nothing for ``none``) and
copies dirty runs of up to 1 MiB, at most ``buf-size`` bytes at a time.
Guest writes through the filter land on the source and then mark their
range dirty; a copy clears its bits *before* reading the source, so a
write racing with it is copied again. With ``copy-mode:
write-blocking`` a write to a clean range that no copy is working on is
written to the target as well before it completes.

Once nothing is dirty the target is flushed and the job is ``ready``
(BLOCK_JOB_READY) and keeps copying new writes; it flushes the target
again before it ends (a failed flush is a target error under
``on-target-error``). ``job-complete`` makes it stop once converged; the
switch happens in ``prepare``, in a drained section over the filter (the
users' writes in flight finish first, and whatever they dirtied is
copied): the node to replace (the source, or ``replaces``) is replaced by
the target under all its parents, and the filter goes. A soft cancel of
a ready job ends it successfully without the switch; a forced cancel or
an error drops the filter and leaves the target as it is (consistent up
to what was copied).

Active commit is the same job with the base as target, type ``commit``:
on completion the users of the top move to the base and the images in
between are let go of.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from vmd._generated.types import (
    BlockdevOnError,
    BlockErrorAction,
    DriveMirror,
    JobType,
    MirrorCopyMode,
    MirrorSyncMode,
    NewImageMode,
    visit_BlockdevOptions,
)
from vmd.block.backend import BlockBackend, device_name
from vmd.block.create import create_image
from vmd.block.dirty_bitmap import DirtyBitmap, default_granularity
from vmd.block.edge import Transaction, detach, drained, refresh_perms, replace_node
from vmd.block.graph import BlockGraph
from vmd.block.jobs.chain import allocated_above, chain_between, chain_contains, skip_filters
from vmd.block.jobs.filters import MirrorTopNode, drop_filter, insert_filter
from vmd.block.node import BlockNode, Status, block_status_above
from vmd.block.perm import ALL, Perm, Role
from vmd.errors import QMPError
from vmd.job.blockjob import BlockJob, check_not_blocked
from vmd.job.ratelimit import SLICE

#: MAX_IO_BYTES: the largest single copy.
MAX_IO = 1 << 20
#: DEFAULT_MIRROR_BUF_SIZE.
DEFAULT_BUF_SIZE = 16 << 20


@dataclass
class MirrorRequest:
    """The arguments common to blockdev-mirror and drive-mirror."""

    job_id: str | None
    source: BlockNode
    target: BlockNode
    replaces: str | None
    sync: MirrorSyncMode
    speed: int | None = None
    granularity: int | None = None
    buf_size: int | None = None
    on_source_error: BlockdevOnError | None = None
    on_target_error: BlockdevOnError | None = None
    filter_node_name: str | None = None
    copy_mode: MirrorCopyMode | None = None
    auto_finalize: bool | None = None
    auto_dismiss: bool | None = None
    #: The target's backing on completion (drive-mirror): None keeps it.
    new_backing: BlockNode | None = None
    set_backing: bool = False
    #: A full mirror writes all of the target (not a new, zeroed image).
    zero_target: bool = True


class MirrorJob(BlockJob):
    """blockdev-mirror / drive-mirror."""

    job_type = JobType.MIRROR
    can_complete = True

    def __init__(self, graph: BlockGraph, registry: Any, job_id: str, top: MirrorTopNode, source: BlockNode,
                 target: BlockNode, *, base: BlockNode | None, sync: MirrorSyncMode, granularity: int,
                 buf_size: int, speed: int, on_source_error: BlockdevOnError | None,
                 on_target_error: BlockdevOnError | None, copy_mode: MirrorCopyMode,
                 auto_finalize: bool, auto_dismiss: bool) -> None:
        super().__init__(graph, registry, job_id, top, speed=speed, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss)
        self.filter = top
        self.source = source
        self.target = target
        self.base = base
        self.sync = sync
        self.buf_size = buf_size
        self.on_source_error = on_source_error
        self.on_target_error = on_target_error
        self.copy_mode = copy_mode
        self.bitmap = DirtyBitmap(source.total_size, granularity)
        self.should_complete = False
        #: The whole target is written (QEMU's zero_target).
        self.zero_target = False
        self.synced = False
        self.to_replace: BlockNode = source
        self.new_backing: BlockNode | None = None
        self.set_backing = False
        #: Ranges being copied now: a guest write there is copied again.
        self._copying: list[tuple[int, int]] = []
        self._failure: BaseException | None = None
        try:
            target_is_backing = chain_contains(source, target)
            self.add_node("source", source, Perm(0), Perm.WRITE_UNCHANGED | Perm.WRITE | Perm.CONSISTENT_READ)
            target_perm = Perm.WRITE | (Perm.CONSISTENT_READ if target_is_backing else Perm(0))
            if target.total_size < source.total_size:
                target_perm |= Perm.RESIZE
            self.target_blk = self.add_backend(target, target_perm, ALL)
            self.add_node("target", target, Perm(0), ALL)
            if target_is_backing:
                for node in chain_between(source.backing, target) if source.backing is not None else []:
                    self.add_node("intermediate node", node, Perm(0), Perm.WRITE_UNCHANGED | Perm.WRITE)
                self.freeze_chain(top, target)
        except BaseException:
            self.early_fail()
            raise

    # -- guest writes (from the filter) -------------------------------------------------

    async def guest_write(self, offset: int, data: memoryview | None, length: int) -> None:
        """A write reached the source: copy it now (write-blocking, clean
        range, no copy under way there) or mark it dirty."""
        if (self.copy_mode == MirrorCopyMode.WRITE_BLOCKING and data is not None and not self.cancel_requested()
                and not self.bitmap.is_dirty(offset, length) and not self._overlaps_copy(offset, length)):
            try:
                await self.target.write(offset, data)
                return
            except Exception:  # the background copy retries it
                pass
        self.bitmap.set(offset, length)
        self.enter_if_sleeping()

    def _overlaps_copy(self, offset: int, length: int) -> bool:
        end = offset + length
        return any(start < end and offset < stop for start, stop in self._copying)

    # -- the job ----------------------------------------------------------------------------

    async def dirty_init(self) -> None:
        """Mark what the sync mode copies (mirror_dirty_init): everything
        when the target is to be zeroed, else what is allocated above the
        base (for ``full`` anywhere in the chain). Runs before
        the job starts, as QEMU's runs before its first yield, so that
        ``len`` is known when the command returns."""
        target, source = self.target, self.source
        if target.total_size < source.total_size:
            await target.truncate(source.total_size)
        if self.sync == MirrorSyncMode.NONE:
            return
        length = self.source.total_size
        if self.zero_target:
            # QEMU zeroes the target first where it can unmap zeroes; vmd's
            # targets cannot, so everything is copied, as QEMU does then.
            self.bitmap.set(0, length)
            self.progress_set_remaining(self.bitmap.count())
            return
        offset = 0
        while offset < length:
            dirty, n = await allocated_above(self.source, self.base, offset, length - offset)
            if dirty:
                self.bitmap.set(offset, n)
            offset += n
        self.progress_set_remaining(self.bitmap.count())

    async def run(self) -> None:
        cursor = 0
        while True:
            if self.is_cancelled():
                return
            count = self.bitmap.count()
            self.progress_set_remaining(count)
            if count:
                cursor = await self._iteration(cursor)
                if self._failure is not None:
                    raise self._failure
                await self.ratelimit_sleep()
                continue
            if not self.synced:
                if not await self._flush_target():
                    continue
                self.synced = True
                self.transition_to_ready()
            if self.should_complete or self.cancel_requested():
                if await self._flush_target():
                    return
                continue
            await self.sleep(SLICE)

    async def _flush_target(self) -> bool:
        """mirror_flush, before the job is ready and before it ends once
        converged: False if the flush failed and the job goes on (after
        a pause point, where ``stop`` parks it); the ``report`` policy
        fails the job."""
        try:
            await self.target.flush()
        except Exception as exc:
            if self.error_action(self.on_target_error, False, exc) == BlockErrorAction.REPORT:
                raise
            await self.ratelimit_sleep()
            return False
        return True

    async def _iteration(self, cursor: int) -> int:
        """Copy a batch of dirty runs from ``cursor`` on; returns the next
        cursor. Bits are cleared before the reads start."""
        ops: list[tuple[int, int]] = []
        budget = self.buf_size if not self.speed else 1
        offset = cursor
        while budget > 0 and len(ops) < 16:
            start = self.bitmap.next_dirty(offset)
            if start < 0:
                if offset == 0 or ops:
                    break
                offset = 0
                continue
            n = self.bitmap.dirty_run(start, min(MAX_IO, max(budget, self.bitmap.granularity)))
            self.bitmap.reset(start, n)
            ops.append((start, n))
            budget -= n
            offset = start + n
            if offset >= self.source.total_size:
                offset = 0
        self._copying.extend((start, start + n) for start, n in ops)
        await asyncio.gather(*(self._copy(start, n) for start, n in ops))
        for start, n in ops:
            self._copying.remove((start, start + n))
        return offset

    async def _copy(self, offset: int, n: int) -> None:
        """One copy; an error goes through the policy (and re-dirties)."""
        buf = memoryview(bytearray(n))
        in_source = True
        try:
            extent = await block_status_above(self.source, offset, n)
            if extent.length >= n and extent.status & Status.ZERO and not extent.status & Status.DATA:
                in_source = False
                await self.target.write_zeroes(offset, n)
            else:
                await self.source.read(offset, buf)
                in_source = False
                await self.target.write(offset, buf)
        except Exception as exc:
            self.bitmap.set(offset, n)
            policy = self.on_source_error if in_source else self.on_target_error
            if self.error_action(policy, in_source, exc) == BlockErrorAction.REPORT and self._failure is None:
                self._failure = exc
            return
        self.progress_update(n)
        self.ratelimit_processed(n)

    # -- complete / cancel ------------------------------------------------------------

    def complete(self) -> None:
        self.should_complete = True
        if not self.paused:
            self.enter()

    def on_cancel(self, force: bool) -> bool:
        return force or not self.is_ready()

    async def prepare(self) -> None:
        """The switch (mirror_exit_common on success)."""
        await self._exit_common(switch=self.should_complete)

    async def abort(self) -> None:
        await self._exit_common(switch=False)

    async def _exit_common(self, switch: bool) -> None:
        if self.filter.observer is None:
            return  # already done (prepare ran, this is the commit/abort)
        filt = self.filter
        async with drained(filt):
            if switch:
                await self._final_copy()
            filt.observer = None
            filt.stop()
            self.remove_edges()
            if switch:
                await self._switch()
        await drop_filter(self.graph, filt)

    async def _final_copy(self) -> None:
        """Writes that landed after the run ended are copied now (no user
        request is in flight in the drained section)."""
        offset = self.bitmap.next_dirty(0)
        while offset >= 0:
            n = self.bitmap.dirty_run(offset, MAX_IO)
            self.bitmap.reset(offset, n)
            buf = memoryview(bytearray(n))
            await self.source.read(offset, buf)
            await self.target.write(offset, buf)
            offset = self.bitmap.next_dirty(offset + n)

    async def _switch(self) -> None:
        """Replace the node to replace by the target under its parents."""
        target, old = self.target, self.to_replace
        if self.set_backing and target.backing is not self.new_backing:
            edge = target.children.get("backing")
            if edge is not None:
                detach(edge)
            if self.new_backing is not None:
                target.attach_child("backing", self.new_backing, Role.COW)
        if old.read_only != target.read_only:
            if old.read_only:
                await target.reopen_read_only()
            else:
                await target.reopen_read_write()
        with Transaction() as tran:
            replace_node(old, target, tran)
        if not old.parents and old not in self.graph.owned and self.graph.get(old.node_name) is old:
            await self.graph.close_tree(old)


class ActiveCommitJob(MirrorJob):
    """block-commit of the active layer: a mirror into the base."""

    job_type = JobType.COMMIT


async def _begin(job: MirrorJob) -> None:
    """Mark the dirty ranges, then start; a failure ends the job early."""
    try:
        await job.dirty_init()
    except BaseException:
        await job.abort()
        job.early_fail()
        raise
    job.start()


def _check_granularity(granularity: int | None) -> None:
    if granularity is None:
        return
    if granularity < 512 or granularity > 64 << 20:
        raise QMPError("Parameter 'granularity' expects a value in range [512B, 64MB]")
    if granularity & (granularity - 1):
        raise QMPError("Parameter 'granularity' expects a power of 2")


async def _start(daemon: Any, job_id: str, source: BlockNode, target: BlockNode, *, base: BlockNode | None,
                 sync: MirrorSyncMode, granularity: int | None, buf_size: int | None, speed: int,
                 on_source_error: BlockdevOnError | None, on_target_error: BlockdevOnError | None,
                 filter_node_name: str | None, copy_mode: MirrorCopyMode | None,
                 auto_finalize: bool, auto_dismiss: bool, commit: bool = False) -> MirrorJob:
    """mirror_start_job: filter, job, edges; the caller starts the job."""
    if buf_size is not None and buf_size < 0:
        raise QMPError("Invalid parameter 'buf-size'")
    if skip_filters(source) is skip_filters(target):
        raise QMPError("Can't mirror node into itself")
    graph: BlockGraph = daemon.block
    top = MirrorTopNode("", source)
    await insert_filter(graph, top, source, filter_node_name, implicit=True)
    job_class = ActiveCommitJob if commit else MirrorJob
    try:
        job = job_class(graph, daemon.jobs, job_id, top, source, target, base=base, sync=sync,
                        granularity=granularity or default_granularity(target),
                        buf_size=buf_size or DEFAULT_BUF_SIZE, speed=speed,
                        on_source_error=on_source_error, on_target_error=on_target_error,
                        copy_mode=copy_mode or MirrorCopyMode.BACKGROUND,
                        auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
    except BaseException:
        await drop_filter(graph, top)
        raise
    top.observer = job
    return job


async def start_active_commit(daemon: Any, job_id: str, top: BlockNode, base: BlockNode, *, speed: int,
                              on_error: BlockdevOnError | None, filter_node_name: str | None,
                              auto_finalize: bool, auto_dismiss: bool) -> None:
    """commit_active_start: base read-write, then a mirror of type commit.
    As in QEMU 7.2 the base stays read-write after the job, whatever its
    end (only a failed start restores it)."""
    base_read_only = base.read_only
    if base_read_only:
        await base.reopen_read_write()
    try:
        job = await _start(daemon, job_id, top, base, base=base, sync=MirrorSyncMode.TOP, granularity=None,
                           buf_size=None, speed=speed, on_source_error=on_error, on_target_error=on_error,
                           filter_node_name=filter_node_name, copy_mode=None, auto_finalize=auto_finalize,
                           auto_dismiss=auto_dismiss, commit=True)
    except BaseException:
        if base_read_only:
            await base.reopen_read_only()
            with Transaction() as tran:
                refresh_perms([base], tran)
        raise
    await _begin(job)


def _check_to_replace(graph: BlockGraph, source: BlockNode, replaces: str) -> BlockNode:
    """check_to_replace_node."""
    node = graph.get(replaces)
    if node is None:
        raise QMPError(f"Failed to find node with node-name='{replaces}'")
    check_not_blocked(node)
    if node is not source and not chain_contains(node, source):
        raise QMPError(f"Cannot replace '{replaces}' by a node mirrored from '{source.node_name}', because it "
                       "cannot be guaranteed that doing so would not lead to an abrupt change of visible data")
    return node


async def _mirror_common(daemon: Any, req: MirrorRequest) -> None:
    """blockdev_mirror_common and mirror_start."""
    graph: BlockGraph = daemon.block
    source, target = req.source, req.target
    _check_granularity(req.granularity)
    check_not_blocked(source)
    check_not_blocked(target)
    if any(isinstance(edge.parent, BlockBackend) for edge in target.parents):
        raise QMPError("Cannot mirror to an attached block device")
    sync = req.sync
    if sync == MirrorSyncMode.TOP and skip_filters(source) is not None and source.backing is None:
        sync = MirrorSyncMode.FULL
    to_replace = source
    if req.replaces is not None:
        to_replace = _check_to_replace(graph, source, req.replaces)
        if to_replace.total_size != source.total_size:
            raise QMPError("cannot replace image with a mirror image of different size")
    if sync in (MirrorSyncMode.INCREMENTAL, MirrorSyncMode.BITMAP):
        raise QMPError(f"Sync mode '{sync.value}' not supported")
    if req.speed is not None and req.speed < 0:
        raise QMPError("Parameter 'speed' expects a non-negative value")
    base = source.backing if sync == MirrorSyncMode.TOP else None
    job_id = req.job_id if req.job_id is not None else device_name(source)
    job = await _start(daemon, job_id, source, target, base=base, sync=sync,
                       granularity=req.granularity, buf_size=req.buf_size, speed=req.speed or 0,
                       on_source_error=req.on_source_error, on_target_error=req.on_target_error,
                       filter_node_name=req.filter_node_name, copy_mode=req.copy_mode,
                       auto_finalize=req.auto_finalize is not False, auto_dismiss=req.auto_dismiss is not False)
    job.to_replace = to_replace
    job.new_backing, job.set_backing = req.new_backing, req.set_backing
    job.zero_target = sync == MirrorSyncMode.FULL and req.zero_target
    await _begin(job)


async def start_blockdev_mirror(daemon: Any, req: MirrorRequest) -> None:
    await _mirror_common(daemon, req)


async def start_drive_mirror(daemon: Any, arg: DriveMirror) -> None:
    """drive-mirror: create (or open) the target image, then mirror."""
    graph: BlockGraph = daemon.block
    source = graph.find_bs(arg.device)
    if source is None:
        raise QMPError(f"Cannot find device='{arg.device}' nor node-name='{arg.device}'")
    sync = arg.sync
    if sync == MirrorSyncMode.TOP and source.backing is None:
        sync = MirrorSyncMode.FULL
    fmt_name = arg.format or source.driver
    mode = arg.mode or NewImageMode.ABSOLUTE_PATHS
    if arg.node_name is not None and graph.get(arg.node_name) is not None:
        raise QMPError(f"Duplicate nodes with node-name='{arg.node_name}'")
    new_backing = {MirrorSyncMode.TOP: source.backing, MirrorSyncMode.NONE: source}.get(sync)
    if mode == NewImageMode.ABSOLUTE_PATHS:
        await create_image(arg.target, fmt_name, source.total_size,
                           new_backing.filename() if new_backing is not None else None,
                           new_backing.driver if new_backing is not None else None)
    from vmd.block.drive import resolve  # the target's name may carry a protocol (blkdebug:...)
    wire = await resolve({"driver": fmt_name}, arg.target)
    if fmt_name == "qcow2":
        wire["backing"] = None
    if arg.node_name is not None:
        wire["node-name"] = arg.node_name
    target = await graph.open(visit_BlockdevOptions(wire, None, ""))
    try:
        await _mirror_common(daemon, MirrorRequest(
            job_id=arg.job_id, source=source, target=target, replaces=arg.replaces, sync=arg.sync,
            speed=arg.speed, granularity=arg.granularity, buf_size=arg.buf_size,
            on_source_error=arg.on_source_error, on_target_error=arg.on_target_error,
            copy_mode=arg.copy_mode, auto_finalize=arg.auto_finalize, auto_dismiss=arg.auto_dismiss,
            new_backing=new_backing, set_backing=sync != MirrorSyncMode.FULL,
            zero_target=mode == NewImageMode.EXISTING))
    except BaseException:
        if not target.parents:
            await graph.close_tree(target)
        raise
