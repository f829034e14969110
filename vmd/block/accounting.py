"""I/O accounting of a BlockBackend (QEMU's block/accounting.c).

The user of a backend, not the backend, decides what is counted: a guest
device (virtio-blk) and HMP ``qemu-io``'s aio commands start a cookie
when a request is submitted and end it done, failed or invalid; internal
I/O (jobs, exports, qemu-io's synchronous commands) is not counted, as in
QEMU. ``query-blockstats`` shows the counters (``BlockDeviceStats``).

Latencies are measured on the host's monotonic clock; under ``-accel
qtest`` the clock is the virtual one and every request is taken to last
1 ms, as QEMU does so that tests get fixed numbers.

Stats belong to the event loop thread.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from vmd._generated.types import BlockDeviceStats
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
            account_invalid=self.account_invalid, account_failed=self.account_failed, timed_stats=[])


def node_stats(wr_highest_offset: int) -> BlockDeviceStats:
    """A node's own ``BlockDeviceStats``: only the highest offset written
    (QEMU keeps no other counters on a node)."""
    return BlockAcctStats(account_invalid=False, account_failed=False).to_qapi(wr_highest_offset)
