"""QEMU_CLOCK_VIRTUAL under qtest: time moves only when the test says so.

Under ``-accel qtest`` QEMU's virtual clock stands still until the qtest
client sends ``clock_step`` or ``clock_set``; what waits on it (I/O
throttling, which QEMU puts on the virtual clock under qtest so tests can
step it) wakes up when the clock passes its deadline. Without qtest there
is no virtual clock and such waits use the host's monotonic clock.

The clock belongs to the event loop thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class VirtualClock:
    """Nanoseconds since start, moved by the test; timers wake at deadlines."""

    def __init__(self) -> None:
        self.now_ns = 0
        self._timers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def sleep_until(self, deadline_ns: int) -> asyncio.Future[None]:
        """A future done once the clock reaches ``deadline_ns``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if deadline_ns <= self.now_ns:
            future.set_result(None)
        else:
            heapq.heappush(self._timers, (deadline_ns, next(self._order), future))
        return future

    def next_deadline(self) -> int | None:
        """Nanoseconds to the earliest pending timer (QEMU: none is -1)."""
        while self._timers and self._timers[0][2].done():
            heapq.heappop(self._timers)
        return self._timers[0][0] - self.now_ns if self._timers else None

    def warp(self, target_ns: int) -> None:
        """qtest_clock_warp(): move forward to ``target_ns``, waking timers
        on the way (never backwards)."""
        self.now_ns = max(self.now_ns, target_ns)
        while self._timers and self._timers[0][0] <= self.now_ns:
            _deadline, _order, future = heapq.heappop(self._timers)
            if not future.done():
                future.set_result(None)


#: The virtual clock while vmd runs under ``-accel qtest``; None otherwise.
VIRTUAL: VirtualClock | None = None


def now_ns() -> int:
    """The clock I/O throttling runs on: virtual under qtest, else monotonic."""
    return VIRTUAL.now_ns if VIRTUAL is not None else time.monotonic_ns()


async def sleep_until(deadline_ns: int) -> None:
    """Wait until :func:`now_ns` reaches ``deadline_ns``."""
    if VIRTUAL is not None:
        await VIRTUAL.sleep_until(deadline_ns)
    else:
        await asyncio.sleep(max(0, deadline_ns - time.monotonic_ns()) / 1e9)
