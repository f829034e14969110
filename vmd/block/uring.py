"""io_uring for file reads and writes: the kernel does the I/O, the loop only
submits and reaps.

Through cffi in ABI mode against Debian's ``liburing.so.2`` (2.3): the
library's exported calls set the ring up, hand out submission entries,
submit and peek at completions; what liburing keeps as inline functions
(preparing an entry, advancing the completion ring) is done here on the
structures, whose layout ``tests/test_uring.py`` checks against the headers.

Thread model: a ``Ring`` belongs to the event loop thread that made it. The
operations asked for in one turn of the loop are submitted together, with
one ``io_uring_submit`` call; the kernel signals completions on an eventfd
that the loop watches, and the loop hands each caller its result. A buffer
stays referenced here until its operation completes, even if the caller
was cancelled. Buffered writes that the file system cannot do without
blocking (ext4) run on the kernel's own io-wq threads: no Python thread,
no GIL, no hop through the loop's executor.

``Ring.open`` raises ``OSError`` where io_uring cannot be had (no liburing,
an old kernel, a seccomp filter, ``kernel.io_uring_disabled``); ``vmd.block
.aio`` then keeps using its worker threads.
"""

from __future__ import annotations

import asyncio
import errno
import os
import struct
from typing import Any

_CDEF = """
struct io_uring_sqe {
    uint8_t opcode; uint8_t flags; uint16_t ioprio; int32_t fd;
    uint64_t off; uint64_t addr; uint32_t len; uint32_t rw_flags;
    uint64_t user_data; uint16_t buf_index; uint16_t personality;
    int32_t splice_fd_in; uint64_t addr3; uint64_t pad2;
};
struct io_uring_cqe { uint64_t user_data; int32_t res; uint32_t flags; };
struct io_uring_sq {
    unsigned *khead; unsigned *ktail; unsigned *kring_mask; unsigned *kring_entries;
    unsigned *kflags; unsigned *kdropped; unsigned *array; struct io_uring_sqe *sqes;
    unsigned sqe_head; unsigned sqe_tail; size_t ring_sz; void *ring_ptr;
    unsigned ring_mask; unsigned ring_entries; unsigned pad[2];
};
struct io_uring_cq {
    unsigned *khead; unsigned *ktail; unsigned *kring_mask; unsigned *kring_entries;
    unsigned *kflags; unsigned *koverflow; struct io_uring_cqe *cqes;
    size_t ring_sz; void *ring_ptr; unsigned ring_mask; unsigned ring_entries; unsigned pad[2];
};
struct io_uring {
    struct io_uring_sq sq; struct io_uring_cq cq; unsigned flags; int ring_fd;
    unsigned features; int enter_ring_fd; uint8_t int_flags; uint8_t pad[3]; unsigned pad2;
};
int io_uring_queue_init(unsigned entries, struct io_uring *ring, unsigned flags);
void io_uring_queue_exit(struct io_uring *ring);
struct io_uring_sqe *io_uring_get_sqe(struct io_uring *ring);
int io_uring_submit(struct io_uring *ring);
unsigned io_uring_peek_batch_cqe(struct io_uring *ring, struct io_uring_cqe **cqes, unsigned count);
int io_uring_register_eventfd(struct io_uring *ring, int fd);
"""

IORING_OP_READ = 22
IORING_OP_WRITE = 23
#: Go to an io-wq thread at once: what reaches the ring would block (a read
#: the page cache could not serve, a buffered write that ext4 does inline in
#: io_uring_enter, where it would cost the loop ~10 us per 4 KiB).
IOSQE_ASYNC = 1 << 4
#: Completions of io-wq work reach the ring as task work of the loop's
#: thread. By default the kernel interrupts that thread (an IPI) for each
#: one: measured here, a third of the loop thread's time under 4 KiB random
#: writes went to those interrupts. With ``COOP_TASKRUN`` (Linux 5.19) the
#: task work waits for the thread's next system call (the loop makes one
#: at least every turn), or wakes it if it sleeps; older kernels refuse the
#: flag and get none. (``DEFER_TASKRUN`` would batch even more, but a
#: killed vmd's in-flight requests then keep its files, and their OFD locks,
#: open for a while after the process is gone: QEMU could not open the
#: image at once.)
IORING_SETUP_COOP_TASKRUN = 1 << 8
SETUP_FLAGS = (IORING_SETUP_COOP_TASKRUN, 0)
#: Entries in the submission queue (the completion queue has twice as many).
ENTRIES = 256
#: How soon a submission the kernel refused for now (EAGAIN, EBUSY) is retried.
_RETRY_S = 0.001
#: One submission entry as io_uring_prep_rw fills it: opcode, flags, ioprio,
#: fd, off, addr, len, rw_flags, user_data, buf_index, personality,
#: splice_fd_in, addr3, pad.
SQE = struct.Struct("=BBHiQQIIQHHiQQ")

_lib: Any = None
_ffi: Any = None


def _load() -> tuple[Any, Any]:
    """The cffi library object; raises OSError where liburing is missing."""
    global _lib, _ffi
    if _lib is None:
        from cffi import FFI
        ffi = FFI()
        ffi.cdef(_CDEF)
        _lib = ffi.dlopen("liburing.so.2")
        _ffi = ffi
    return _ffi, _lib


class RingFull(OSError):
    """No submission entry is free even after submitting: use a worker."""


class Ring:
    """One io_uring on an event loop (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ffi: Any, lib: Any, ring: Any,
                 eventfd: int, flags: int = 0) -> None:
        self.loop = loop
        self._ffi = ffi
        self._lib = lib
        self._ring = ring
        self._eventfd = eventfd
        #: The ring's setup flags (one of ``SETUP_FLAGS``).
        self.flags = flags
        # cffi's own calls, without the keyword handling of its FFI methods
        # (a good part of the cost of a request on this path).
        backend = ffi._backend
        self._from_buffer = backend.from_buffer
        self._cast = backend.cast
        self._memmove = backend.memmove
        self._char_array = ffi.typeof("char[]")
        self._uintptr = ffi.typeof("uintptr_t")
        self._cqes = ffi.new("struct io_uring_cqe *[]", ENTRIES * 2)
        #: user_data -> (future, the buffer's cffi pointer, kept alive)
        self._inflight: dict[int, tuple[asyncio.Future[int], Any]] = {}
        self._next = 0
        self._unsubmitted = 0
        loop.add_reader(eventfd, self._reap)

    @classmethod
    def open(cls, loop: asyncio.AbstractEventLoop) -> Ring:
        """A ring for ``loop``; raises OSError where io_uring is unavailable."""
        try:
            ffi, lib = _load()
        except (ImportError, OSError) as error:
            raise OSError(errno.ENOSYS, f"liburing: {error}") from None
        ring = ffi.new("struct io_uring *")
        for flags in SETUP_FLAGS:
            code = lib.io_uring_queue_init(ENTRIES, ring, flags)
            if code != -errno.EINVAL:  # EINVAL: a flag this kernel does not know
                break
        if code < 0:
            raise OSError(-code, f"io_uring_setup: {os.strerror(-code)}")
        eventfd = -1
        try:
            eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            code = lib.io_uring_register_eventfd(ring, eventfd)
            if code < 0:
                raise OSError(-code, f"io_uring_register: {os.strerror(-code)}")
            return cls(loop, ffi, lib, ring, eventfd, flags)
        except BaseException:
            if eventfd >= 0:
                os.close(eventfd)
            lib.io_uring_queue_exit(ring)
            raise

    def close(self) -> None:
        """Give the ring back; only when nothing is in flight."""
        if self._eventfd < 0:
            return
        self.loop.remove_reader(self._eventfd)
        self._lib.io_uring_queue_exit(self._ring)
        os.close(self._eventfd)
        self._eventfd = -1

    @property
    def busy(self) -> bool:
        return bool(self._inflight)

    def read(self, fd: int, buf: memoryview, offset: int) -> asyncio.Future[int]:
        """Read into ``buf``; the future's result is the byte count (short at EOF).

        Raises RingFull when no submission entry can be had.
        """
        return self._queue(IORING_OP_READ, fd, buf, offset)

    def write(self, fd: int, data: memoryview, offset: int) -> asyncio.Future[int]:
        """Write ``data``; the future's result is the byte count. Raises RingFull."""
        return self._queue(IORING_OP_WRITE, fd, data, offset)

    def _queue(self, opcode: int, fd: int, buf: memoryview, offset: int) -> asyncio.Future[int]:
        sqe = self._lib.io_uring_get_sqe(self._ring)
        if sqe == self._ffi.NULL:  # the queue is full: submit what is there
            self._submit()
            sqe = self._lib.io_uring_get_sqe(self._ring)
            if sqe == self._ffi.NULL:
                raise RingFull(errno.EAGAIN, "io_uring submission queue full")
        # The pointer holds the buffer (and keeps it alive) until completion.
        pointer = self._from_buffer(self._char_array, buf, opcode == IORING_OP_READ)
        key = self._next = (self._next + 1) & 0xFFFFFFFFFFFF
        address = int(self._cast(self._uintptr, pointer))
        self._memmove(sqe, SQE.pack(opcode, IOSQE_ASYNC, 0, fd, offset, address, len(buf), 0,
                                    key, 0, 0, 0, 0, 0), SQE.size)
        future = self.loop.create_future()
        self._inflight[key] = (future, pointer)
        if not self._unsubmitted:
            self.loop.call_soon(self._submit)
        self._unsubmitted += 1
        return future

    def _submit(self) -> None:
        """Hand the kernel what was queued; what it did not take is retried."""
        if not self._unsubmitted:
            return
        code = self._lib.io_uring_submit(self._ring)
        if code >= 0:
            self._unsubmitted = max(0, self._unsubmitted - code)
            if self._unsubmitted:
                self.loop.call_later(_RETRY_S, self._submit)
        elif -code in (errno.EAGAIN, errno.EBUSY, errno.EINTR):
            self.loop.call_later(_RETRY_S, self._submit)  # the entries stay queued
        else:
            self._fail_all(OSError(-code, f"io_uring_submit: {os.strerror(-code)}"))

    def _fail_all(self, error: OSError) -> None:
        """The ring is broken: every waiting caller gets ``error``. The
        buffers stay referenced, since the kernel may still use them."""
        self._unsubmitted = 0
        for future, _pointer in self._inflight.values():
            if not future.done():
                future.set_exception(error)

    def _reap(self) -> None:
        """The eventfd fired: hand out every completion there is."""
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            pass
        ring, cqes = self._ring, self._cqes
        while count := self._lib.io_uring_peek_batch_cqe(ring, cqes, len(cqes)):
            for i in range(count):
                cqe = cqes[i]
                entry = self._inflight.pop(cqe.user_data, None)
                if entry is None or entry[0].done():
                    continue
                if cqe.res < 0:
                    entry[0].set_exception(OSError(-cqe.res, os.strerror(-cqe.res)))
                else:
                    entry[0].set_result(cqe.res)
            # io_uring_cq_advance (inline in liburing): a release store of the
            # new head; on x86 an ordinary store after the reads above is one.
            ring.cq.khead[0] = (ring.cq.khead[0] + count) & 0xFFFFFFFF
