"""The daemon's jobs by id (QEMU's global job list)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

from vmd._generated.types import JobInfo, JobStatus
from vmd.errors import QMPError
from vmd.job.core import Job


class JobRegistry:
    """All jobs, internal ones included; ``emitter`` gets their events."""

    def __init__(self, emitter: Any) -> None:
        self.emitter = emitter
        self._jobs: list[Job] = []
        #: Completion work under way (finalize, abort), see Job._spawn.
        self._finalizing: set[asyncio.Task[None]] = set()
        #: Held while a job's prepare/commit/abort/clean change the graph:
        #: QEMU runs them under the big lock, one job at a time, so two
        #: jobs finishing together never interleave their graph changes.
        self.finalizing = asyncio.Lock()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a job's completion steps as a task of the registry."""
        task = asyncio.get_running_loop().create_task(work)
        self._finalizing.add(task)
        task.add_done_callback(self._finalizing.discard)

    async def settle(self) -> None:
        """Wait until no completion work is under way (the commands that
        start it reply after its events, as QEMU's)."""
        while self._finalizing:
            await asyncio.gather(*list(self._finalizing), return_exceptions=True)

    def add(self, job: Job) -> None:
        # QEMU inserts at the head of its list: newest first in query-jobs
        self._jobs.insert(0, job)

    def remove(self, job: Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)

    def get(self, job_id: str) -> Job | None:
        return next((j for j in self._jobs if j.id == job_id), None)

    def find(self, job_id: str) -> Job:
        """The job named ``job_id``, or QMP's ``Job not found``."""
        job = self.get(job_id)
        if job is None:
            raise QMPError("Job not found")
        return job

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs))

    def __len__(self) -> int:
        return len(self._jobs)

    def query(self) -> list[JobInfo]:
        """query-jobs: every job with an id, newest first."""
        return [job.info() for job in self._jobs if not job.is_internal()]

    def cancel_all(self) -> None:
        """Force-cancel every job (shutdown); concluded ones are dismissed."""
        for job in list(self._jobs):
            if job.status != JobStatus.NULL:
                job.cancel(True)

    async def cancel_sync_all(self) -> None:
        """QEMU's job_cancel_sync_all at exit: cancel every job and wait
        until each has finished (and released what it holds)."""
        self.cancel_all()
        for job in list(self._jobs):
            await job.wait_concluded()
