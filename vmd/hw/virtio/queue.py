"""The split virtqueue (virtio 1.x section 2.6), device side, without I/O.

A queue is three guest-memory areas the driver allocates: the descriptor
table, the available ring (driver -> device) and the used ring (device ->
driver). ``VirtQueue`` reads and writes them through ``GuestMemory`` only,
so it runs in unit tests on a plain bytearray.

The guest is not trusted. Everything it controls is checked, and any
violation raises ``VirtioError`` (the device then marks itself broken and
sets NEEDS_RESET, QEMU's ``virtio_error``): rings outside RAM or
misaligned, a queue size that is not a power of two, an available index
that moves by more than the queue size, a head or ``next`` index out of
range, a chain longer than the table (which is how a descriptor loop
shows) or than 1024 buffers, zero-length buffers, device-readable after device-writable
buffers, nested indirect tables and indirect tables whose size is not a
multiple of 16. Buffers are handed out as memoryview slices of guest RAM
(zero copy).

Ordering (x86 is TSO, so only store-then-load needs a fence): after
publishing ``used.idx`` the device reads ``used_event``, and after writing
``avail_event`` it re-reads ``avail.idx``; both go through ``_fence``, a
lock round trip (a locked instruction, hence a full barrier).
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

from vmd.hw.virtio.memory import GuestMemory, GuestMemoryError

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
DESC_SIZE = 16
MAX_QUEUE_SIZE = 32768
#: Most buffers one request may have (QEMU's VIRTQUEUE_MAX_SIZE scatter-gather limit).
MAX_CHAIN = 1024

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


class VirtioError(Exception):
    """The driver broke the virtio rules; the device must be reset."""


@dataclass
class Element:
    """One popped request: its head index and buffers in chain order."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)
    generation: int = 0

    @property
    def readable_size(self) -> int:
        return sum(len(buf) for buf in self.readable)

    @property
    def writable_size(self) -> int:
        return sum(len(buf) for buf in self.writable)

    def read_all(self) -> bytes:
        """The device-readable bytes, concatenated (a copy)."""
        return b"".join(bytes(buf) for buf in self.readable)

    def write(self, data: bytes | memoryview, offset: int = 0) -> int:
        """Copy ``data`` into the writable buffers from ``offset``; returns bytes stored."""
        done = 0
        for buf in self.writable:
            if offset >= len(buf):
                offset -= len(buf)
                continue
            count = min(len(buf) - offset, len(data) - done)
            buf[offset:offset + count] = data[done:done + count]
            done += count
            offset = 0
            if done == len(data):
                break
        return done


class VirtQueue:
    """One split virtqueue; configured by the transport, used by the device."""

    def __init__(self, index: int, max_size: int) -> None:
        self.index = index
        self.max_size = max_size
        self.vector = 0xFFFF
        self.generation = 0
        self._fence_lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Back to the driver-unconfigured state; drops requests in flight."""
        self.size = self.max_size
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.enabled = False
        self.event_idx = False
        self.indirect = False
        self.last_avail = 0
        self.used_idx = 0
        self.signalled_used: int | None = None
        self._unsignalled = False
        self.generation += 1
        self._memory: GuestMemory | None = None

    # -- set-up -----------------------------------------------------------------

    def enable(self, memory: GuestMemory, event_idx: bool, indirect: bool) -> None:
        """The driver set ``queue_enable``: check and map the rings."""
        size = self.size
        if size == 0 or size & (size - 1) or size > self.max_size:
            raise VirtioError(f"virtio: queue {self.index} size {size} is not a power of 2 "
                              f"up to {self.max_size}")
        if self.desc_addr % 16 or self.avail_addr % 2 or self.used_addr % 4:
            raise VirtioError(f"virtio: queue {self.index} rings are misaligned")
        try:
            self._desc = memory.view(self.desc_addr, DESC_SIZE * size)
            self._avail = memory.view(self.avail_addr, 6 + 2 * size)
            self._used = memory.view(self.used_addr, 6 + 8 * size)
        except GuestMemoryError as error:
            raise VirtioError(f"virtio: cannot map queue {self.index}: {error}") from None
        self._memory = memory
        self.event_idx = event_idx
        self.indirect = indirect
        self.enabled = True

    def _fence(self) -> None:
        with self._fence_lock:
            pass

    # -- the available ring --------------------------------------------------------

    def _avail_idx(self) -> int:
        value: int = _U16.unpack_from(self._avail, 2)[0]
        if (value - self.last_avail) & 0xFFFF > self.size:
            raise VirtioError(f"Guest moved avail index from {self.last_avail} to {value}")
        return value

    def _set_avail_event(self, value: int) -> None:
        _U16.pack_into(self._used, 4 + 8 * self.size, value)

    def has_work(self) -> bool:
        return self.enabled and self._avail_idx() != self.last_avail

    def pop(self) -> Element | None:
        """The next available request, or None when the ring is empty."""
        if not self.enabled:
            return None
        avail = self._avail_idx()
        if avail == self.last_avail:
            if not self.event_idx:
                return None
            self._set_avail_event(self.last_avail)
            self._fence()
            avail = self._avail_idx()
            if avail == self.last_avail:
                return None
        slot = self.last_avail % self.size
        head: int = _U16.unpack_from(self._avail, 4 + 2 * slot)[0]
        if head >= self.size:
            raise VirtioError(f"Guest says index {head} is available")
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:
            self._set_avail_event(self.last_avail)
        element = Element(head, generation=self.generation)
        self._walk(head, element)
        return element

    def _walk(self, head: int, element: Element) -> None:
        assert self._memory is not None
        table, limit, index = self._desc, self.size, head
        addr, length, flags, nxt = _DESC.unpack_from(table, DESC_SIZE * index)
        if flags & DESC_F_INDIRECT:
            if not self.indirect:
                raise VirtioError("virtio: indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")
            if length == 0 or length % DESC_SIZE:
                raise VirtioError(f"Invalid size for indirect buffer table: {length}")
            table = self._map(addr, length)
            limit, index = length // DESC_SIZE, 0
            addr, length, flags, nxt = _DESC.unpack_from(table, 0)
        count = 0
        while True:
            count += 1
            if count > limit:
                raise VirtioError("Looped descriptor")
            if count > MAX_CHAIN:
                raise VirtioError(f"virtio: more than {MAX_CHAIN} descriptors in a request")
            if flags & DESC_F_INDIRECT:
                raise VirtioError("virtio: nested or chained indirect descriptor")
            if length == 0:
                raise VirtioError("virtio: zero sized buffers are not allowed")
            buf = self._map(addr, length)
            if flags & DESC_F_WRITE:
                element.writable.append(buf)
            elif element.writable:
                raise VirtioError("Incorrect order for descriptors")
            else:
                element.readable.append(buf)
            if not flags & DESC_F_NEXT:
                return
            if nxt >= limit:
                raise VirtioError(f"Desc next is {nxt}")
            addr, length, flags, nxt = _DESC.unpack_from(table, DESC_SIZE * nxt)

    def _map(self, addr: int, length: int) -> memoryview:
        assert self._memory is not None
        try:
            return self._memory.view(addr, length)
        except GuestMemoryError as error:
            raise VirtioError(f"virtio: {error}") from None

    # -- the used ring -----------------------------------------------------------

    def push(self, element: Element, written: int) -> bool:
        """Return a request with ``written`` bytes stored; False if it is stale.

        A request popped before a reset (its generation is old) is dropped:
        the driver has forgotten it and its memory may be reused.
        """
        if element.generation != self.generation or not self.enabled:
            return False
        slot = self.used_idx % self.size
        _USED_ELEM.pack_into(self._used, 4 + 8 * slot, element.head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        _U16.pack_into(self._used, 2, self.used_idx)
        self._unsignalled = True
        return True

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last one."""
        if not self.enabled or not self._unsignalled:
            return False
        self._unsignalled = False
        self._fence()
        if not self.event_idx:
            flags: int = _U16.unpack_from(self._avail, 0)[0]
            return not flags & AVAIL_F_NO_INTERRUPT
        new, old = self.used_idx, self.signalled_used
        self.signalled_used = new
        if old is None:
            return True
        used_event: int = _U16.unpack_from(self._avail, 4 + 2 * self.size)[0]
        return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF
