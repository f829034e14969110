"""block-stream (QEMU's block/stream.c).

The job copies into ``device`` what its backing chain holds down to the
``bottom`` image (included), several chunks at a time (``CopyWindow``), through a ``copy-on-read``
filter that it puts above ``device`` while it runs (so guest reads of
not-yet-copied data are copied as well, and a copy never overwrites a
newer guest write). On success ``device``'s backing becomes the image
below ``bottom`` (none when the whole chain was streamed) and its header
says so; the streamed images are let go of.
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import BlockdevOnError, BlockErrorAction, JobType
from vmd.block.copy import CopyFailed
from vmd.block.edge import Transaction, check_freezable, detach, drained, refresh_perms
from vmd.block.graph import BlockGraph
from vmd.block.jobs.chain import allocated_above, chain_between, skip_filters
from vmd.block.jobs.commit import record_backing
from vmd.block.jobs.filters import StreamCorNode, drop_filter, insert_filter
from vmd.block.jobs.window import CopyWindow, Then
from vmd.block.node import BlockNode, Status
from vmd.block.perm import Perm, Role
from vmd.job.blockjob import BlockJob

#: STREAM_CHUNK.
CHUNK = 512 * 1024
_BASIC = Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED


class StreamJob(BlockJob):
    job_type = JobType.STREAM

    def __init__(self, graph: BlockGraph, registry: Any, job_id: str, cor: StreamCorNode, target: BlockNode,
                 base: BlockNode | None, *, speed: int, on_error: BlockdevOnError | None,
                 backing_file: str | None, read_only: bool, auto_finalize: bool, auto_dismiss: bool) -> None:
        super().__init__(graph, registry, job_id, cor, speed=speed,
                         auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
        self.cor = cor
        self.target = target
        self.base = base
        self.on_error = on_error
        self.backing_file = backing_file
        self.target_read_only = read_only
        #: The lowest image streamed (QEMU's above_base).
        self.above_base = chain_between(target, base)[-1]
        #: The first error an ``ignore`` policy let pass (the job's error).
        self._failure: Exception | None = None
        try:
            self.add_backend(cor, Perm.CONSISTENT_READ, _BASIC | Perm.WRITE)
            self.add_node("active node", target, Perm(0), _BASIC | Perm.WRITE)
            for node in chain_between(target.backing, base) if target.backing is not None else []:
                self.add_node("intermediate node", node, Perm(0), _BASIC)
            # down to the image above base: the link into base stays free
            # (another job may replace base meanwhile, as iotest 258 does)
            self.freeze_chain(cor, self.above_base)
        except BaseException:
            self.early_fail()
            raise

    async def run(self) -> None:
        target = self.target
        if target.backing is None or target.backing is self.base:
            return
        length = target.total_size
        self.progress_set_remaining(length)
        await CopyWindow(self, CHUNK).run(length, self._plan, self._copy, self._failed)
        if self._failure is not None:  # an ignored error keeps the backing file
            raise self._failure

    async def _plan(self, offset: int, limit: int) -> tuple[bool, int]:
        """Whether the next bytes come from the chain above the base."""
        target = self.target
        extent = await target.block_status(offset, limit)
        if extent.status & Status.ALLOCATED or target.backing is None:
            return False, extent.length
        return await allocated_above(target.backing, self.base, offset, extent.length)

    async def _copy(self, offset: int, n: int, buf: memoryview) -> None:
        """Pull the chunk through the copy-on-read filter in requests of
        QEMU's size, one after the other, so that a failure happens where
        QEMU's would, after as many bytes as QEMU had copied."""
        done = 0
        try:
            while done < n:
                done += await self.cor.copy_on_read(offset + done, buf[done:min(n, done + CHUNK)])
        except Exception as exc:
            raise CopyFailed(exc, True, done) from exc

    def _failed(self, failure: CopyFailed) -> Then:
        """stream_run: stop retries, ignore goes on (the job fails at the
        end), report fails it now; the first error is the job's."""
        action = self.error_action(self.on_error, True, failure.error)
        if action == BlockErrorAction.STOP:
            return Then.RETRY
        self._failure = self._failure or failure.error
        if action == BlockErrorAction.REPORT:
            raise self._failure
        return Then.SKIP

    async def prepare(self) -> None:
        """The backing link goes to the image below the streamed ones: what
        is below the image above base now (another job may have replaced
        base meanwhile, as QEMU's stream_prepare finds it)."""
        target, base = self.target, self.above_base.filtered()
        self.remove_edges()
        edge = target.children.get("backing")
        if edge is None or edge.child is base:
            return
        async with drained(target):
            detach(edge)
            if base is not None:
                target.attach_child("backing", base, Role.COW)
        image = skip_filters(base)  # the header names the image below a filter (another job's)
        await record_backing(target, (self.backing_file or image.filename()) if image is not None else None,
                             image.driver if image is not None else None)
        if not edge.child.parents and edge.child not in self.graph.owned:
            await self.graph.close_tree(edge.child)

    async def clean(self) -> None:
        await super().clean()
        if self.cor.parents or self.graph.get(self.cor.node_name) is self.cor:
            await drop_filter(self.graph, self.cor)
        if self.target_read_only and not self.target.read_only:
            await self.target.reopen_read_only()
            with Transaction() as tran:
                refresh_perms([self.target], tran)


async def start_stream(daemon: Any, job_id: str, target: BlockNode, base: BlockNode | None, *,
                       backing_file: str | None, speed: int, on_error: BlockdevOnError | None,
                       filter_node_name: str | None, auto_finalize: bool, auto_dismiss: bool) -> None:
    """stream_start: ``target`` read-write, the copy-on-read filter, the job."""
    graph: BlockGraph = daemon.block
    check_freezable(target, chain_between(target, base)[-1])  # before the filter drains anything
    read_only = target.read_only
    if read_only:
        await target.reopen_read_write()
    cor: StreamCorNode | None = None
    try:
        cor = StreamCorNode("", target, base)
        await insert_filter(graph, cor, target, filter_node_name, implicit=True)
        job = StreamJob(graph, daemon.jobs, job_id, cor, target, base, speed=speed, on_error=on_error,
                        backing_file=backing_file, read_only=read_only, auto_finalize=auto_finalize,
                        auto_dismiss=auto_dismiss)
    except BaseException:
        if cor is not None and cor.parents:
            await drop_filter(graph, cor)
        if read_only:
            await target.reopen_read_only()
            with Transaction() as tran:
                refresh_perms([target], tran)
        raise
    job.start()
