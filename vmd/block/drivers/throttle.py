"""The ``throttle`` filter and ``throttle-group`` objects (QEMU's block/throttle.c,
block/throttle-groups.c and util/throttle.c).

A throttle-group holds the limits (``-object throttle-group,id=tg,
x-bps-read=4096`` or ``object-add`` with ``limits``) and the state of
QEMU's leaky buckets; every throttle node naming the group shares them. A
bucket per limit (bytes and operations; total, read and write) fills with
each request and leaks at the limit's rate; a request waits while a
bucket it counts against is fuller than its burst allowance (a tenth of a
second at the average rate, or ``max`` for ``max-length`` seconds), then
is counted and goes on. Reads wait behind earlier reads of the same node,
writes behind writes. Write-zeroes and discard count as writes; flushes
are not throttled.

Time is QEMU_CLOCK_VIRTUAL under ``-accel qtest`` (the test moves it with
``clock_step``, as QEMU does so that throttling tests are deterministic)
and the host's monotonic clock otherwise (``vmd.qtest.clock``). A drained
section over the node or below it lets waiting requests go at once and
stops throttling until it ends, as QEMU's throttle_co_drain_begin.

Groups are process-wide by name, as QEMU's list of throttle groups; all
of this belongs to the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vmd.block.graph import BlockGraph, driver, node_name_of
from vmd.block.node import BlockNode, Extent
from vmd.block.perm import Role
from vmd.errors import QMPError
from vmd.qtest import clock

NS_PER_SECOND = 1_000_000_000
#: THROTTLE_VALUE_MAX: the largest rate or burst a limit may have.
VALUE_MAX = 1_000_000_000_000_000
#: The limits, in ThrottleLimits' names: (bucket, counts bytes, reads, writes).
BUCKETS = {
    "bps-total": (True, True, True), "bps-read": (True, True, False), "bps-write": (True, False, True),
    "iops-total": (False, True, True), "iops-read": (False, True, False), "iops-write": (False, False, True),
}


@dataclass
class Bucket:
    """One leaky bucket (util/throttle.c's LeakyBucket)."""

    avg: float = 0.0
    max: float = 0.0
    burst_length: int = 1
    level: float = 0.0
    burst_level: float = 0.0

    def leak(self, delta_ns: int) -> None:
        self.level = max(self.level - self.avg * delta_ns / NS_PER_SECOND, 0.0)
        if self.burst_length > 1:
            self.burst_level = max(self.burst_level - self.max * delta_ns / NS_PER_SECOND, 0.0)

    def wait_ns(self) -> int:
        """throttle_compute_wait(): how long until the bucket lets a request in."""
        if not self.avg:
            return 0
        if not self.max:
            size, burst_size = self.avg / 10, 0.0
        else:
            size, burst_size = self.max * self.burst_length, self.max / 10
        extra = self.level - size
        if extra > 0:
            return int(extra * NS_PER_SECOND / self.avg)
        if self.burst_length > 1:
            extra = self.burst_level - burst_size
            if extra > 0:
                return int(extra * NS_PER_SECOND / self.max)
        return 0


@dataclass
class ThrottleGroup:
    """A ``throttle-group``: limits and bucket levels shared by its nodes."""

    type_name: ClassVar[str] = "throttle-group"
    name: str
    buckets: dict[str, Bucket] = field(default_factory=dict)
    op_size: int = 0
    members: list[ThrottleNode] = field(default_factory=list)
    _leaked_at: int | None = None

    def _leak(self) -> None:
        now = clock.now_ns()
        if self._leaked_at is not None:
            for bucket in self.buckets.values():
                bucket.leak(now - self._leaked_at)
        self._leaked_at = now

    def _relevant(self, is_write: bool) -> list[tuple[Bucket, bool]]:
        return [(self.buckets[name], counts_bytes) for name, (counts_bytes, reads, writes) in BUCKETS.items()
                if name in self.buckets and (writes if is_write else reads)]

    def wait_ns(self, is_write: bool) -> int:
        self._leak()
        return max((bucket.wait_ns() for bucket, _bytes in self._relevant(is_write)), default=0)

    def account(self, is_write: bool, size: int) -> None:
        """throttle_account(): the request's bytes, or operations (counted in
        ``iops-size`` units when it is set and the request is larger)."""
        self._leak()
        units = size / self.op_size if self.op_size and size > self.op_size else 1.0
        for bucket, counts_bytes in self._relevant(is_write):
            amount = size if counts_bytes else units
            bucket.level += amount
            if bucket.burst_length > 1:
                bucket.burst_level += amount

    @property
    def busy(self) -> bool:
        """A group in use by a node cannot be deleted."""
        return bool(self.members)


#: Every throttle group by id (QEMU's throttle_groups list).
GROUPS: dict[str, ThrottleGroup] = {}


def limits_of(props: Any) -> dict[str, int]:
    """The limits given to a group: ``limits`` and the ``x-`` properties."""
    given: dict[str, int] = {}
    limits = getattr(props, "limits", None)
    for name in (*BUCKETS, *(f"{n}-max" for n in BUCKETS), *(f"{n}-max-length" for n in BUCKETS), "iops-size"):
        attr = name.replace("-", "_")
        for source, key in ((limits, attr), (props, f"x_{attr}")):
            value = getattr(source, key, None) if source is not None else None
            if value is not None:
                given[name] = value
    return given


def new_group(name: str, props: Any) -> ThrottleGroup:
    """A group from ThrottleGroupProperties, checked as throttle_is_valid()
    (``object-add`` then lists it in GROUPS)."""
    given = limits_of(props)
    buckets = {limit: Bucket(avg=given.get(limit, 0), max=given.get(f"{limit}-max", 0),
                             burst_length=given.get(f"{limit}-max-length", 1)) for limit in BUCKETS}
    _check(buckets)
    return ThrottleGroup(name, {limit: bucket for limit, bucket in buckets.items() if bucket.avg or bucket.max},
                         op_size=given.get("iops-size", 0))


def _check(buckets: dict[str, Bucket]) -> None:
    for kind in ("bps", "iops"):
        total = buckets[f"{kind}-total"]
        for direction in ("read", "write"):
            other = buckets[f"{kind}-{direction}"]
            if (total.avg and other.avg) or (total.max and other.max):
                raise QMPError("bps/iops/max total values and read/write values cannot be used at the same time")
    for bucket in buckets.values():
        if not 0 <= bucket.avg <= VALUE_MAX or not 0 <= bucket.max <= VALUE_MAX:
            raise QMPError(f"bps/iops/max values must be within [0, {VALUE_MAX}]")
        if not bucket.burst_length:
            raise QMPError("the burst length cannot be 0")
        if bucket.burst_length > 1 and not bucket.max:
            raise QMPError("burst length set without burst rate")
        if bucket.max and not bucket.avg:
            raise QMPError("bps_max/iops_max require corresponding bps/iops values")
        if bucket.max and bucket.max < bucket.avg:
            raise QMPError("bps_max/iops_max cannot be lower than bps/iops")


class ThrottleNode(BlockNode):
    """A filter whose reads and writes wait for their group's limits."""

    driver = "throttle"
    is_filter = True
    strong_options = ("throttle-group",)
    mutable_options = ("throttle-group",)

    def __init__(self, node_name: str, file: BlockNode, group: ThrottleGroup, *, read_only: bool = False) -> None:
        super().__init__(node_name, read_only=read_only)
        self.attach_child("file", file, Role.FILTERED | Role.PRIMARY)
        self.group = group
        group.members.append(self)
        self._queues = (asyncio.Lock(), asyncio.Lock())   # reads, writes: first come, first served
        self._drained = 0
        self._released = asyncio.Event()

    def reopen_prepare(self, options: dict[str, Any]) -> Callable[[], None]:
        """throttle_reopen_prepare: the node may move to another group."""
        group = _find_group(str(options.pop("throttle-group", None)))

        def commit() -> None:
            if self in self.group.members:
                self.group.members.remove(self)
            self.group = group
            group.members.append(self)
        return commit

    @property  # type: ignore[override]
    def total_size(self) -> int:
        return self.file.total_size if self.children else 0

    @total_size.setter
    def total_size(self, value: int) -> None:
        """Set by ``BlockNode.__init__``; the size is the file's."""

    @property
    def grows_on_write(self) -> bool:
        """Over a file, a format's writes past the end grow it through this node."""
        return bool(self.children) and self.file.grows_on_write

    @grows_on_write.setter
    def grows_on_write(self, value: bool) -> None:
        """Never set: it is the file's."""

    # -- throttling ------------------------------------------------------------------

    async def _throttle(self, is_write: bool, size: int) -> None:
        """throttle_group_co_io_limits_intercept(): wait for the limits, then count."""
        async with self._queues[is_write]:
            while not self._drained:
                wait = self.group.wait_ns(is_write)
                if not wait:
                    break
                await self._sleep_or_release(clock.now_ns() + wait)
            self.group.account(is_write, size)

    async def _sleep_or_release(self, deadline_ns: int) -> None:
        sleeper = asyncio.ensure_future(clock.sleep_until(deadline_ns))
        release = asyncio.ensure_future(self._released.wait())
        try:
            await asyncio.wait({sleeper, release}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, release):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def drain_begin(self) -> None:
        self._drained += 1
        self._released.set()

    def drain_end(self) -> None:
        self._drained -= 1
        if not self._drained:
            self._released.clear()

    # -- I/O -----------------------------------------------------------------------

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        await self._throttle(False, len(buf))
        await self.file.read(offset, buf)

    async def _co_write(self, offset: int, data: memoryview) -> None:
        await self._throttle(True, len(data))
        await self.file.write(offset, data)

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        await self._throttle(True, length)
        await self.file.write_zeroes(offset, length, may_unmap)

    async def _co_discard(self, offset: int, length: int) -> None:
        await self._throttle(True, length)
        await self.file.discard(offset, length)

    async def _co_flush(self) -> None:
        await self.file.flush()

    async def _co_truncate(self, size: int) -> None:
        await self.file.truncate(size)

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        return await self.file.block_status(offset, length)

    async def close(self) -> None:
        if self in self.group.members:
            self.group.members.remove(self)


def _find_group(name: str) -> ThrottleGroup:
    group = GROUPS.get(name)
    if group is None:
        raise QMPError(f"Throttle group '{name}' does not exist")
    return group


@driver("throttle")
async def open_throttle(options: Any, graph: BlockGraph) -> BlockNode:
    """``driver: throttle``: the group must exist already."""
    branch = options.u
    group = _find_group(branch.throttle_group)
    file = await graph.open_child(branch.file, options, "file")
    return ThrottleNode(node_name_of(options), file, group, read_only=bool(options.read_only))

