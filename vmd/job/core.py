"""The job core, after QEMU 7.2's job.c.

A job is created (``created``), started (``running``: its ``run`` coroutine
becomes an asyncio task), and once ``run`` returns or raises it goes
through its transaction's completion: ``waiting`` until every job of the
transaction is done, ``pending`` (auto-finalized unless a member has
``auto_finalize=False``), then ``prepare``/``commit`` or ``abort``,
``clean``, ``concluded`` and, with ``auto_dismiss``, ``null`` (gone).
Failure or cancellation goes ``aborting`` → ``concluded`` instead.

Every status change of a job with an id emits JOB_STATUS_CHANGE. Jobs must
reach ``await self.pause_point()`` regularly (and check ``is_cancelled()``)
so that pause and cancel take effect, as QEMU's coroutines do: a job is
never interrupted in the middle of its I/O.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

from vmd._generated import events
from vmd._generated.types import JobInfo, JobStatus, JobType, JobVerb
from vmd.errors import QMPError

if TYPE_CHECKING:
    from vmd.job.registry import JobRegistry

log = logging.getLogger(__name__)

S = JobStatus

#: JobSTT: the status changes job.c allows (from → to).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.UNDEFINED: frozenset({S.CREATED}),
    S.CREATED: frozenset({S.RUNNING, S.ABORTING, S.NULL}),
    S.RUNNING: frozenset({S.PAUSED, S.READY, S.WAITING, S.ABORTING}),
    S.PAUSED: frozenset({S.RUNNING}),
    S.READY: frozenset({S.STANDBY, S.WAITING, S.ABORTING}),
    S.STANDBY: frozenset({S.READY}),
    S.WAITING: frozenset({S.PENDING, S.ABORTING}),
    S.PENDING: frozenset({S.ABORTING, S.CONCLUDED}),
    S.ABORTING: frozenset({S.ABORTING, S.CONCLUDED}),
    S.CONCLUDED: frozenset({S.NULL}),
    S.NULL: frozenset(),
}

_ACTIVE = frozenset({S.CREATED, S.RUNNING, S.PAUSED, S.READY, S.STANDBY})

#: JobVerbTable (7.2): the statuses in which each verb is accepted.
VERBS: dict[JobVerb, frozenset[JobStatus]] = {
    JobVerb.CANCEL: _ACTIVE | {S.WAITING, S.PENDING},
    JobVerb.PAUSE: _ACTIVE,
    JobVerb.RESUME: _ACTIVE,
    JobVerb.SET_SPEED: _ACTIVE,
    JobVerb.COMPLETE: frozenset({S.READY, S.STANDBY}),
    JobVerb.FINALIZE: frozenset({S.PENDING}),
    JobVerb.DISMISS: frozenset({S.CONCLUDED}),
}


def id_wellformed(job_id: str) -> bool:
    """QEMU's id_wellformed(): a letter, then letters, digits, '-._'."""
    if not job_id or not (job_id[0].isascii() and job_id[0].isalpha()):
        return False
    return all(c.isascii() and (c.isalnum() or c in "-._")
               for c in job_id[1:])


def error_text(exc: BaseException) -> str:
    """The message a failed job reports (``error`` in query-jobs)."""
    if isinstance(exc, QMPError):
        return exc.desc
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


class JobTxn:
    """Jobs that complete together (QEMU's JobTxn); one per job by default.

    ``jobs`` lists the newest first (QEMU inserts at the head), the order
    in which a transaction's jobs go pending and are finalized."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.aborting = False

    def apply(self, fn: Callable[[Job], int | None]) -> int:
        """Call ``fn`` on each member until one returns non-zero."""
        for job in list(self.jobs):
            rc = fn(job)
            if rc:
                return rc
        return 0


class Job:
    """A background job; subclasses set ``job_type`` and define ``run``.

    Optional hooks, called on the event loop: ``prepare`` (may raise to
    fail the whole transaction), ``commit`` / ``abort`` (exactly one of
    them), ``clean``; ``complete`` for jobs that can be completed from
    ``ready`` (set ``can_complete``); ``on_cancel(force) -> force`` for
    jobs with a soft cancel; ``on_pause`` / ``on_resume``; and the event
    hooks ``event_ready`` / ``event_pending`` / ``event_completed`` /
    ``event_cancelled`` that block jobs use for their BLOCK_JOB_* events.
    """

    job_type: ClassVar[JobType]
    can_complete: ClassVar[bool] = False

    def __init__(self, registry: JobRegistry, job_id: str | None, *,
                 auto_finalize: bool = True, auto_dismiss: bool = True,
                 internal: bool = False,
                 txn: JobTxn | None = None) -> None:
        if job_id is not None:
            if internal:
                raise QMPError("Cannot specify job ID for internal job")
            if not id_wellformed(job_id):
                raise QMPError(f"Invalid job ID '{job_id}'")
            if registry.get(job_id) is not None:
                raise QMPError(f"Job ID '{job_id}' already in use")
        elif not internal:
            raise QMPError("An explicit job ID is required")
        self.registry = registry
        self.id = job_id
        self.status = S.UNDEFINED
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self.current_progress = 0
        self.total_progress = 0
        self.error: str | None = None
        self.ret = 0
        self.pause_count = 1       # released by start()
        self.user_paused = False
        self.paused = True
        #: Set while the job is parked (not busy): a drained section waits on it.
        self._parked = asyncio.Event()
        self.busy = False
        self.cancelled = False
        self.force_cancel = False
        self.deferred_to_main_loop = False
        #: The status to go back to when a job parked at a pause point is entered.
        self._paused_from: JobStatus | None = None
        self._finalizing = False
        self._timer_pending = False
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        #: Set when the run is over and the job completed (_completed).
        self._run_over = asyncio.Event()
        self.txn = txn if txn is not None else JobTxn()
        self.txn.jobs.insert(0, self)
        registry.add(self)
        self.state_transition(S.CREATED)

    # ---- state -----------------------------------------------------------

    def state_transition(self, new: JobStatus) -> None:
        """Move to ``new`` (must be allowed); emit JOB_STATUS_CHANGE."""
        old = self.status
        if new not in TRANSITIONS[old]:
            raise AssertionError(f"job {self.id!r}: {old} -> {new}")
        self.status = new
        if new != old and self.id is not None:
            events.qapi_event_send_job_status_change(
                self.registry.emitter, id=self.id, status=new)

    def apply_verb(self, verb: JobVerb) -> None:
        """Refuse ``verb`` in the current status with QEMU's text."""
        if self.status not in VERBS[verb]:
            raise QMPError(f"Job '{self.id}' in state '{self.status.value}' "
                           f"cannot accept command verb '{verb.value}'")

    def is_internal(self) -> bool:
        return self.id is None

    def started(self) -> bool:
        return self.task is not None

    def is_cancelled(self) -> bool:
        """Force-cancelled: the job should stop as soon as it can."""
        return self.cancelled and self.force_cancel

    def cancel_requested(self) -> bool:
        """Any cancel, soft (mirror: finish without pivot) or forced."""
        return self.cancelled

    def is_ready(self) -> bool:
        return self.status in (S.READY, S.STANDBY)

    def is_completed(self) -> bool:
        """Its run is over (job_is_completed: waiting and later)."""
        return self.status in (S.WAITING, S.PENDING, S.ABORTING,
                               S.CONCLUDED, S.NULL)

    @property
    def busy(self) -> bool:
        """Inside its own work; False while parked in sleep/yield/pause."""
        return not self._parked.is_set()

    @busy.setter
    def busy(self, value: bool) -> None:
        if value:
            self._parked.clear()
        else:
            self._parked.set()

    async def wait_parked(self) -> None:
        """Return once the job is parked or its run is over (the part of
        QEMU's drained_poll a job answers)."""
        while self.busy and self.task is not None and not self.task.done() \
                and not self.deferred_to_main_loop:
            await self._parked.wait()

    def should_pause(self) -> bool:
        return self.pause_count > 0

    def info(self) -> JobInfo:
        assert self.id is not None
        return JobInfo(id=self.id, type=self.job_type, status=self.status,
                       current_progress=self.current_progress,
                       total_progress=self.total_progress,
                       error=self.error)

    # ---- progress --------------------------------------------------------

    def progress_update(self, done: int) -> None:
        self.current_progress += done

    def progress_set_remaining(self, remaining: int) -> None:
        self.total_progress = self.current_progress + remaining

    def progress_increase_remaining(self, delta: int) -> None:
        self.total_progress += delta

    # ---- the coroutine side ----------------------------------------------

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start ``run`` as a task: created → running."""
        assert self.status == S.CREATED and self.task is None
        self.pause_count -= 1
        self.busy = True
        self.paused = False
        self.state_transition(S.RUNNING)
        self.task = asyncio.get_running_loop().create_task(
            self._co_entry(), name=f"job {self.id}")

    async def _co_entry(self) -> None:
        try:
            await self.pause_point()
            await self.run()
        except asyncio.CancelledError:
            self.ret = -errno.ECANCELED
            if self.error is None and not self.is_cancelled():
                self.error = os.strerror(errno.ECANCELED)
        except Exception as exc:  # the job failed: report, don't crash
            log.debug("job %s failed", self.id, exc_info=True)
            self.ret = -(getattr(exc, "errno", None) or errno.EIO)
            self.error = error_text(exc)
        self.busy = True
        self.deferred_to_main_loop = True
        asyncio.get_running_loop().call_soon(self._exit)

    def enter(self) -> None:
        """Wake the job if it is parked in sleep/yield/pause (job_enter).

        A busy job (inside its own awaits, e.g. I/O) is not disturbed; it
        sees the request at its next pause point.
        """
        if self.task is None or self.deferred_to_main_loop or self.busy:
            return
        self.busy = True   # as QEMU's job_enter_cond: busy from the wake-up on
        self._wake.set()

    def _leave_pause(self) -> None:
        """A job parked at a pause point goes back to its status (paused →
        running, standby → ready)."""
        status, self._paused_from = self._paused_from, None
        if status is not None:
            self.paused = False
            self.state_transition(status)

    def _woken_by_command(self) -> None:
        """QEMU's job_enter runs the job's coroutine at once, so a job that
        a command (resume, cancel) wakes at its pause point leaves it
        before the command replies; vmd's task runs later, so the command
        does that step here. A drained section that ends leaves it to the
        task: moving only the status change forward would let the next
        command overtake what QEMU's job does first (its first copy)."""
        if self._wake.is_set():
            self._leave_pause()

    def enter_if_sleeping(self) -> None:
        """Wake the job only from a timed sleep (job_enter_cond with
        job_timer_pending): a paused job stays paused."""
        if self._timer_pending:
            self.enter()

    async def _yield(self, timeout: float | None = None) -> None:
        self.busy = False
        self._timer_pending = timeout is not None
        try:
            if timeout is None:
                await self._wake.wait()
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            self._timer_pending = False
            self._wake.clear()
            self.busy = True

    async def pause_point(self) -> None:
        """Park here while paused: running → paused, ready → standby."""
        if not self.should_pause() or self.is_cancelled():
            return
        self.on_pause()
        if self.should_pause() and not self.is_cancelled():
            status = self.status
            self.state_transition(S.STANDBY if status == S.READY
                                  else S.PAUSED)
            self.paused = True
            self._paused_from = status
            await self._yield()
            self._leave_pause()
        self.on_resume()

    async def sleep(self, seconds: float) -> None:
        """Sleep (rate limiting), cut short by enter(); then a pause point.
        A job cancelled while it was busy does not sleep (job_sleep_ns)."""
        if self.is_cancelled():
            return
        if not self.should_pause():
            await self._yield(max(seconds, 0.0))
        await self.pause_point()

    async def yield_(self) -> None:
        """Wait until entered (a ready job waiting for complete/cancel);
        not if cancelled meanwhile (job_yield)."""
        if self.is_cancelled():
            return
        if not self.should_pause():
            await self._yield()
        await self.pause_point()

    def transition_to_ready(self) -> None:
        self.state_transition(S.READY)
        self.event_ready()

    # ---- pause / resume --------------------------------------------------

    def pause(self) -> None:
        """Internal pause request (job_pause)."""
        self.pause_count += 1
        if not self.paused:
            self.enter()

    def resume(self) -> None:
        """Drop one pause request; wake the job when none is left."""
        assert self.pause_count > 0
        self.pause_count -= 1
        if self.pause_count == 0:
            self.enter()

    def user_pause(self) -> None:
        self.apply_verb(JobVerb.PAUSE)
        if self.user_paused:
            raise QMPError("Job is already paused")
        self.user_paused = True
        self.pause()

    def user_resume(self) -> None:
        if not self.user_paused or self.pause_count <= 0:
            raise QMPError("Can't resume a job that was not paused")
        self.apply_verb(JobVerb.RESUME)
        self.on_user_resume()
        self.user_paused = False
        self.resume()
        self._woken_by_command()

    # ---- complete / cancel -----------------------------------------------

    def user_complete(self) -> None:
        self.apply_verb(JobVerb.COMPLETE)
        if self.cancel_requested() or not self.can_complete:
            raise QMPError(f"The active block job '{self.id}' cannot be "
                           "completed")
        self.complete()

    def user_cancel(self, force: bool) -> None:
        self.apply_verb(JobVerb.CANCEL)
        self.cancel(force)

    def _cancel_async(self, force: bool) -> None:
        force = self.on_cancel(force)
        if self.user_paused:
            self.on_user_resume()
            self.user_paused = False
            assert self.pause_count > 0
            self.pause_count -= 1
        # a soft cancel of a job that is already done is ignored
        if force or not self.deferred_to_main_loop:
            self.cancelled = True
            self.force_cancel |= force

    def cancel(self, force: bool) -> None:
        """job_cancel: dismiss a concluded job, else request cancellation."""
        if self.status == S.CONCLUDED:
            self._do_dismiss()
            return
        self._cancel_async(force)
        if not self.started():
            self._spawn(self._completed())
        elif self.deferred_to_main_loop:
            if self.is_cancelled():
                self._spawn(self._completed_txn_abort())
        else:
            self.enter()
            self._woken_by_command()

    # ---- completion (main-loop side) -------------------------------------
    #
    # QEMU finalizes under the big lock in one go. vmd's hooks may await
    # (graph changes run in drained sections, images are rewritten), so the
    # completion steps run as a task of the registry; the commands that
    # start them (job-finalize, job-cancel, ...) wait until the registry has
    # settled, so their events still come before their reply, as in QEMU.

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self.registry.spawn(work)

    def _exit(self) -> None:
        self.busy = False
        self._spawn(self._completed())

    def _update_rc(self) -> int:
        if not self.ret and self.is_cancelled():
            self.ret = -errno.ECANCELED
        if self.ret:
            if self.error is None:
                self.error = os.strerror(-self.ret)
            self.state_transition(S.ABORTING)
        return self.ret

    async def _completed(self) -> None:
        if self.is_completed():
            return
        failed = self._update_rc()
        self._run_over.set()
        if failed:
            await self._completed_txn_abort()
        else:
            await self._completed_txn_success()

    async def _completed_txn_success(self) -> None:
        self.state_transition(S.WAITING)
        if not all(job.is_completed() for job in self.txn.jobs):
            return
        self.txn.apply(Job._transition_to_pending)
        if not self.txn.apply(lambda job: int(not job.auto_finalize)):
            await self._do_finalize()

    def _transition_to_pending(self) -> None:
        self.state_transition(S.PENDING)
        if not self.auto_finalize:
            self.event_pending()

    async def _completed_txn_abort(self) -> None:
        """Fail the transaction: force-cancel the others, then finalize
        every member in the transaction's order, each once its run is over
        (QEMU's job_finish_sync). A member aborting because of this one
        leaves everything to it."""
        txn = self.txn
        if txn.aborting:
            return
        txn.aborting = True
        for other in list(txn.jobs):
            if other is not self:
                other._cancel_async(True)
                other.enter()
        while txn.jobs:
            other = txn.jobs[0]
            if other._finalizing:  # finalized by another task right now
                await other.wait_concluded()
                continue
            if not other.is_completed():
                await other._finish_sync()
            async with self.registry.finalizing:
                await other._finalize_single()

    async def _finish_sync(self) -> None:
        """Wait until a cancelled member's run is over (job_finish_sync);
        one that never started aborts at once."""
        if not self.started():
            self._update_rc()
            return
        while not self.is_completed():
            await self._run_over.wait()
            self._run_over.clear()

    async def _prepare(self) -> int:
        if self.ret == 0:
            try:
                await self.prepare()
            except Exception as exc:
                log.debug("job %s: prepare failed", self.id, exc_info=True)
                self.ret = -(getattr(exc, "errno", None) or errno.EIO)
                self.error = error_text(exc)
        return self.ret

    async def _do_finalize(self) -> None:
        async with self.registry.finalizing:
            for job in list(self.txn.jobs):
                if await job._prepare():
                    break
            else:
                for job in list(self.txn.jobs):
                    await job._finalize_single()
                return
        await self._completed_txn_abort()

    def finalize(self) -> None:
        """job-finalize: finalize the whole (pending) transaction."""
        self.apply_verb(JobVerb.FINALIZE)
        self._spawn(self._do_finalize())

    async def _finalize_single(self) -> None:
        if self._finalizing:
            return
        self._finalizing = True
        self._update_rc()   # late failures (prepare, cancel) abort
        assert self.is_completed()
        try:
            if self.ret == 0:
                await self.commit()
            else:
                await self.abort()
            await self.clean()
        except Exception:  # QEMU's commit/abort/clean cannot fail
            log.exception("job %s: finalizing failed", self.id)
        if self.started():
            if self.is_cancelled():
                self.event_cancelled()
            else:
                self.event_completed()
        if self in self.txn.jobs:
            self.txn.jobs.remove(self)
        self._conclude()

    def _conclude(self) -> None:
        self.state_transition(S.CONCLUDED)
        self._done.set()
        if self.auto_dismiss or not self.started():
            self._do_dismiss()

    def dismiss(self) -> None:
        """job-dismiss."""
        self.apply_verb(JobVerb.DISMISS)
        self._do_dismiss()

    def _do_dismiss(self) -> None:
        self.paused = False
        self.deferred_to_main_loop = True
        if self in self.txn.jobs:
            self.txn.jobs.remove(self)
        self.state_transition(S.NULL)
        self.registry.remove(self)
        self._done.set()

    async def wait_concluded(self) -> None:
        """Wait until the job is concluded (or gone)."""
        await self._done.wait()

    # ---- hooks for subclasses --------------------------------------------

    async def prepare(self) -> None:
        """Before commit; raising fails the whole transaction."""

    async def commit(self) -> None:
        """The job succeeded: apply its graph changes."""

    async def abort(self) -> None:
        """The job failed or was cancelled: undo what it did."""

    async def clean(self) -> None:
        """After commit or abort, in both cases."""

    def complete(self) -> None:
        """job-complete on a ready job (only if ``can_complete``)."""

    def on_cancel(self, force: bool) -> bool:
        """A cancel request; returns whether it is forced (default: yes)."""
        return True

    def on_pause(self) -> None:
        """The job is about to park at a pause point."""

    def on_resume(self) -> None:
        """The job leaves a pause point."""

    def on_user_resume(self) -> None:
        """job-resume / a cancel clears a user pause (e.g. io-status)."""

    def event_ready(self) -> None:
        """BLOCK_JOB_READY for block jobs."""

    def event_pending(self) -> None:
        """BLOCK_JOB_PENDING for block jobs (manual finalize only)."""

    def event_completed(self) -> None:
        """BLOCK_JOB_COMPLETED for block jobs."""

    def event_cancelled(self) -> None:
        """BLOCK_JOB_CANCELLED for block jobs."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r} {self.status.value}>"

