"""The copy loop of commit and stream: chunks planned in order, copied with
several in flight (QEMU's commit and stream copy one chunk at a time from
C; vmd's Python overhead per chunk is hidden behind the others' I/O).

``CopyWindow.run`` walks ``[0, length)``: ``plan(offset, limit)`` says how
many bytes from ``offset`` form the next chunk and whether they need a
copy; chunks that do are started at once (``copy(offset, n, buf)``) while
at most ``depth`` are in flight, each into a buffer of its own that is
reused (no allocation per chunk). Chunks complete in order: progress, the
rate limit and a failure are handled for the oldest one first, so a job
sees them as if it copied one chunk after the other.

Without a speed limit chunks are up to ``bulk`` bytes (2 MiB: measured
best with 4 in flight; larger ones are slower); with one, QEMU's chunk
size and one chunk in flight, so the limit accounts each chunk as QEMU's
does and a limited job shows QEMU's progress.

A failed copy raises ``CopyFailed`` (vmd.block.copy); what it had copied
before counts as progress, and ``on_failure`` decides: ``retry`` (the
copies started after it are awaited and the loop restarts where it failed,
as QEMU's jobs retry after a ``stop`` or ``ignore``), ``skip`` (go on after
it) or raising (the job fails). Cancellation stops the loop; the
copies in flight are always awaited before ``run`` returns, so no request
of the job outlives it.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Awaitable, Callable

from vmd.block.copy import CopyFailed
from vmd.job.blockjob import BlockJob


class Then(enum.Enum):
    """What the loop does after a failed chunk."""

    RETRY = "retry"
    SKIP = "skip"


Plan = Callable[[int, int], Awaitable[tuple[bool, int]]]
Copy = Callable[[int, int, memoryview], Awaitable[None]]


#: The chunk size without a speed limit.
BULK = 2 << 20
#: Chunks in flight without a speed limit.
DEPTH = 4


class CopyWindow:
    """Chunks of up to ``chunk`` bytes (``BULK`` without a speed limit),
    ``DEPTH`` of them in flight."""

    def __init__(self, job: BlockJob, chunk: int) -> None:
        self.job = job
        self.chunk = chunk
        self._free: list[memoryview] = []

    def _buffer(self) -> memoryview:
        return self._free.pop() if self._free else memoryview(bytearray(max(BULK, self.chunk)))

    async def _copy(self, copy: Copy, offset: int, n: int) -> None:
        buf = self._buffer()
        try:
            await copy(offset, n, buf[:n])
        finally:
            self._free.append(buf)

    async def run(self, length: int, plan: Plan, copy: Copy,
                  on_failure: Callable[[CopyFailed], Then]) -> None:
        job = self.job
        window: deque[tuple[int, int, bool, asyncio.Task[None] | None]] = deque()
        cursor = 0
        try:
            while window or cursor < length:
                await job.ratelimit_sleep()
                if job.is_cancelled():
                    return
                depth, size = (1, self.chunk) if job.speed else (DEPTH, BULK)
                while cursor < length and sum(1 for entry in window if entry[3] is not None) < depth:
                    needed, n = await plan(cursor, min(size, length - cursor))
                    task = asyncio.ensure_future(self._copy(copy, cursor, n)) if needed else None
                    window.append((cursor, n, needed, task))
                    cursor += n
                start, n, needed, task = window.popleft()
                if task is not None:
                    try:
                        await task
                    except CopyFailed as failure:
                        job.progress_update(failure.done)   # what the chunk copied before it failed
                        start, n = start + failure.done, n - failure.done
                        then = on_failure(failure)   # may raise: the job fails
                        if then == Then.RETRY:
                            await _settle(window)
                            cursor = start
                            continue
                job.progress_update(n)
                if needed:
                    job.ratelimit_processed(n)
        finally:
            await _settle(window)


async def _settle(window: deque[tuple[int, int, bool, asyncio.Task[None] | None]]) -> None:
    """Wait for the copies in flight and forget them (their failures too)."""
    tasks = [entry[3] for entry in window if entry[3] is not None]
    window.clear()
    await asyncio.gather(*tasks, return_exceptions=True)
