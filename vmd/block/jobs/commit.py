"""block-commit below the active layer (QEMU's block/commit.c).

The job copies what the images from ``top`` down to just above ``base``
hold into ``base``, several chunks at a time (``CopyWindow``), then (on success) points the overlay
of ``top`` at ``base``, records ``base`` as its backing file in its header,
and lets go of the images in between. While it runs:

- a ``commit_top`` filter sits above ``top`` so that the job may write to
  ``base`` whatever the overlay's users forbid;
- ``base`` is reopened read-write (and read-only again at the end if it
  was);
- the job holds ``top`` and every image down to ``base`` with QEMU's
  shared permissions, and its op blocker refuses other jobs and
  ``blockdev-del`` there.

Commit of the active layer is a mirror (``vmd.block.jobs.mirror``).
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import BlockdevOnError, BlockErrorAction, JobType
from vmd.block.copy import CopyFailed, copy_range
from vmd.block.edge import Transaction, drained, refresh_perms, replace_node
from vmd.block.graph import BlockGraph
from vmd.block.jobs.chain import allocated_above, chain_between
from vmd.block.jobs.filters import CommitTopNode, drop_filter, insert_filter
from vmd.block.jobs.window import CopyWindow, Then
from vmd.block.node import BlockNode
from vmd.block.perm import ALL, Perm
from vmd.job.blockjob import BlockJob

#: COMMIT_BUFFER_SIZE.
CHUNK = 512 * 1024


class CommitJob(BlockJob):
    job_type = JobType.COMMIT

    def __init__(self, graph: BlockGraph, registry: Any, job_id: str, active: BlockNode, top: BlockNode,
                 base: BlockNode, *, speed: int, on_error: BlockdevOnError | None,
                 backing_file: str | None, auto_finalize: bool, auto_dismiss: bool) -> None:
        super().__init__(graph, registry, job_id, active, speed=speed,
                         auto_finalize=auto_finalize, auto_dismiss=auto_dismiss)
        self.active = active
        self.top = top
        self.base = base
        self.on_error = on_error
        self.backing_file = backing_file
        self.base_read_only = base.read_only
        self.filter: CommitTopNode | None = None

    async def setup(self, filter_node_name: str | None) -> None:
        """commit_start after block_job_create: reopen base read-write,
        insert the filter, take the nodes. Fails the job early on error."""
        try:
            if self.base_read_only:
                await self.base.reopen_read_write()
            self.filter = CommitTopNode("", self.top)
            await insert_filter(self.graph, self.filter, self.top, filter_node_name, implicit=True)
            self.freeze_chain(self.filter, self.base)
            shared = Perm.WRITE_UNCHANGED | Perm.WRITE
            for node in chain_between(self.top, self.base):
                self.add_node("intermediate node", node, Perm(0), shared)
            self.add_node("base", self.base, Perm(0), ALL)
            base_perm = Perm.CONSISTENT_READ | Perm.WRITE
            if self.base.total_size < self.top.total_size:
                base_perm |= Perm.RESIZE
            self.base_blk = self.add_backend(self.base, base_perm,
                                             Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED)
            self.add_backend(self.top, Perm(0), ALL)
        except BaseException:
            await self._undo_setup()
            self.early_fail()
            raise

    async def _undo_setup(self) -> None:
        self.remove_edges()
        if self.filter is not None and self.filter.parents:
            await drop_filter(self.graph, self.filter)
        self.filter = None
        if self.base_read_only and not self.base.read_only:
            await self.base.reopen_read_only()
            with Transaction() as tran:
                refresh_perms([self.base], tran)

    async def run(self) -> None:
        length = self.top.total_size
        self.progress_set_remaining(length)
        if self.base.total_size < length:
            await self.base.truncate(length)
        await CopyWindow(self, CHUNK).run(length, self._plan, self._copy, self._failed)

    async def _plan(self, offset: int, limit: int) -> tuple[bool, int]:
        """Whether the next bytes lie above the base (and must be copied)."""
        return await allocated_above(self.top, self.base, offset, limit)

    async def _copy(self, offset: int, n: int, buf: memoryview) -> None:
        """One chunk from top's chain into base."""
        await copy_range(self.top, self.base, offset, buf)

    def _failed(self, failure: CopyFailed) -> Then:
        """commit_run: report fails the job, anything else retries."""
        if self.error_action(self.on_error, failure.is_read, failure.error) == BlockErrorAction.REPORT:
            raise failure.error
        return Then.RETRY

    async def prepare(self) -> None:
        """bdrv_drop_intermediate: the overlay's backing edge goes to base,
        its header names base (or ``backing-file``)."""
        assert self.filter is not None
        self.remove_edges()
        filt, self.filter = self.filter, None
        overlays = [edge.parent for edge in filt.parents if isinstance(edge.parent, BlockNode)]
        async with drained(filt, self.base):
            with Transaction() as tran:
                replace_node(filt, self.base, tran)
        name = self.backing_file or self.base.filename()
        for overlay in overlays:
            await record_backing(overlay, name, self.base.driver)
        await self.graph.close_tree(filt)

    async def abort(self) -> None:
        self.remove_edges()
        if self.filter is not None:
            await drop_filter(self.graph, self.filter)
            self.filter = None

    async def clean(self) -> None:
        await super().clean()
        if self.base_read_only and not self.base.read_only:
            await self.base.reopen_read_only()
            with Transaction() as tran:
                refresh_perms([self.base], tran)


async def record_backing(overlay: BlockNode, name: str | None, fmt_name: str | None) -> None:
    """Write the new backing file name into an overlay's header (a
    read-only overlay is made writable for the write, then read-only)."""
    change = getattr(overlay, "change_backing_file", None)
    if change is None:
        return
    was_read_only = overlay.read_only
    if was_read_only:
        await overlay.reopen_read_write()
    try:
        await change(name, fmt_name)
    finally:
        if was_read_only:
            await overlay.reopen_read_only()
