"""A block job's rate limit (QEMU's include/qemu/ratelimit.h).

Time is cut into slices of 100 ms; a slice may carry ``speed / 10`` bytes.
Bytes are accounted after they were copied, so the first chunk of a slice
always goes through; once a slice is over its quota the job sleeps until
the slice, stretched by the excess, has passed, and a new slice starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: BLOCK_JOB_SLICE_TIME, in seconds.
SLICE = 0.1


class RateLimit:
    """Token accounting per slice; ``delay`` says how long to sleep."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.quota = 0.0
        self.slice_start = 0.0
        self.slice_end = 0.0
        self.dispatched = 0.0

    def set_speed(self, speed: int) -> None:
        """``speed`` bytes per second; 0 turns the limit off."""
        self.quota = max(speed * SLICE, 1.0) if speed else 0.0

    def delay(self, n: int) -> float:
        """Account ``n`` bytes; seconds to wait before the next chunk."""
        if not self.quota:
            return 0.0
        now = self._clock()
        if self.slice_end < now:
            self.slice_start, self.slice_end, self.dispatched = now, now + SLICE, 0.0
        self.dispatched += n
        if self.dispatched < self.quota:
            return 0.0
        self.slice_end = self.slice_start + self.dispatched / self.quota * SLICE
        return self.slice_end - now
