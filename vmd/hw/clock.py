"""Time for devices: the host clock and timers that call back under the BQL.

Devices read ``now_ns()`` (host wall-clock time in nanoseconds, QEMU's
``QEMU_CLOCK_HOST``, which the RTC follows by default) and arm timers at
absolute deadlines on that clock. A timer may be armed or cancelled from
any thread holding the BQL; its callback runs on the event loop thread
with the BQL held, so it sees the device exactly as a vCPU access would.
Arming for the deadline already set, or cancelling an idle timer, costs
nothing: a guest polling a register must not flood the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol


class Timer(Protocol):
    """One device timer (QEMU's QEMUTimer)."""

    def arm(self, deadline_ns: int) -> None:
        """Fire at ``deadline_ns`` on the clock; replaces an earlier deadline."""

    def cancel(self) -> None:
        """Do not fire (a no-op when not armed)."""


class Clock(Protocol):
    """The clock a device reads and its timers."""

    def now_ns(self) -> int:
        """Host wall-clock time, nanoseconds since the epoch."""

    def timer(self, callback: Callable[[], None]) -> Timer:
        """A new, unarmed timer that calls ``callback`` when it fires."""


class _LoopTimer:
    """A timer on the event loop; a generation count drops stale firings."""

    def __init__(self, clock: LoopClock, callback: Callable[[], None]) -> None:
        self._clock = clock
        self._callback = callback
        self._generation = 0
        self._deadline: int | None = None  # armed for, as the device sees it
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, deadline_ns: int) -> None:
        if deadline_ns == self._deadline:
            return  # devices re-arm on every register access; keep the loop quiet
        self._deadline = deadline_ns
        self._generation += 1
        generation = self._generation
        self._clock.loop.call_soon_threadsafe(self._schedule, generation, deadline_ns)

    def cancel(self) -> None:
        if self._deadline is None:
            return
        self._deadline = None
        self._generation += 1
        self._clock.loop.call_soon_threadsafe(self._schedule, self._generation, None)

    def _schedule(self, generation: int, deadline_ns: int | None) -> None:
        """On the loop: replace the pending handle by one for ``deadline_ns``."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if deadline_ns is None or generation != self._generation:
            return
        delay = max(deadline_ns - self._clock.now_ns(), 0) / 1e9
        self._handle = self._clock.loop.call_later(delay, self._fire, generation)

    def _fire(self, generation: int) -> None:
        self._handle = None
        with self._clock.bql:
            if generation == self._generation:
                self._deadline = None
                self._callback()


class LoopClock:
    """The host clock with timers on ``loop``, callbacks under ``bql``."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 bql: AbstractContextManager[Any]) -> None:
        self.loop = loop
        self.bql = bql

    def now_ns(self) -> int:
        return time.time_ns()

    def timer(self, callback: Callable[[], None]) -> Timer:
        return _LoopTimer(self, callback)
