"""What qcow2 requests in flight must know about each other.

QEMU's qcow2 holds its metadata lock only while it looks up or changes
tables; guest data moves without it, and the requests that allocate
clusters are kept in a list (``s->cluster_allocs``) so that a second write
to a cluster being allocated waits for the first. vmd does the same with
two pieces:

* ``RequestGate``: reads, and writes that free no host cluster, run
  *shared* (any number at once); requests that free host clusters
  (discard, write-zeroes, resize, and writes that replace a compressed or
  shared cluster) run *exclusive*, alone, once the shared ones in flight
  have finished. So no read or write can still be using a cluster when it
  is freed and handed out again. Waiting exclusive requests hold back new
  shared ones, so they are not starved.
* ``Allocations``: the guest clusters whose new host cluster is being
  filled, each with a future that completes when its L2 entry is set.
"""

from __future__ import annotations

import asyncio
from collections import deque


class RequestGate:
    """Shared/exclusive admission of requests (a read-write lock)."""

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire_shared(self) -> bool:
        """Enter shared at once if nothing exclusive runs or waits (the
        usual case, without a coroutine); else False: ``acquire_shared``."""
        if self._exclusive or self._exclusive_waiting:
            return False
        self._shared += 1
        return True

    async def acquire_shared(self) -> None:
        while self._exclusive or self._exclusive_waiting:
            await self._wait()
        self._shared += 1

    def release_shared(self) -> None:
        self._shared -= 1
        if not self._shared:
            self._wake()

    async def acquire_exclusive(self) -> None:
        self._exclusive_waiting += 1
        try:
            while self._exclusive or self._shared:
                await self._wait()
        finally:
            self._exclusive_waiting -= 1
        self._exclusive = True

    def release_exclusive(self) -> None:
        self._exclusive = False
        self._wake()

    async def _wait(self) -> None:
        """Until the state changes; each waiter has its own future, so a
        cancelled waiter cancels nobody else."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class Allocations:
    """Guest clusters being given a new host cluster, each with its future."""

    def __init__(self) -> None:
        self._pending: dict[int, asyncio.Future[None]] = {}

    def pending(self, vc: int) -> asyncio.Future[None] | None:
        return self._pending.get(vc)

    def start(self, first: int, count: int) -> asyncio.Future[None]:
        """Mark ``count`` clusters from ``first`` as being allocated."""
        done = asyncio.get_running_loop().create_future()
        for vc in range(first, first + count):
            self._pending[vc] = done
        return done

    def finish(self, first: int, count: int, done: asyncio.Future[None]) -> None:
        """Their L2 entries are set (or the allocation failed): wake waiters."""
        for vc in range(first, first + count):
            del self._pending[vc]
        done.set_result(None)

    @staticmethod
    async def wait(done: asyncio.Future[None]) -> None:
        """Wait for another request's allocation, without cancelling it."""
        await asyncio.shield(done)
