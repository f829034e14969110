"""QMP commands for jobs (job.json; QEMU's job-qmp.c).

``job-cancel`` and ``job-finalize`` wait until the completion work they
start is done, so that their events come before their reply as in QEMU.
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import JobInfo


def qmp_query_jobs(ctx: Any) -> list[JobInfo]:
    result: list[JobInfo] = ctx.daemon.jobs.query()
    return result


def qmp_job_pause(ctx: Any, id: str) -> None:
    ctx.daemon.jobs.find(id).user_pause()


def qmp_job_resume(ctx: Any, id: str) -> None:
    ctx.daemon.jobs.find(id).user_resume()


async def qmp_job_cancel(ctx: Any, id: str) -> None:
    ctx.daemon.jobs.find(id).user_cancel(True)
    await ctx.daemon.jobs.settle()


def qmp_job_complete(ctx: Any, id: str) -> None:
    ctx.daemon.jobs.find(id).user_complete()


async def qmp_job_finalize(ctx: Any, id: str) -> None:
    ctx.daemon.jobs.find(id).finalize()
    await ctx.daemon.jobs.settle()


def qmp_job_dismiss(ctx: Any, id: str) -> None:
    ctx.daemon.jobs.find(id).dismiss()
