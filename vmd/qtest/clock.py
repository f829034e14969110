"""QEMU_CLOCK_VIRTUAL under qtest: time moves only when the test says so.

Under ``-accel qtest`` QEMU's virtual clock stands still until the qtest
client sends ``clock_step`` or ``clock_set``; what waits on it (I/O
throttling, which QEMU puts on the virtual clock under qtest so tests can
step it) runs when the clock passes its deadline, inside the step as in
QEMU, so a chain of timers within one ``clock_step`` fires in order. Without qtest there
is no virtual clock and such waits use the host's monotonic clock.

The clock belongs to the event loop thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable


class Timer:
    """A callback due at a deadline of :func:`now_ns` (QEMU's QEMUTimer, armed)."""

    def __init__(self, deadline_ns: int, callback: Callable[[], None]) -> None:
        self.deadline_ns = deadline_ns
        self._callback: Callable[[], None] | None = callback
        self._handle: asyncio.Handle | None = None

    @property
    def pending(self) -> bool:
        """Armed and neither fired nor cancelled (timer_pending)."""
        return self._callback is not None

    def cancel(self) -> None:
        """timer_del()."""
        self._callback = None
        if self._handle is not None:
            self._handle.cancel()

    def fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class VirtualClock:
    """Nanoseconds since start, moved by the test; timers fire at their deadlines."""

    def __init__(self) -> None:
        self.now_ns = 0
        self._timers: list[tuple[int, int, Timer]] = []
        self._order = itertools.count()
        self._warping = False

    def call_at(self, deadline_ns: int, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once the clock reaches ``deadline_ns``: inside the
        ``warp`` that passes it, or soon on the loop if it has passed already
        and no warp is under way."""
        timer = Timer(deadline_ns, callback)
        if deadline_ns <= self.now_ns and not self._warping:
            timer._handle = asyncio.get_running_loop().call_soon(timer.fire)
        else:
            heapq.heappush(self._timers, (deadline_ns, next(self._order), timer))
        return timer

    def next_deadline(self) -> int | None:
        """Nanoseconds to the earliest pending timer (QEMU: none is -1)."""
        while self._timers and not self._timers[0][2].pending:
            heapq.heappop(self._timers)
        return max(self._timers[0][0] - self.now_ns, 0) if self._timers else None

    def warp(self, target_ns: int) -> None:
        """qtest_clock_warp(): move forward to ``target_ns`` (never back),
        stopping at each timer's deadline on the way to run it, as QEMU
        does; timers those callbacks arm within the step run too."""
        self._warping = True
        try:
            while self._timers and self._timers[0][0] <= target_ns:
                deadline, _order, timer = heapq.heappop(self._timers)
                self.now_ns = max(self.now_ns, deadline)
                timer.fire()
            self.now_ns = max(self.now_ns, target_ns)
        finally:
            self._warping = False


#: The virtual clock while vmd runs under ``-accel qtest``; None otherwise.
VIRTUAL: VirtualClock | None = None


def now_ns() -> int:
    """The clock I/O throttling runs on: virtual under qtest, else monotonic."""
    return VIRTUAL.now_ns if VIRTUAL is not None else time.monotonic_ns()


def call_at(deadline_ns: int, callback: Callable[[], None]) -> Timer:
    """Run ``callback`` on the loop once :func:`now_ns` reaches ``deadline_ns``."""
    if VIRTUAL is not None:
        return VIRTUAL.call_at(deadline_ns, callback)
    timer = Timer(deadline_ns, callback)
    timer._handle = asyncio.get_running_loop().call_later(
        max(0, deadline_ns - time.monotonic_ns()) / 1e9, timer.fire)
    return timer
