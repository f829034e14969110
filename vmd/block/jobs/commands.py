"""QMP commands of the block jobs (QEMU's blockdev.c and blockjob.c).

``block-commit``, ``block-stream``, ``blockdev-mirror`` and ``drive-mirror``
check their arguments in QEMU's order, with QEMU's texts, then create and
start a job; the legacy ``block-job-*`` commands find block jobs by id
(``DeviceNotActive`` when there is none) and apply the job verbs.
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import (
    BlockdevBackup,
    BlockdevOnError,
    BlockJobInfo,
    DriveBackup,
    DriveMirror,
    MirrorCopyMode,
    MirrorSyncMode,
    TransactionActionKind,
)
from vmd.block.backend import BlockBackend, device_name
from vmd.block.filename import find_backing_image
from vmd.block.graph import BlockGraph, block_graph
from vmd.block.jobs.chain import chain_between, chain_contains, overlay_of, skip_filters
from vmd.block.node import BlockNode
from vmd.block.perm import Perm
from vmd.block.transaction import run_action
from vmd.errors import DEVICE_NOT_FOUND, QMPError
from vmd.job.blockjob import BlockJob, check_not_blocked, find_block_job


def _root_node(graph: BlockGraph, device: str) -> BlockNode:
    """qmp_get_root_bs, with block-commit's DeviceNotFound."""
    node = graph.find_bs(device)
    if node is None:
        raise QMPError(f"Device '{device}' not found", DEVICE_NOT_FOUND)
    if not all(isinstance(edge.parent, BlockBackend) and edge.parent.blocker() is None for edge in node.parents):
        raise QMPError("Need a root block node")
    return node


def _lookup(graph: BlockGraph, name: str, *, device: bool = True) -> BlockNode:
    """bdrv_lookup_bs (by device and node name, or by node name only)."""
    node = graph.find_bs(name) if device else graph.get(name)
    if node is None:
        raise QMPError(f"Cannot find device='{name if device else ''}' nor node-name='{name}'")
    return node


def _chain_bottom(top: BlockNode) -> BlockNode:
    node = top
    while node.filtered() is not None:
        node = node.filtered()  # type: ignore[assignment]
    return node


def _writers(node: BlockNode) -> Perm:
    perm = Perm(0)
    for edge in node.parents:
        perm |= edge.perm
    return perm


async def qmp_block_commit(ctx: Any, job_id: str | None, device: str, base_node: str | None, base: str | None,
                           top_node: str | None, top: str | None, backing_file: str | None, speed: int | None,
                           on_error: BlockdevOnError | None, filter_node_name: str | None,
                           auto_finalize: bool | None, auto_dismiss: bool | None) -> None:
    graph = block_graph(ctx)
    bs = _root_node(graph, device)
    if base is not None and base_node is not None:
        raise QMPError("'base-node' and 'base' are mutually exclusive")
    if top is not None and top_node is not None:
        raise QMPError("'top-node' and 'top' are mutually exclusive")
    check_not_blocked(bs)
    top_bs: BlockNode | None = bs
    if top_node is not None:
        top_bs = _lookup(graph, top_node, device=False)
        if not chain_contains(bs, top_bs):
            raise QMPError(f"'{top_node}' is not in this backing file chain")
    elif top is not None and bs.filename() != top:
        top_bs = find_backing_image(bs, top)
    if top_bs is None:
        raise QMPError(f"Top image file {top} not found")
    if base_node is not None:
        base_bs = _lookup(graph, base_node, device=False)
        if not chain_contains(top_bs, base_bs):
            raise QMPError(f"'{base_node}' is not in this backing file chain")
    elif base is not None:
        found = find_backing_image(top_bs, base)
        if found is None:
            raise QMPError(f"Can't find '{base}' in the backing chain")
        base_bs = found
    else:
        base_bs = _chain_bottom(top_bs)
    for node in chain_between(top_bs, base_bs.filtered()):
        check_not_blocked(node)
    if top_bs is base_bs:
        raise QMPError("cannot commit an image into itself")
    finalize, dismiss = auto_finalize is not False, auto_dismiss is not False
    job_name = job_id if job_id is not None else device_name(bs)
    if skip_filters(top_bs) is skip_filters(bs) or _writers(top_bs) & Perm.WRITE:
        if backing_file is not None:
            if top_bs is bs:
                raise QMPError("'backing-file' specified, but 'top' is the active layer")
            raise QMPError("'backing-file' specified, but 'top' has a writer on it")
        from vmd.block.jobs.mirror import start_active_commit
        await start_active_commit(ctx.daemon, job_name, top_bs, base_bs, on_error=on_error, speed=speed or 0,
                                  filter_node_name=filter_node_name, auto_finalize=finalize,
                                  auto_dismiss=dismiss)
        return
    overlay = overlay_of(bs, top_bs)
    if overlay is not None:
        check_not_blocked(overlay)
    from vmd.block.jobs.commit import CommitJob
    if skip_filters(top_bs) is skip_filters(base_bs):
        raise QMPError("Invalid files for merge: top and base are the same")
    job = CommitJob(graph, ctx.daemon.jobs, job_name, bs, top_bs, base_bs, on_error=on_error,
                    backing_file=backing_file, speed=speed or 0, auto_finalize=finalize, auto_dismiss=dismiss)
    await job.setup(filter_node_name)
    job.start()


async def qmp_block_stream(ctx: Any, job_id: str | None, device: str, base: str | None, base_node: str | None,
                           backing_file: str | None, bottom: str | None, speed: int | None,
                           on_error: BlockdevOnError | None, filter_node_name: str | None,
                           auto_finalize: bool | None, auto_dismiss: bool | None) -> None:
    graph = block_graph(ctx)
    if base is not None and base_node is not None:
        raise QMPError("'base' and 'base-node' cannot be specified at the same time")
    if base is not None and bottom is not None:
        raise QMPError("'base' and 'bottom' cannot be specified at the same time")
    if bottom is not None and base_node is not None:
        raise QMPError("'bottom' and 'base-node' cannot be specified at the same time")
    bs = _lookup(graph, device)
    base_bs: BlockNode | None = None
    bottom_bs: BlockNode | None = None
    if base is not None:
        base_bs = find_backing_image(bs, base)
        if base_bs is None:
            raise QMPError(f"Can't find '{base}' in the backing chain")
    if base_node is not None:
        base_bs = _lookup(graph, base_node, device=False)
        if base_bs is bs or not chain_contains(bs, base_bs):
            raise QMPError(f"Node '{base_node}' is not a backing image of '{device}'")
    if bottom is not None:
        bottom_bs = _lookup(graph, bottom, device=False)
        if bottom_bs.is_filter:
            raise QMPError(f"Node '{bottom}' is a filter, use a non-filter node as 'bottom'")
        if not chain_contains(bs, bottom_bs):
            raise QMPError(f"Node '{bottom}' is not in a chain starting from '{device}'")
    end = bottom_bs.filtered() if bottom_bs is not None else base_bs
    node: BlockNode | None = bs
    while node is not None and node is not end:
        check_not_blocked(node)
        node = node.filtered()
    if base_bs is None and backing_file is not None:
        raise QMPError("backing file specified, but streaming the entire chain")
    from vmd.block.jobs.stream import start_stream
    job_name = job_id if job_id is not None else device_name(bs)
    await start_stream(ctx.daemon, job_name, bs, end, backing_file=backing_file,
                       speed=speed or 0, on_error=on_error, filter_node_name=filter_node_name,
                       auto_finalize=auto_finalize is not False, auto_dismiss=auto_dismiss is not False)


async def qmp_blockdev_mirror(ctx: Any, job_id: str | None, device: str, target: str, replaces: str | None,
                              sync: MirrorSyncMode, speed: int | None, granularity: int | None,
                              buf_size: int | None, on_source_error: BlockdevOnError | None,
                              on_target_error: BlockdevOnError | None, filter_node_name: str | None,
                              copy_mode: MirrorCopyMode | None, auto_finalize: bool | None,
                              auto_dismiss: bool | None) -> None:
    from vmd.block.jobs.mirror import MirrorRequest, start_blockdev_mirror
    graph = block_graph(ctx)
    bs = _lookup(graph, device)
    target_bs = _lookup(graph, target)
    await start_blockdev_mirror(ctx.daemon, MirrorRequest(
        job_id=job_id, source=bs, target=target_bs, replaces=replaces, sync=sync, speed=speed,
        granularity=granularity, buf_size=buf_size, on_source_error=on_source_error,
        on_target_error=on_target_error, filter_node_name=filter_node_name, copy_mode=copy_mode,
        auto_finalize=auto_finalize, auto_dismiss=auto_dismiss))


async def qmp_drive_mirror(ctx: Any, arg: DriveMirror) -> None:
    from vmd.block.jobs.mirror import start_drive_mirror
    await start_drive_mirror(ctx.daemon, arg)


async def qmp_blockdev_backup(ctx: Any, arg: BlockdevBackup) -> None:
    await run_action(ctx.daemon, TransactionActionKind.BLOCKDEV_BACKUP, arg)


async def qmp_drive_backup(ctx: Any, arg: DriveBackup) -> None:
    await run_action(ctx.daemon, TransactionActionKind.DRIVE_BACKUP, arg)


# -- the legacy block-job-* commands and query-block-jobs --------------------------------


def qmp_query_block_jobs(ctx: Any) -> list[BlockJobInfo]:
    """Every block job with an id, in the job list's order."""
    return [job.block_info() for job in ctx.daemon.jobs
            if isinstance(job, BlockJob) and not job.is_internal()]


def qmp_block_job_set_speed(ctx: Any, device: str, speed: int) -> None:
    find_block_job(ctx.daemon.jobs, device).user_set_speed(speed)


async def qmp_block_job_cancel(ctx: Any, device: str, force: bool | None) -> None:
    job = find_block_job(ctx.daemon.jobs, device)
    if job.user_paused and not force:
        raise QMPError(f"The block job for device '{device}' is currently paused")
    job.user_cancel(bool(force))
    await ctx.daemon.jobs.settle()


def qmp_block_job_pause(ctx: Any, device: str) -> None:
    find_block_job(ctx.daemon.jobs, device).user_pause()


def qmp_block_job_resume(ctx: Any, device: str) -> None:
    find_block_job(ctx.daemon.jobs, device).user_resume()


def qmp_block_job_complete(ctx: Any, device: str) -> None:
    find_block_job(ctx.daemon.jobs, device).user_complete()


async def qmp_block_job_finalize(ctx: Any, id: str) -> None:
    find_block_job(ctx.daemon.jobs, id).finalize()
    await ctx.daemon.jobs.settle()


def qmp_block_job_dismiss(ctx: Any, id: str) -> None:
    find_block_job(ctx.daemon.jobs, id).dismiss()
