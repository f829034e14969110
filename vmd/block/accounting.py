"""I/O accounting of a BlockBackend (QEMU's block/accounting.c).

The user of a backend, not the backend, decides what is counted: a guest
device (virtio-blk) and HMP ``qemu-io``'s aio commands start a cookie
when a request is submitted and end it done, failed or invalid; internal
I/O (jobs, exports, qemu-io's synchronous commands) is not counted, as in
QEMU. ``query-blockstats`` shows the counters (``BlockDeviceStats``).

Latencies are measured on the host's monotonic clock; under ``-accel
qtest`` the clock is the virtual one and every request is taken to last
1 ms, as QEMU does so that tests get fixed numbers. A backend may also
keep latencies over intervals (``-drive stats-intervals.N=SECONDS``):
the minimum, maximum and mean of the requests of roughly the last
interval, and the mean queue depth (QEMU's util/timed-average.c: two
windows of 4/3 of the interval, half a window apart; figures come from
the older one).

Stats belong to the event loop thread.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from vmd._generated.types import BlockDeviceStats, BlockDeviceTimedStats
from vmd.qtest import clock

#: What a request is taken to last under qtest (QEMU's qtest_latency_ns).
QTEST_LATENCY_NS = 1_000_000


class AcctType(enum.IntEnum):
    """BlockAcctType."""

    READ = 0
    WRITE = 1
    FLUSH = 2
    UNMAP = 3


@dataclass(slots=True)
class Cookie:
    """One request being accounted (BlockAcctCookie)."""

    kind: AcctType
    size: int
    start_ns: int


@dataclass
class _Window:
    """One window of a timed average (TimedAverageWindow)."""

    expiration: int
    minimum: int | None = None
    maximum: int = 0
    total: int = 0
    count: int = 0

    def reset(self) -> None:
        self.minimum, self.maximum, self.total, self.count = None, 0, 0, 0


class TimedAverage:
    """Minimum, maximum, mean and sum of values over about ``period_ns``."""

    def __init__(self, period_ns: int) -> None:
        now = clock.now_ns()
        self.period = period_ns * 4 // 3
        self.windows = (_Window(now + self.period // 2), _Window(now + self.period))

    def _oldest(self) -> tuple[_Window, int]:
        """check_expirations(): restart expired windows; the older window and
        how long it has been running."""
        now = clock.now_ns()
        for window in self.windows:
            if window.expiration <= now:
                window.reset()
                window.expiration = now + self.period - (now - window.expiration) % self.period
        oldest = min(self.windows, key=lambda window: window.expiration)
        return oldest, self.period - (oldest.expiration - now)

    def account(self, value: int) -> None:
        self._oldest()
        for window in self.windows:
            window.total += value
            window.count += 1
            window.minimum = value if window.minimum is None else min(window.minimum, value)
            window.maximum = max(window.maximum, value)

    def figures(self) -> tuple[int, int, int]:
        """(minimum, maximum, mean) of the older window, 0 when empty."""
        window, _elapsed = self._oldest()
        return window.minimum or 0, window.maximum, window.total // window.count if window.count else 0

    def depth(self) -> float:
        """block_acct_queue_depth(): time spent in requests per time elapsed."""
        window, elapsed = self._oldest()
        return window.total / elapsed if elapsed else 0.0


class Interval:
    """The timed averages of one ``stats-intervals`` length (BlockAcctTimedStats)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.latency = [TimedAverage(seconds * 1_000_000_000) for _kind in AcctType]

    def to_qapi(self) -> BlockDeviceTimedStats:
        (rd_min, rd_max, rd_avg), (wr_min, wr_max, wr_avg), (fl_min, fl_max, fl_avg), _unmap = (
            latency.figures() for latency in self.latency)
        return BlockDeviceTimedStats(
            interval_length=self.seconds, min_rd_latency_ns=rd_min, max_rd_latency_ns=rd_max,
            avg_rd_latency_ns=rd_avg, min_wr_latency_ns=wr_min, max_wr_latency_ns=wr_max,
            avg_wr_latency_ns=wr_avg, min_flush_latency_ns=fl_min, max_flush_latency_ns=fl_max,
            avg_flush_latency_ns=fl_avg, avg_rd_queue_depth=self.latency[AcctType.READ].depth(),
            avg_wr_queue_depth=self.latency[AcctType.WRITE].depth())


@dataclass
class BlockAcctStats:
    """The counters, per request type."""

    account_invalid: bool = True
    account_failed: bool = True
    nr_bytes: list[int] = field(default_factory=lambda: [0] * len(AcctType))
    nr_ops: list[int] = field(default_factory=lambda: [0] * len(AcctType))
    failed_ops: list[int] = field(default_factory=lambda: [0] * len(AcctType))
    invalid_ops: list[int] = field(default_factory=lambda: [0] * len(AcctType))
    merged: list[int] = field(default_factory=lambda: [0] * len(AcctType))
    total_time_ns: list[int] = field(default_factory=lambda: [0] * len(AcctType))
    #: When a request last ended (0: never), for ``idle_time_ns``.
    last_access_ns: int = 0
    #: Latencies over ``stats-intervals``, in the order given.
    intervals: list[Interval] = field(default_factory=list)

    def start(self, kind: AcctType, size: int) -> Cookie:
        """block_acct_start()."""
        return Cookie(kind, size, clock.now_ns())

    def done(self, cookie: Cookie) -> None:
        """block_acct_done()."""
        self._account(cookie, failed=False)

    def failed(self, cookie: Cookie) -> None:
        """block_acct_failed(): counted, and timed if ``account_failed``."""
        self._account(cookie, failed=True)

    def invalid(self, kind: AcctType) -> None:
        """block_acct_invalid(): a request refused before any I/O."""
        self.invalid_ops[kind] += 1
        if self.account_invalid:
            self.last_access_ns = clock.now_ns()

    def merge_done(self, kind: AcctType, count: int) -> None:
        """block_acct_merge_done(): requests merged into others."""
        self.merged[kind] += count

    def _account(self, cookie: Cookie, *, failed: bool) -> None:
        now = clock.now_ns()
        latency = QTEST_LATENCY_NS if clock.VIRTUAL is not None else now - cookie.start_ns
        kind = cookie.kind
        if failed:
            self.failed_ops[kind] += 1
        else:
            self.nr_bytes[kind] += cookie.size
            self.nr_ops[kind] += 1
        if not failed or self.account_failed:
            self.total_time_ns[kind] += latency
            self.last_access_ns = now
            for interval in self.intervals:
                interval.latency[kind].account(latency)

    def to_qapi(self, wr_highest_offset: int) -> BlockDeviceStats:
        """``BlockDeviceStats`` (bdrv_query_blk_stats); the highest offset
        written is the node's."""
        read, write, flush, unmap = AcctType
        return BlockDeviceStats(
            rd_bytes=self.nr_bytes[read], wr_bytes=self.nr_bytes[write], unmap_bytes=self.nr_bytes[unmap],
            rd_operations=self.nr_ops[read], wr_operations=self.nr_ops[write],
            flush_operations=self.nr_ops[flush], unmap_operations=self.nr_ops[unmap],
            rd_total_time_ns=self.total_time_ns[read], wr_total_time_ns=self.total_time_ns[write],
            flush_total_time_ns=self.total_time_ns[flush], unmap_total_time_ns=self.total_time_ns[unmap],
            wr_highest_offset=wr_highest_offset,
            rd_merged=self.merged[read], wr_merged=self.merged[write], unmap_merged=self.merged[unmap],
            idle_time_ns=clock.now_ns() - self.last_access_ns if self.last_access_ns else None,
            failed_rd_operations=self.failed_ops[read], failed_wr_operations=self.failed_ops[write],
            failed_flush_operations=self.failed_ops[flush], failed_unmap_operations=self.failed_ops[unmap],
            invalid_rd_operations=self.invalid_ops[read], invalid_wr_operations=self.invalid_ops[write],
            invalid_flush_operations=self.invalid_ops[flush], invalid_unmap_operations=self.invalid_ops[unmap],
            account_invalid=self.account_invalid, account_failed=self.account_failed,
            timed_stats=[interval.to_qapi() for interval in self.intervals])


def node_stats(wr_highest_offset: int) -> BlockDeviceStats:
    """A node's own ``BlockDeviceStats``: only the highest offset written
    (QEMU keeps no other counters on a node)."""
    return BlockAcctStats(account_invalid=False, account_failed=False).to_qapi(wr_highest_offset)
