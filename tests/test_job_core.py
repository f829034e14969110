"""The job core (vmd/job): QEMU 7.2 job.c's state machine, verbs, events."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RawQMP, VmdProcess
from vmd._generated.types import JobStatus, JobType, JobVerb
from vmd.job.core import TRANSITIONS, VERBS, Job, JobTxn, id_wellformed
from vmd.job.registry import JobRegistry
from vmd.qmp.errors import QMPError

S = JobStatus


class FakeEmitter:
    """Records (event, data) pairs as the daemon's broadcaster would send."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any] | None]] = []

    def emit(self, name: str, data: dict[str, Any] | None) -> None:
        self.events.append((name, data))

    def statuses(self, job_id: str = "j") -> list[str]:
        return [str(data["status"]) for name, data in self.events
                if name == "JOB_STATUS_CHANGE" and data and data["id"] == job_id]

    def names(self) -> list[str]:
        return [name if name != "JOB_STATUS_CHANGE" or not data
                else f"JSC {data['status']}" for name, data in self.events]


class StepJob(Job):
    """Runs ``steps`` steps, each a pause point, waiting on ``gate``."""

    job_type = JobType.CREATE

    def __init__(self, registry: JobRegistry, job_id: str | None = "j", *,
                 steps: int = 3, fail: Exception | None = None,
                 gated: bool = False, **kwargs: Any) -> None:
        super().__init__(registry, job_id, **kwargs)
        self.steps = steps
        self.fail = fail
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.calls: list[str] = []

    async def run(self) -> None:
        self.progress_set_remaining(self.steps)
        for _ in range(self.steps):
            await self.gate.wait()
            if self.is_cancelled():
                return
            await asyncio.sleep(0)
            self.progress_update(1)
            await self.pause_point()
        if self.fail is not None:
            raise self.fail

    async def prepare(self) -> None:
        self.calls.append("prepare")

    async def commit(self) -> None:
        self.calls.append("commit")

    async def abort(self) -> None:
        self.calls.append("abort")

    async def clean(self) -> None:
        self.calls.append("clean")

    def event_completed(self) -> None:
        self.registry.emitter.emit("BLOCK_JOB_COMPLETED", {"device": self.id})

    def event_cancelled(self) -> None:
        self.registry.emitter.emit("BLOCK_JOB_CANCELLED", {"device": self.id})

    def event_pending(self) -> None:
        self.registry.emitter.emit("BLOCK_JOB_PENDING", {"id": self.id})


class ReadyJob(StepJob):
    """Reaches ready, then waits for job-complete (like mirror)."""

    can_complete = True

    async def run(self) -> None:
        self.transition_to_ready()
        self.completing = False
        while not self.completing and not self.cancel_requested():
            await self.yield_()

    def complete(self) -> None:
        self.completing = True
        if not self.paused:     # a paused job sees it once resumed
            self.enter()


@pytest.fixture
def emitter() -> FakeEmitter:
    return FakeEmitter()


@pytest.fixture
def jobs(emitter: FakeEmitter) -> JobRegistry:
    return JobRegistry(emitter)


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


# ---- the tables ------------------------------------------------------------

def test_transition_table_is_qemus() -> None:
    allowed = {(a.value, b.value) for a, tos in TRANSITIONS.items() for b in tos}
    assert allowed == {
        ("undefined", "created"),
        ("created", "running"), ("created", "aborting"), ("created", "null"),
        ("running", "paused"), ("running", "ready"), ("running", "waiting"),
        ("running", "aborting"),
        ("paused", "running"),
        ("ready", "standby"), ("ready", "waiting"), ("ready", "aborting"),
        ("standby", "ready"),
        ("waiting", "pending"), ("waiting", "aborting"),
        ("pending", "aborting"), ("pending", "concluded"),
        ("aborting", "aborting"), ("aborting", "concluded"),
        ("concluded", "null"),
    }


def test_verb_table_is_qemus() -> None:
    active = {"created", "running", "paused", "ready", "standby"}
    expected = {
        "cancel": active | {"waiting", "pending"},
        "pause": active, "resume": active, "set-speed": active,
        "complete": {"ready", "standby"},
        "finalize": {"pending"}, "dismiss": {"concluded"},
    }
    assert {v.value: {s.value for s in ss} for v, ss in VERBS.items()} == expected
    assert set(VERBS) == set(JobVerb)


@pytest.mark.parametrize("job_id,ok", [
    ("a", True), ("job-1.x_y", True), ("A9", True), ("1bad", False),
    ("", False), ("-x", False), ("a b", False), ("a/b", False), ("é", False),
])
def test_id_wellformed(job_id: str, ok: bool) -> None:
    assert id_wellformed(job_id) is ok


async def test_create_errors(jobs: JobRegistry) -> None:
    with pytest.raises(QMPError, match=r"^Invalid job ID '1bad'$"):
        StepJob(jobs, "1bad")
    with pytest.raises(QMPError, match=r"^Invalid job ID ''$"):
        StepJob(jobs, "")
    with pytest.raises(QMPError, match=r"^An explicit job ID is required$"):
        StepJob(jobs, None)
    StepJob(jobs, "j")
    with pytest.raises(QMPError, match=r"^Job ID 'j' already in use$"):
        StepJob(jobs, "j")
    with pytest.raises(QMPError, match=r"^Job not found$"):
        jobs.find("nope")


# ---- lifecycles ------------------------------------------------------------

async def test_auto_dismiss_sequence(jobs: JobRegistry, emitter: FakeEmitter) -> None:
    job = StepJob(jobs)
    job.start()
    assert emitter.statuses() == ["created", "running"]
    await job.wait_concluded()
    assert emitter.names() == [
        "JSC created", "JSC running", "JSC waiting", "JSC pending",
        "BLOCK_JOB_COMPLETED", "JSC concluded", "JSC null"]
    assert job.calls == ["prepare", "commit", "clean"]
    assert jobs.query() == [] and len(jobs) == 0
    assert (job.current_progress, job.total_progress) == (3, 3)


async def test_manual_finalize_and_dismiss(jobs: JobRegistry,
                                           emitter: FakeEmitter) -> None:
    job = StepJob(jobs, auto_finalize=False, auto_dismiss=False)
    job.start()
    await settle()
    assert job.status == S.PENDING
    assert emitter.names()[-1] == "BLOCK_JOB_PENDING"
    assert job.calls == []
    with pytest.raises(QMPError, match="^Job 'j' in state 'pending' cannot "
                       "accept command verb 'dismiss'$"):
        job.dismiss()
    job.finalize()
    await jobs.settle()
    assert emitter.statuses() == ["created", "running", "waiting", "pending",
                                  "concluded"]
    info = jobs.query()[0]
    assert (info.id, info.status, info.error) == ("j", S.CONCLUDED, None)
    with pytest.raises(QMPError, match="^Job 'j' in state 'concluded' cannot "
                       "accept command verb 'cancel'$"):
        job.user_cancel(True)
    job.dismiss()
    assert emitter.statuses()[-1] == "null"
    assert jobs.query() == []


async def test_no_auto_dismiss_keeps_concluded(jobs: JobRegistry,
                                               emitter: FakeEmitter) -> None:
    job = StepJob(jobs, auto_dismiss=False)
    job.start()
    await job.wait_concluded()
    assert emitter.statuses() == ["created", "running", "waiting", "pending",
                                  "concluded"]
    assert [i.status for i in jobs.query()] == [S.CONCLUDED]


async def test_error_path(jobs: JobRegistry, emitter: FakeEmitter) -> None:
    job = StepJob(jobs, auto_dismiss=False, fail=OSError(5, "ignored"))
    job.start()
    await job.wait_concluded()
    assert emitter.names() == [
        "JSC created", "JSC running", "JSC aborting", "BLOCK_JOB_COMPLETED",
        "JSC concluded"]
    assert job.calls == ["abort", "clean"]
    info = jobs.query()[0]
    assert (info.status, info.error) == (S.CONCLUDED, "Input/output error")
    job2 = StepJob(jobs, "k", auto_dismiss=False,
                   fail=QMPError("Could not create image"))
    job2.start()
    await job2.wait_concluded()
    assert jobs.find("k").error == "Could not create image"


async def test_cancel_while_running(jobs: JobRegistry, emitter: FakeEmitter) -> None:
    job = StepJob(jobs, gated=True, auto_dismiss=False)
    job.start()
    await settle()
    assert job.status == S.RUNNING
    job.user_cancel(True)
    job.gate.set()
    await job.wait_concluded()
    assert emitter.names() == [
        "JSC created", "JSC running", "JSC aborting", "BLOCK_JOB_CANCELLED",
        "JSC concluded"]
    assert job.calls == ["abort", "clean"]
    assert jobs.query()[0].error == "Operation canceled"


async def test_cancel_before_start(jobs: JobRegistry, emitter: FakeEmitter) -> None:
    job = StepJob(jobs)
    job.user_cancel(True)
    await jobs.settle()
    # never started: no BLOCK_JOB_* event, dismissed at once
    assert emitter.names() == ["JSC created", "JSC aborting", "JSC concluded",
                               "JSC null"]
    assert jobs.query() == []


async def test_pause_resume(jobs: JobRegistry, emitter: FakeEmitter) -> None:
    job = StepJob(jobs, gated=True)
    job.start()
    with pytest.raises(QMPError, match="^Can't resume a job that was not paused$"):
        job.user_resume()
    job.user_pause()
    with pytest.raises(QMPError, match="^Job is already paused$"):
        job.user_pause()
    job.gate.set()
    await settle()
    assert job.status == S.PAUSED and job.paused
    progress = job.current_progress
    await settle()
    assert job.current_progress == progress
    with pytest.raises(QMPError, match="^Job 'j' in state 'paused' cannot "
                       "accept command verb 'complete'$"):
        job.user_complete()
    job.user_resume()
    await job.wait_concluded()
    assert emitter.statuses() == ["created", "running", "paused", "running",
                                  "waiting", "pending", "concluded", "null"]


async def test_cancel_paused_job_resumes_first(jobs: JobRegistry,
                                               emitter: FakeEmitter) -> None:
    job = StepJob(jobs, gated=True)
    job.start()
    job.user_pause()
    job.gate.set()
    await settle()
    assert job.status == S.PAUSED
    job.user_cancel(True)
    await job.wait_concluded()
    assert emitter.names()[2:] == [
        "JSC paused", "JSC running", "JSC aborting", "BLOCK_JOB_CANCELLED",
        "JSC concluded", "JSC null"]


async def test_ready_standby_complete(jobs: JobRegistry,
                                      emitter: FakeEmitter) -> None:
    job = ReadyJob(jobs)
    job.start()
    await settle()
    assert job.status == S.READY
    job.user_pause()
    await settle()
    assert job.status == S.STANDBY
    job.user_complete()      # accepted in standby; takes effect on resume
    await settle()
    assert job.status == S.STANDBY
    job.user_resume()
    await job.wait_concluded()
    assert emitter.statuses() == ["created", "running", "ready", "standby",
                                  "ready", "waiting", "pending", "concluded",
                                  "null"]


async def test_complete_refused(jobs: JobRegistry) -> None:
    job = StepJob(jobs, gated=True)
    job.start()
    with pytest.raises(QMPError, match="^Job 'j' in state 'running' cannot "
                       "accept command verb 'complete'$"):
        job.user_complete()
    job.transition_to_ready()
    with pytest.raises(QMPError, match="^The active block job 'j' cannot be "
                       "completed$"):
        job.user_complete()
    job.user_cancel(True)
    job.gate.set()
    await job.wait_concluded()


async def test_grouped_txn_failure_cancels_peer(jobs: JobRegistry,
                                                emitter: FakeEmitter) -> None:
    txn = JobTxn()
    ok = StepJob(jobs, "ok", txn=txn)
    bad = StepJob(jobs, "bad", txn=txn, steps=6, fail=OSError(5, "x"))
    ok.start()
    bad.start()
    await asyncio.gather(ok.wait_concluded(), bad.wait_concluded())
    assert emitter.statuses("ok") == ["created", "running", "waiting",
                                      "aborting", "concluded", "null"]
    assert emitter.statuses("bad")[-3:] == ["aborting", "concluded", "null"]
    assert ok.calls == ["abort", "clean"] and bad.calls == ["abort", "clean"]


async def test_query_order_newest_first(jobs: JobRegistry) -> None:
    StepJob(jobs, "a")
    StepJob(jobs, "b")
    assert [i.id for i in jobs.query()] == ["b", "a"]
    info = jobs.query()[0]
    assert (info.type, info.status, info.current_progress,
            info.total_progress) == (JobType.CREATE, S.CREATED, 0, 0)


# ---- through QMP -----------------------------------------------------------

def _qmp_session(path: Path) -> list[dict[str, Any]]:
    with RawQMP(path) as qmp:
        qmp.negotiate()
        return [qmp.command({"execute": "query-jobs"}),
                qmp.command({"execute": "job-cancel", "arguments": {"id": "x"}}),
                qmp.command({"execute": "job-dismiss", "arguments": {"id": "x"}})]


def test_qmp_no_jobs(vmd: VmdProcess) -> None:
    assert _qmp_session(vmd.qmp_path) == [
        {"return": []},
        {"error": {"class": "GenericError", "desc": "Job not found"}},
        {"error": {"class": "GenericError", "desc": "Job not found"}},
    ]


@pytest.mark.qemu
def test_qmp_no_jobs_same_as_qemu(vmd: VmdProcess, qemu: Path) -> None:
    assert _qmp_session(vmd.qmp_path) == _qmp_session(qemu)
