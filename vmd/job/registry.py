"""The daemon's jobs by id (QEMU's global job list)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vmd._generated.types import JobInfo, JobStatus
from vmd.errors import QMPError
from vmd.job.core import Job


class JobRegistry:
    """All jobs, internal ones included; ``emitter`` gets their events."""

    def __init__(self, emitter: Any) -> None:
        self.emitter = emitter
        self._jobs: list[Job] = []

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
