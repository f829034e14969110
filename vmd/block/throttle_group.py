"""Throttle groups and their members (QEMU's util/throttle.c and
block/throttle-groups.c).

A group holds the limits and the state of QEMU's leaky buckets: a bucket
per limit (bytes and operations; total, read and write) fills with each
request and leaks at the limit's rate; a request must wait while a bucket
it counts against is fuller than its burst allowance (a tenth of a second
at the average rate, or ``max`` for ``max-length`` seconds). Write-zeroes
and discard count as writes; flushes are not throttled.

A member is one user of a group's limits: a ``throttle`` filter node or a
BlockBackend with I/O limits (``block_set_io_throttle``, ``-drive
throttling.*``); both use :class:`ThrottleGroupMember`. As in QEMU, only
one timer per direction is armed in a group at a time, and when it fires
the requests waiting in the group go in round-robin order among its
members, so I/O is shared evenly. Reads and writes of one member go in
the order they came. The request the timer wakes is counted against the
buckets, and the requests that may follow it without waiting are let go,
all inside the timer callback (QEMU's coroutines do the same before the
callback returns), so one ``clock_step`` under qtest moves all the I/O its
time allows.

A drained section over a member disables its limits (``io_limits_disabled``):
what it holds back goes at once, and new requests pass unthrottled until
the section ends.

Time is QEMU_CLOCK_VIRTUAL under ``-accel qtest`` and the host's monotonic
clock otherwise (``vmd.qtest.clock``). Groups are process-wide by name
(QEMU's list of throttle groups): one made by ``-object throttle-group``
lives until ``object-del``, one a BlockBackend names into existence goes
with its last member. All of this belongs to the event loop thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

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
#: Every limit a group takes, in ThrottleLimits' names.
LIMIT_NAMES = (*BUCKETS, *(f"{n}-max" for n in BUCKETS), *(f"{n}-max-length" for n in BUCKETS), "iops-size")


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


def buckets_of(given: dict[str, int]) -> dict[str, Bucket]:
    """The six buckets for limits in ThrottleLimits' names, checked as
    throttle_is_valid() (raises QMPError with QEMU's texts)."""
    buckets = {limit: Bucket(avg=given.get(limit, 0), max=given.get(f"{limit}-max", 0),
                             burst_length=given.get(f"{limit}-max-length", 1)) for limit in BUCKETS}
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
    return buckets


class ThrottleGroup:
    """Limits, bucket levels and the round-robin state shared by members."""

    type_name: ClassVar[str] = "throttle-group"

    def __init__(self, name: str, buckets: dict[str, Bucket] | None = None, op_size: int = 0, *,
                 user_created: bool = True) -> None:
        self.name = name
        #: Made by ``-object``/``object-add`` (else it goes with its last member).
        self.user_created = user_created
        #: Newest first, as QEMU inserts members at the head of its list.
        self.members: list[ThrottleGroupMember] = []
        #: Per direction (read, write): whose turn it is, and whether a
        #: member's timer is armed for the group.
        self.tokens: list[ThrottleGroupMember | None] = [None, None]
        self.timer_armed = [False, False]
        self.buckets: dict[str, Bucket] = {}
        self.op_size = 0
        self._leaked_at = clock.now_ns()
        self.configure(buckets or buckets_of({}), op_size)

    def configure(self, buckets: dict[str, Bucket], op_size: int) -> None:
        """throttle_config(): new limits with empty buckets."""
        self.buckets = {limit: bucket for limit, bucket in buckets.items() if bucket.avg or bucket.max}
        for bucket in self.buckets.values():
            bucket.level = bucket.burst_level = 0.0
        self.op_size = op_size
        self._leaked_at = clock.now_ns()

    def limits(self) -> dict[str, int]:
        """Every limit in ThrottleLimits' names (unset ones 0, lengths 1)."""
        given: dict[str, int] = {"iops-size": self.op_size}
        for name in BUCKETS:
            bucket = self.buckets.get(name, Bucket())
            given.update({name: int(bucket.avg), f"{name}-max": int(bucket.max),
                          f"{name}-max-length": bucket.burst_length})
        return given

    @property
    def busy(self) -> bool:
        """A group in use by a member cannot be deleted."""
        return bool(self.members)

    # -- the buckets ----------------------------------------------------------------

    def _relevant(self, is_write: bool) -> list[tuple[Bucket, bool]]:
        return [(self.buckets[name], counts_bytes) for name, (counts_bytes, reads, writes) in BUCKETS.items()
                if name in self.buckets and (writes if is_write else reads)]

    def _leak(self) -> None:
        now = clock.now_ns()
        if now > self._leaked_at:
            for bucket in self.buckets.values():
                bucket.leak(now - self._leaked_at)
            self._leaked_at = now

    def wait_ns(self, is_write: bool) -> int:
        """throttle_compute_timer(): how long the next request must wait."""
        self._leak()
        return max((bucket.wait_ns() for bucket, _bytes in self._relevant(is_write)), default=0)

    def account(self, is_write: bool, size: int) -> None:
        """throttle_account(): the request's bytes, or operations (counted in
        ``iops-size`` units when it is set and the request is larger)."""
        units = size / self.op_size if self.op_size and size > self.op_size else 1.0
        for bucket, counts_bytes in self._relevant(is_write):
            if bucket.avg:
                amount = size if counts_bytes else units
                bucket.level += amount
                if bucket.burst_length > 1:
                    bucket.burst_level += amount

    # -- round robin (QEMU's throttle-groups.c) ---------------------------------------

    def _after(self, member: ThrottleGroupMember) -> ThrottleGroupMember:
        index = self.members.index(member) + 1
        return self.members[index % len(self.members)]

    def next_token(self, member: ThrottleGroupMember, is_write: bool) -> ThrottleGroupMember:
        """next_throttle_token(): the next member after the token with queued
        requests, else ``member``; a drained member with queued requests
        goes first, not to wait behind the others' throttled ones."""
        if member.io_limits_disabled and member.pending(is_write):
            return member
        start = self.tokens[is_write] or member
        token = self._after(start)
        while token is not start and not token.pending(is_write):
            token = self._after(token)
        if token is start and not token.pending(is_write):
            token = member
        return token

    def schedule_timer(self, member: ThrottleGroupMember, is_write: bool) -> bool:
        """throttle_group_schedule_timer(): whether ``member``'s next request
        must wait; arms its timer when none is armed in the group."""
        if member.io_limits_disabled:
            return False
        if self.timer_armed[is_write]:
            return True
        wait = self.wait_ns(is_write)
        if not wait:
            return False
        member.arm(is_write, clock.now_ns() + wait)
        self.tokens[is_write] = member
        self.timer_armed[is_write] = True
        return True

    def schedule_next(self, member: ThrottleGroupMember, is_write: bool) -> ThrottleGroupMember | None:
        """schedule_next_request() after one of ``member``'s requests went:
        the member whose first queued request may go now (``member`` itself
        is preferred), or None when a timer now decides."""
        token = self.next_token(member, is_write)
        if not token.pending(is_write) or self.schedule_timer(token, is_write):
            return None
        if member.pending(is_write):
            self.tokens[is_write] = member
            return member
        token.arm(is_write, clock.now_ns())
        self.timer_armed[is_write] = True
        self.tokens[is_write] = token
        return None

    def run_queue(self, member: ThrottleGroupMember | None, is_write: bool) -> None:
        """Let ``member``'s first queued request go, and those that may
        follow it: what QEMU's woken coroutines do one after another."""
        while member is not None and member.wake(is_write):
            member = self.schedule_next(member, is_write)

    def restart_queue(self, member: ThrottleGroupMember, is_write: bool) -> None:
        """throttle_group_restart_queue(): wake ``member``'s first request,
        or schedule the group's next one when it has none."""
        member.wake(is_write)
        self.run_queue(self.schedule_next(member, is_write), is_write)


#: Every throttle group by name (QEMU's throttle_groups list).
GROUPS: dict[str, ThrottleGroup] = {}


def limits_of(props: Any) -> dict[str, int]:
    """The limits given to a ``throttle-group`` object: ``limits`` and the ``x-`` properties."""
    given: dict[str, int] = {}
    limits = getattr(props, "limits", None)
    for name in LIMIT_NAMES:
        attr = name.replace("-", "_")
        for source, key in ((limits, attr), (props, f"x_{attr}")):
            value = getattr(source, key, None) if source is not None else None
            if value is not None:
                given[name] = value
    return given


def new_group(name: str, props: Any) -> ThrottleGroup:
    """A ``throttle-group`` object from ThrottleGroupProperties, checked as
    throttle_group_obj_complete() (``object-add`` then lists it in GROUPS)."""
    given = limits_of(props)
    buckets = buckets_of(given)
    if name in GROUPS and not GROUPS[name].user_created:   # a user-created one is a duplicate object id
        raise QMPError("A group with this name already exists")
    return ThrottleGroup(name, buckets, given.get("iops-size", 0))


class ThrottleGroupMember:
    """One user of a group's limits (QEMU's ThrottleGroupMember)."""

    def __init__(self) -> None:
        self.group: ThrottleGroup | None = None
        #: Drained sections under way: limits do not apply meanwhile.
        self.io_limits_disabled = 0
        self._queues: tuple[deque[tuple[int, asyncio.Future[None]]], ...] = (deque(), deque())
        self._timers: list[clock.Timer | None] = [None, None]

    def pending(self, is_write: bool) -> bool:
        return bool(self._queues[is_write])

    # -- membership --------------------------------------------------------------------

    def join(self, name: str) -> None:
        """throttle_group_register_tgm(): join group ``name``, made (empty)
        if there is none of that name."""
        group = GROUPS.get(name)
        if group is None:
            group = GROUPS[name] = ThrottleGroup(name, user_created=False)
        for is_write in (False, True):
            if group.tokens[is_write] is None:
                group.tokens[is_write] = self
        group.members.insert(0, self)
        self.group = group

    def leave(self) -> None:
        """throttle_group_unregister_tgm(): nothing may be queued (drain first)."""
        group, self.group = self.group, None
        if group is None:
            return
        for is_write in (False, True):
            assert not self._queues[is_write], "throttled requests left behind"
            if group.tokens[is_write] is self:
                after = group._after(self)
                group.tokens[is_write] = after if after is not self else None
            timer, self._timers[is_write] = self._timers[is_write], None
            if timer is not None:
                timer.cancel()
        group.members.remove(self)
        if not group.members and not group.user_created:
            del GROUPS[group.name]

    # -- requests --------------------------------------------------------------------

    async def intercept(self, is_write: bool, size: int) -> None:
        """throttle_group_co_io_limits_intercept(): wait for the limits, then count.

        A request that must wait is queued; whoever lets it go counts it
        against the buckets. A cancelled wait leaves the queue."""
        group = self.group
        assert group is not None
        token = group.next_token(self, is_write)
        if group.schedule_timer(token, is_write) or self.pending(is_write):
            entry = (size, asyncio.get_running_loop().create_future())
            self._queues[is_write].append(entry)
            try:
                await entry[1]
            except asyncio.CancelledError:
                if entry in self._queues[is_write]:
                    self._queues[is_write].remove(entry)
                raise
            return
        group.account(is_write, size)
        group.run_queue(group.schedule_next(self, is_write), is_write)

    def wake(self, is_write: bool) -> bool:
        """Let the first queued request go, counted; False if none was queued."""
        assert self.group is not None
        queue = self._queues[is_write]
        if not queue:
            return False
        size, future = queue.popleft()
        self.group.account(is_write, size)
        future.set_result(None)
        return True

    # -- timers and restarts -----------------------------------------------------------

    def arm(self, is_write: bool, deadline_ns: int) -> None:
        """Arm this member's timer for the direction, unless it is armed already."""
        timer = self._timers[is_write]
        if timer is None or not timer.pending:
            self._timers[is_write] = clock.call_at(deadline_ns, lambda: self._fired(is_write))

    def _fired(self, is_write: bool) -> None:
        """timer_cb(): the group's timer is free again; this member's turn."""
        assert self.group is not None
        self.group.timer_armed[is_write] = False
        self.group.restart_queue(self, is_write)

    def restart(self) -> None:
        """throttle_group_restart_tgm(): fire a pending timer now, else let
        the first queued request try again (new limits, drained section)."""
        if self.group is None:
            return
        for is_write in (False, True):
            timer = self._timers[is_write]
            if timer is not None and timer.pending:
                timer.cancel()
                self._fired(is_write)
            else:
                self.group.restart_queue(self, is_write)

    def drain_begin(self) -> None:
        """A drained section: what waits goes, and limits are off until it ends."""
        self.io_limits_disabled += 1
        if self.io_limits_disabled == 1:
            self.restart()

    def drain_end(self) -> None:
        self.io_limits_disabled -= 1
