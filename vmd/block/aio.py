"""The I/O engine: blocking file system calls on worker threads, in batches.

The event loop must never wait on a disk, so every pread/pwrite/fdatasync/
fallocate that may block runs on a thread of one shared pool and the
coroutine awaits it. The pool is small and fixed (a disk queue, not a
thread per request); a buffer handed to a worker is not touched by the loop
until the call ends. (Reads that hit the page cache do not come here: the
file driver tries them on the loop with ``RWF_NOWAIT`` first.)

The hop to a worker and back costs far more than a buffered 4 KiB write
(measured here: 150-220 us a hop under load against 6 us for the write), so
calls are not handed over one by one: those made in one turn of the event
loop go to a worker together, which runs them in order and hands all
results back at once, like a submission queue. Requests that an NBD client
keeps in flight arrive together, so a batch is as deep as the client's
queue, and the hop is paid once per batch. A call that moves ``ALONE_BYTES``
or more goes to a worker by itself: its hop is cheap next to the copy, and
large requests in parallel on several workers finish sooner than in a row.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from vmd.block.uring import Ring, RingFull

T = TypeVar("T")
log = logging.getLogger(__name__)

WORKERS = 8
ALONE_BYTES = 64 << 10
_pool: ThreadPoolExecutor | None = None
_Call = tuple[Callable[..., Any], tuple[object, ...], "asyncio.Future[Any]"]


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vmd-io")
    return _pool


class _Batcher:
    """The calls of one loop turn, handed to a worker together.

    Owned by the event loop thread; a worker sees only the list it is given.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[_Call] = []

    def add(self, function: Callable[..., Any], args: tuple[object, ...]) -> asyncio.Future[Any]:
        if sum(len(a) for a in args if isinstance(a, memoryview)) >= ALONE_BYTES:
            return self.loop.run_in_executor(_executor(), function, *args)
        future = self.loop.create_future()
        if not self.pending:
            self.loop.call_soon(self._submit)
        self.pending.append((function, args, future))
        return future

    def _submit(self) -> None:
        calls, self.pending = self.pending, []
        done = self.loop.run_in_executor(_executor(), _run_batch, calls)
        done.add_done_callback(lambda outcome: _settle(calls, outcome))


def _run_batch(calls: list[_Call]) -> list[tuple[object, BaseException | None]]:
    """On a worker: every call in order; an error stays with its call."""
    results: list[tuple[object, BaseException | None]] = []
    for function, args, _future in calls:
        try:
            results.append((function(*args), None))
        except Exception as error:
            results.append((None, error))
    return results


def _settle(calls: list[_Call], outcome: asyncio.Future[list[tuple[object, BaseException | None]]]) -> None:
    """On the loop: hand each caller its result (a cancelled caller has gone)."""
    failed = outcome.cancelled() or outcome.exception() is not None
    results = [(None, RuntimeError("I/O worker failed"))] * len(calls) if failed else outcome.result()
    for (_function, _args, future), (result, error) in zip(calls, results):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


_batcher: _Batcher | None = None


async def run(function: Callable[..., T], *args: object) -> T:
    """Run a blocking call on an I/O worker and await its result.

    Cancelling the caller does not stop the call: the worker still owns the
    buffer until the call ends, as with any thread pool.
    """
    global _batcher
    loop = asyncio.get_running_loop()
    if _batcher is None or _batcher.loop is not loop:
        _batcher = _Batcher(loop)  # one loop per process; tests make several in turn
    result: T = await _batcher.add(function, args)
    return result


def _pread_full(fd: int, buf: memoryview, offset: int) -> int:
    """Fill ``buf`` from ``offset``; past end of file stays zero-filled."""
    done = 0
    while done < len(buf):
        count = os.preadv(fd, [buf[done:]], offset + done)
        if count == 0:
            buf[done:] = bytes(len(buf) - done)
            break
        done += count
    return done


def _pwrite_full(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwritev(fd, [data[done:]], offset + done)


#: ``VMD_AIO=threads`` keeps reads and writes on the worker threads even
#: where io_uring works (for comparison, and the tests of both engines).
ENGINE_ENV = "VMD_AIO"
#: (loop, its ring or None, the loop's thread).
_ring: tuple[asyncio.AbstractEventLoop, Ring | None, int] | None = None


def ring() -> Ring | None:
    """The running loop's io_uring, or None where reads and writes go to workers."""
    global _ring
    known = _ring
    # A thread runs one loop at a time: a running loop of this thread is the
    # running loop (asyncio.get_running_loop() would cost a getpid() call).
    if known is not None and known[2] == threading.get_ident() and known[0].is_running():
        return known[1]
    # Otherwise a new ring: this is another loop (tests run several in
    # turn), or the loop now runs in another thread, whose system calls
    # are the ones that run the completions' task work (COOP_TASKRUN).
    loop = asyncio.get_running_loop()
    if known is not None and known[1] is not None and not known[1].busy:
        known[1].close()
    made = None
    if os.environ.get(ENGINE_ENV, "io_uring") != "threads":
        try:
            made = Ring.open(loop)
        except OSError as error:
            log.debug("io_uring unavailable (%s): file I/O on worker threads", error)
    _ring = (loop, made, threading.get_ident())
    return made


async def pread(fd: int, buf: memoryview, offset: int) -> int:
    """Read into ``buf`` (zeroes past EOF); returns bytes read from file."""
    uring = ring()
    if uring is None:
        return await run(_pread_full, fd, buf, offset)
    done = 0
    while done < len(buf):
        try:
            count = await uring.read(fd, buf[done:], offset + done)
        except RingFull:
            return done + await run(_pread_full, fd, buf[done:], offset + done)
        if count == 0:
            buf[done:] = bytes(len(buf) - done)
            break
        done += count
    return done


async def pwrite(fd: int, data: memoryview, offset: int) -> None:
    uring = ring()
    if uring is None:
        await run(_pwrite_full, fd, data, offset)
        return
    done = 0
    length = len(data)
    while done < length:
        try:
            done += await uring.write(fd, data[done:] if done else data, offset + done)
        except RingFull:
            await run(_pwrite_full, fd, data[done:], offset + done)
            return


async def fdatasync(fd: int) -> None:
    await run(os.fdatasync, fd)


async def ftruncate(fd: int, size: int) -> None:
    await run(os.ftruncate, fd, size)
