"""Block jobs on the job core (QEMU's blockjob.c).

A block job is a ``Job`` that works on block nodes. It reaches them only
through the graph's edges:

- a ``BlockBackend`` for each node it reads or writes through one (as
  QEMU's commit, stream and mirror have), so ``blockdev-del`` of that
  node says ``Node 'x' is in use``;
- a ``JobChild`` edge on every node it touches (QEMU's ``child_job``),
  holding the permissions the job needs there and sharing what it allows
  others. Each such edge carries the job's op blocker: other commands on
  the node (a second job, ``blockdev-del``, a snapshot) are refused with
  ``Node 'x' is busy: block device is in use by block job: commit``.
  A drained section over one of these nodes pauses the job at its next
  pause point and waits until it is parked there.

On top of the core it adds the rate limit (``speed``), the I/O status and
the error policies (``on-error``, ``on-source-error``, ``on-target-error``)
with ``BLOCK_JOB_ERROR``, ``query-block-jobs``' ``BlockJobInfo`` and the
BLOCK_JOB_* events. Everything here belongs to the event loop thread.

Where vmd departs from QEMU: ``x-debug-query-block-graph`` shows one
``block-job`` entry per edge of the job (QEMU shows one entry with several
edges).
"""

from __future__ import annotations

import asyncio
import errno
from typing import TYPE_CHECKING, Any

from vmd._generated import events
from vmd._generated.types import (
    BlockDeviceIoStatus,
    BlockdevOnError,
    BlockErrorAction,
    BlockJobInfo,
    IoOperationType,
    JobStatus,
    JobVerb,
)
from vmd.block.backend import BlockBackend, device_name
from vmd.block.edge import Edge, attach, freeze_chain, unfreeze
from vmd.block.perm import ALL, NO_ROLE, NONE, Perm
from vmd.errors import QMPError
from vmd.job.core import Job, JobTxn
from vmd.job.ratelimit import RateLimit

if TYPE_CHECKING:
    from vmd.block.graph import BlockGraph
    from vmd.block.node import BlockNode


class JobChild(BlockBackend):
    """One node a block job touches (QEMU's child_job edge)."""

    kind = "block-job"

    def __init__(self, job: BlockJob, role: str, perm: Perm, shared: Perm) -> None:
        super().__init__(perm, shared, name=job.id or "", registry=job.graph.backends)
        self.job = job
        self.role = role

    def attach(self, node: BlockNode) -> None:
        self.edge = attach(self, node, self.role, NO_ROLE, self.perm, self.shared)
        if self._registry is not None:
            self._registry.append(self)

    def parent_desc(self) -> str:
        return f"{self.job.job_type.value} job '{self.job.id}'"

    def blocker(self) -> str:
        """The op blocker this edge puts on its node."""
        return f"block device is in use by block job: {self.job.job_type.value}"

    def quiesce_begin(self) -> None:
        self.job.pause()

    def quiesce_end(self) -> None:
        self.job.resume()

    async def wait_idle(self) -> None:
        await self.job.wait_parked()


def job_blocker(node: BlockNode) -> str | None:
    """The newest block job's op blocker on ``node``, if any."""
    for edge in reversed(node.parents):
        if isinstance(edge.parent, JobChild):
            return edge.parent.blocker()
    return None


def check_not_blocked(node: BlockNode) -> None:
    """Refuse a job operation on a node another job holds (backing nodes
    do not block jobs: QEMU unblocks the job operations for them). The
    node is named by its device when it has one, as QEMU's
    bdrv_get_device_or_node_name."""
    reason = job_blocker(node)
    if reason is not None:
        raise QMPError(f"Node '{device_name(node) or node.node_name}' is busy: {reason}")


def errno_of(exc: BaseException) -> int:
    """The errno an I/O failure stands for (EIO when it names none)."""
    code = getattr(exc, "errno", None)
    return code if isinstance(code, int) and code > 0 else errno.EIO


class BlockJob(Job):
    """A job on block nodes: edges, speed, I/O status, error policies."""

    def __init__(self, graph: BlockGraph, registry: Any, job_id: str | None, node: BlockNode, *, speed: int = 0,
                 auto_finalize: bool = True, auto_dismiss: bool = True,
                 txn: JobTxn | None = None) -> None:
        super().__init__(registry, job_id, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss, txn=txn)
        self.graph = graph
        self.speed = 0
        self.limit = RateLimit()
        self.iostatus = BlockDeviceIoStatus.OK
        self.children: list[JobChild] = []
        self.backends: list[BlockBackend] = []
        #: The links the job froze for its run (``freeze_chain``).
        self.frozen: list[Edge] = []
        try:
            self.add_node("main node", node, NONE, ALL)
            self.set_speed(speed)
        except BaseException:
            self.early_fail()
            raise

    # -- edges -------------------------------------------------------------------

    def add_backend(self, node: BlockNode, perm: Perm, shared: Perm) -> BlockBackend:
        """A BlockBackend of the job on ``node`` (blk_new + blk_insert_bs)."""
        backend = self.graph.backend(perm, shared)
        backend.attach(node)
        self.backends.append(backend)
        return backend

    def add_node(self, role: str, node: BlockNode, perm: Perm, shared: Perm) -> JobChild:
        """block_job_add_bdrv: an edge to ``node`` with the job's blocker."""
        holder = JobChild(self, role, perm, shared)
        holder.attach(node)
        self.children.append(holder)
        return holder

    def freeze_chain(self, top: BlockNode, base: BlockNode | None) -> None:
        """Freeze the filter and backing links from ``top`` down to ``base``
        while the job runs (bdrv_freeze_backing_chain), so nobody else
        changes the chain it works on; ``remove_edges`` thaws them."""
        self.frozen = freeze_chain(top, base)

    def remove_edges(self) -> None:
        """Thaw the frozen chain and let go of every node
        (block_job_remove_all_bdrv and the job's backends), newest first."""
        unfreeze(self.frozen)
        self.frozen = []
        for holder in reversed(self.children):
            holder.detach()
        self.children.clear()
        for backend in reversed(self.backends):
            backend.detach()
        self.backends.clear()

    def early_fail(self) -> None:
        """job_early_fail: a job that never started goes away (created → null)."""
        self.remove_edges()
        if self.status == JobStatus.CREATED:
            self._do_dismiss()

    async def clean(self) -> None:
        self.remove_edges()

    # -- speed -----------------------------------------------------------------------

    def set_speed(self, speed: int) -> None:
        """block_job_set_speed: QEMU's checks, then wake a job that sleeps
        on a lower limit."""
        if speed < 0:
            raise QMPError("Parameter 'speed' expects a non-negative value")
        old, self.speed = self.speed, speed
        self.limit.set_speed(speed)
        if speed and speed <= old:
            return
        self.enter_if_sleeping()

    def user_set_speed(self, speed: int) -> None:
        self.apply_verb(JobVerb.SET_SPEED)
        self.set_speed(speed)

    def ratelimit_processed(self, n: int) -> None:
        """Account ``n`` bytes copied against the limit."""
        self.limit.delay(n)

    async def ratelimit_sleep(self) -> None:
        """Sleep as long as the limit asks (a pause point in any case):
        QEMU's block_job_ratelimit_sleep."""
        while True:
            delay = self.limit.delay(0)
            if not delay:
                await asyncio.sleep(0)
                await self.pause_point()
                return
            await self.sleep(delay)
            if self.is_cancelled():
                return

    # -- I/O errors ------------------------------------------------------------------

    def error_action(self, policy: BlockdevOnError | None, is_read: bool,
                     exc: BaseException) -> BlockErrorAction:
        """block_job_error_action: choose, report (BLOCK_JOB_ERROR), stop."""
        code = errno_of(exc)
        policy = policy or BlockdevOnError.REPORT
        if policy in (BlockdevOnError.ENOSPC, BlockdevOnError.AUTO):
            action = BlockErrorAction.STOP if code == errno.ENOSPC else BlockErrorAction.REPORT
        elif policy == BlockdevOnError.STOP:
            action = BlockErrorAction.STOP
        elif policy == BlockdevOnError.IGNORE:
            action = BlockErrorAction.IGNORE
        else:
            action = BlockErrorAction.REPORT
        if not self.is_cancelled():
            events.qapi_event_send_block_job_error(
                self.registry.emitter, device=self.id or "",
                operation=IoOperationType.READ if is_read else IoOperationType.WRITE,
                action=action)
        if action == BlockErrorAction.STOP:
            if not self.user_paused:
                self.pause()
                self.user_paused = True
            if self.iostatus == BlockDeviceIoStatus.OK:
                self.iostatus = (BlockDeviceIoStatus.NOSPACE if code == errno.ENOSPC
                                 else BlockDeviceIoStatus.FAILED)
        return action

    def on_user_resume(self) -> None:
        self.iostatus = BlockDeviceIoStatus.OK

    # -- queries and events ------------------------------------------------------------

    def block_info(self) -> BlockJobInfo:
        """query-block-jobs' entry (block_job_query)."""
        error = None
        if self.ret:
            error = self.error
        return BlockJobInfo(
            type=self.job_type.value, device=self.id or "",
            len=self.total_progress, offset=self.current_progress,
            busy=self.busy, paused=self.pause_count > 0, speed=self.speed,
            io_status=self.iostatus, ready=self.is_ready(), status=self.status,
            auto_finalize=self.auto_finalize, auto_dismiss=self.auto_dismiss,
            error=error)

    def _progress_event(self) -> dict[str, Any]:
        return {"type": self.job_type, "device": self.id or "",
                "len": self.total_progress, "offset": self.current_progress,
                "speed": self.speed}

    def event_ready(self) -> None:
        if self.id is not None:
            events.qapi_event_send_block_job_ready(self.registry.emitter, **self._progress_event())

    def event_pending(self) -> None:
        if self.id is not None:
            events.qapi_event_send_block_job_pending(self.registry.emitter, type=self.job_type, id=self.id)

    def event_completed(self) -> None:
        if self.id is not None:
            events.qapi_event_send_block_job_completed(
                self.registry.emitter, **self._progress_event(),
                error=(self.error or "Input/output error") if self.ret else None)

    def event_cancelled(self) -> None:
        if self.id is not None:
            events.qapi_event_send_block_job_cancelled(self.registry.emitter, **self._progress_event())


def find_block_job(registry: Any, job_id: str) -> BlockJob:
    """The block job ``job_id`` or QEMU's DeviceNotActive error."""
    job = registry.get(job_id)
    if not isinstance(job, BlockJob):
        raise QMPError(f"Block job '{job_id}' not found", "DeviceNotActive")
    return job
