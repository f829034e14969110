"""The I/O engine: blocking file system calls on worker threads.

The event loop must never wait on a disk, so every pread/pwrite/fdatasync/
fallocate runs on a thread of one shared pool and the coroutine awaits it.
The pool is small and fixed (a disk queue, not a thread per request); a
buffer handed to a worker is not touched by the loop until the call ends.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

WORKERS = 8
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vmd-io")
    return _pool


async def run(function: Callable[..., T], *args: object) -> T:
    """Run a blocking call on an I/O worker and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), function, *args)


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


async def pread(fd: int, buf: memoryview, offset: int) -> int:
    """Read into ``buf`` (zeroes past EOF); returns bytes read from file."""
    return await run(_pread_full, fd, buf, offset)


async def pwrite(fd: int, data: memoryview, offset: int) -> None:
    await run(_pwrite_full, fd, data, offset)


async def fdatasync(fd: int) -> None:
    await run(os.fdatasync, fd)


async def ftruncate(fd: int, size: int) -> None:
    await run(os.ftruncate, fd, size)
