"""The ``file`` protocol driver: a regular POSIX file (QEMU's file-posix).

Every blocking system call runs on a ``vmd.block.aio`` worker thread, one
executor hop per request, and reads land in the caller's buffer directly.
Reading past the end of the file returns zeroes, as for a sparse file.

``cache.direct`` opens the file with ``O_DIRECT``. The request and memory
alignment are probed as QEMU does (logical block size, else trial reads of
1, 512, ... 4096 bytes); requests that do not fit them go through an
aligned bounce buffer, with read-modify-write for writes. Overlapping
writes are serialised while one of them is a read-modify-write, so two
partial writes to one block cannot undo each other.

Locking uses QEMU's open-file-description byte locks, so QEMU and vmd see
each other's claims: byte ``100 + i`` is held (read lock) by whoever has
permission bit ``i``, byte ``200 + i`` by whoever does not share it. The
bytes follow the node's cumulative permissions exactly, as QEMU's
raw_check_perm / raw_set_perm / raw_abort_perm_update: ``check_perm`` adds
the new bytes to the held ones and tests that nobody holds a byte saying a
wanted permission is not shared, nor a byte saying an unshared permission
is held; ``commit_perm`` drops what is no longer needed; ``abort_perm``
goes back. A file node nobody uses holds no lock at all.

Without O_DIRECT, a request of up to 256 KiB first tries preadv/pwritev
with RWF_NOWAIT on the loop thread: what the page cache can serve at once
needs no hop at all (the kernel answers EAGAIN instead of waiting for the
disk, and the request then goes to a worker as usual).

Discard and write-zeroes use fallocate(2) (through ctypes: Python has no
binding for its modes) to punch holes or zero ranges, falling back to
writing zeroes; ``block_status`` finds holes with SEEK_DATA / SEEK_HOLE.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import mmap
import os
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cffi import FFI

from vmd._generated.types import BlockdevDriver, BlockStatsSpecific, BlockStatsSpecificFile
from vmd.block import aio
from vmd.block.filename import NamesOf
from vmd.block.graph import BlockGraph, cache_flags, driver, node_name_of
from vmd.block.node import BlockNode, Extent, Status
from vmd.block.perm import ALL, NONE, Perm, perm_text
from vmd.errors import QMPError
from vmd.system import fdsets

#: Byte ``LOCK_PERM_BASE + i``: someone holds permission bit ``i``.
LOCK_PERM_BASE = 100
#: Byte ``LOCK_SHARED_BASE + i``: someone does not share permission bit ``i``.
LOCK_SHARED_BASE = 200

# -- fallocate(2) -------------------------------------------------------------

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int

_NOT_SUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS)

_ffi = FFI()
_FLOCK = struct.Struct("hhqqi4x")    # struct flock on 64-bit Linux
_BLKSSZGET = 0x1268                  # _IO(0x12, 104): logical sector size
_XFS_IOC_DIOINFO = 0x800C581E        # _IOR('X', 30, struct dioattr)
_MAX_ALIGN = max(4096, mmap.PAGESIZE)
_BOUNCE_KEEP = 1 << 20               # bounce buffers kept per worker thread
_NOWAIT_MAX = 256 << 10              # largest read copied on the event loop


class LockError(QMPError):
    """A lock byte is taken; ``hint`` is the line QEMU prints after the error."""

    def __init__(self, desc: str, hint: str) -> None:
        super().__init__(desc)
        self.hint = hint


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2); raises OSError."""
    if _fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@dataclass(slots=True)
class _Caps:
    """What the file system turned out to support (shared with workers)."""

    has_discard: bool = True
    has_write_zeroes: bool = True
    has_fallocate: bool = True


class FileNode(BlockNode):
    driver = "file"
    is_protocol = True
    # Formats append metadata and clusters past the current end.
    grows_on_write = True
    mutable_options = ("x-check-cache-dropped",)

    def __init__(self, node_name: str, filename: str, *,
                 read_only: bool = False, direct: bool = False,
                 no_flush: bool = False, locking: bool = True,
                 unmap: bool = False, auto_read_only: bool = False,
                 force_share: bool = False, nowait: bool = True) -> None:
        super().__init__(node_name, read_only=read_only)
        self.path = filename
        self.open_options = {"driver": self.driver, "filename": filename}
        self.fd = -1
        self.direct = direct
        self.no_flush = no_flush
        self.use_lock = locking
        #: ``discard=unmap``: discards and unmapping zero writes reach the file.
        self.unmap = unmap
        self.auto_read_only = auto_read_only
        self.force_share = force_share
        self.mem_alignment = 1
        #: The committed cumulative permissions; ``_prepared`` is being checked.
        self.perm = NONE
        self.shared_perm = ALL
        self._prepared: tuple[Perm, Perm] | None = None
        self._locked_perm = 0
        self._locked_shared = 0
        self._caps = _Caps()
        #: errno of a failed fdatasync: the page cache no longer matches the disk.
        self._flush_error = 0
        #: Whether reads (writes) may first try the page cache with RWF_NOWAIT.
        self._nowait = nowait
        self._nowait_writes = nowait
        #: Writes under way on an O_DIRECT file: (start, end, rmw, done).
        self._inflight: list[tuple[int, int, bool, asyncio.Event]] = []
        #: Discards passed to the host: done, failed, bytes done.
        self.discards_ok = self.discards_failed = self.discard_bytes_ok = 0

    # -- life cycle -----------------------------------------------------------

    async def open(self) -> None:
        fd, size, align, mem_align, read_only = await aio.run(
            _open_file, self.path, self.read_only, self.direct, self.auto_read_only)
        self.fd = fd
        self.read_only = read_only
        self.total_size = size
        self.request_alignment = align
        self.mem_alignment = mem_align

    async def close(self) -> None:
        if self.fd >= 0:
            # Closing the descriptor drops its OFD locks.
            os.close(self.fd)
            self.fd = -1
            self._locked_perm = self._locked_shared = 0

    def exact_filename(self, options: dict[str, Any], names_of: NamesOf) -> str:
        return self.path

    def allocated_file_size(self) -> int | None:
        """The blocks the file takes (``st_blocks``), as ``du`` counts."""
        try:
            return os.fstat(self.fd).st_blocks * 512
        except OSError:
            return None

    async def _co_make_writable(self) -> None:
        """Reopen read-write (a commit's base)."""
        await self._reopen_fd(False, self.direct)

    async def set_cache_mode(self, direct: bool, no_flush: bool) -> None:
        """A reopen with another ``cache.direct`` opens the file anew."""
        if direct != self.direct:
            await self._reopen_fd(self.read_only, direct)
        self.no_flush = no_flush

    async def _reopen_fd(self, read_only: bool, direct: bool) -> None:
        """A new descriptor takes over the lock bytes held, then the old
        one closes (dropping its own)."""
        fd, _size, align, mem_align, _ro = await aio.run(
            _open_file, self.path, read_only, direct, False)
        old, self.fd = self.fd, fd
        held = self._locked_perm, self._locked_shared
        self._locked_perm = self._locked_shared = 0
        try:
            self._apply_lock_bytes(held[0], held[1], unlock=False)
        except BaseException:
            self.fd = old
            self._locked_perm, self._locked_shared = held
            os.close(fd)
            raise
        if old >= 0:
            os.close(old)
        self.direct, self.request_alignment, self.mem_alignment = direct, align, mem_align

    def reopen_prepare(self, options: dict[str, Any]) -> Callable[[], None]:
        """raw_reopen_prepare: only the cache-dropped check may change (vmd
        has none to run); the file name, ``aio`` and ``locking`` stay."""
        options.pop("x-check-cache-dropped", None)
        return lambda: None

    # -- locking ------------------------------------------------------------------

    def check_perm(self, perm: Perm, shared: Perm) -> None:
        """Hold the lock bytes of both the old and the new permissions and
        test the new ones; on a conflict go back and raise ``LockError``."""
        self._prepared = (perm, shared)
        if not self.use_lock or self.fd < 0:
            return
        if not perm & ~self.perm and not self.shared_perm & ~shared:
            return  # nothing new to take: no test needed
        try:
            self._apply_lock_bytes(self.perm | perm, ~self.shared_perm | ~shared, unlock=False)
            self._check_lock_bytes(perm, shared)
        except QMPError as error:
            self.abort_perm()
            if isinstance(error, LockError):
                raise
            raise LockError(error.desc, self._lock_hint()) from None

    def commit_perm(self) -> None:
        """Keep exactly the bytes of the checked permissions."""
        if self._prepared is None:
            return
        perm, shared = self._prepared
        self._prepared = None
        if self.use_lock and self.fd >= 0:
            self._apply_lock_bytes(perm, ~shared, unlock=True)
        self.perm, self.shared_perm = perm, shared

    def abort_perm(self) -> None:
        self._prepared = None
        if self.use_lock and self.fd >= 0:
            self._apply_lock_bytes(self.perm, ~self.shared_perm, unlock=True)

    def _lock_hint(self) -> str:
        return f"Is another process using the image [{self.path}]?"

    def _apply_lock_bytes(self, perm: int, unshared: int, *, unlock: bool) -> None:
        for base, wanted, attr in ((LOCK_PERM_BASE, perm, "_locked_perm"),
                                   (LOCK_SHARED_BASE, unshared, "_locked_shared")):
            held = getattr(self, attr)
            for i in range(ALL.bit_length()):
                bit = 1 << i
                if wanted & bit and not held & bit:
                    try:
                        _ofd_lock(self.fd, fcntl.F_RDLCK, base + i)
                    except OSError as error:
                        raise _lock_error(f"Failed to lock byte {base + i}", error.errno) from None
                    held |= bit
                elif unlock and held & bit and not wanted & bit:
                    try:
                        _ofd_lock(self.fd, fcntl.F_UNLCK, base + i)
                    except OSError as error:
                        raise QMPError(f"Failed to unlock byte {base + i}: "
                                       f"{os.strerror(error.errno or errno.EIO)}") from None
                    held &= ~bit
                setattr(self, attr, held)

    def _check_lock_bytes(self, perm: int, shared: int) -> None:
        for i in range(ALL.bit_length()):
            bit = Perm(1 << i)
            if perm & bit and _ofd_taken(self.fd, LOCK_SHARED_BASE + i):
                raise LockError(f'Failed to get "{perm_text(bit)}" lock', self._lock_hint())
        for i in range(ALL.bit_length()):
            bit = Perm(1 << i)
            if not shared & bit and _ofd_taken(self.fd, LOCK_PERM_BASE + i):
                raise LockError(f'Failed to get shared "{perm_text(bit)}" lock', self._lock_hint())

    # -- I/O ------------------------------------------------------------------------

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        if self.direct:
            await aio.run(_read_direct, self.fd, buf, offset, self.request_alignment, self.mem_alignment)
            return
        if self._nowait and len(buf) <= _NOWAIT_MAX:
            # Data in the page cache is copied at once, on the loop: no hop.
            # RWF_NOWAIT fails with EAGAIN rather than wait for the disk.
            try:
                count = os.preadv(self.fd, [buf], offset, os.RWF_NOWAIT)
            except BlockingIOError:
                count = 0
            except OSError as error:
                if error.errno not in _NOT_SUPPORTED:
                    raise
                self._nowait = False
                count = 0
            if count == len(buf):
                return
            if count:
                buf = buf.cast("B")[count:]
                offset += count
        await aio.pread(self.fd, buf, offset)

    async def _co_write(self, offset: int, data: memoryview) -> None:
        end = offset + len(data)
        if not self.direct:
            if self._nowait_writes and len(data) <= _NOWAIT_MAX:
                # File systems that can (XFS, btrfs) copy into the page cache
                # at once; ext4 says EOPNOTSUPP, and then we stop asking.
                try:
                    count = os.pwritev(self.fd, [data], offset, os.RWF_NOWAIT)
                except BlockingIOError:
                    count = 0
                except OSError as error:
                    if error.errno not in _NOT_SUPPORTED:
                        raise
                    self._nowait_writes = False
                    count = 0
                if count:
                    data = data.cast("B")[count:]
                    offset += count
            if data:
                await aio.pwrite(self.fd, data, offset)
        else:
            align = self.request_alignment
            start = offset - offset % align
            stop = -(-end // align) * align
            rmw = start != offset or stop != end
            entry = await self._begin_write(start, stop, rmw)
            try:
                end = await aio.run(_write_direct, self.fd, data, offset, align, self.mem_alignment)
            finally:
                self._end_write(entry)
        if end > self.total_size:
            self.total_size = end

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        end = offset + length
        entry = None
        if self.direct:
            entry = await self._begin_write(offset, end, bool((offset | length) % self.request_alignment))
        try:
            await aio.run(_write_zeroes, self.fd, self._caps, offset, length,
                          may_unmap and self.unmap, end > self.total_size,
                          self.request_alignment, self.mem_alignment)
        finally:
            if entry is not None:
                self._end_write(entry)
        if end > self.total_size:
            self.total_size = end

    async def _co_discard(self, offset: int, length: int) -> None:
        if not self.unmap:
            return
        # Discard is advisory: a file system without hole punching ignores
        # it (counted as failed in the node's stats, as QEMU's -ENOTSUP).
        end = min(offset + length, self.total_size)
        done = False
        entry = await self._begin_write(offset, end, False) if self.direct and end > offset else None
        try:
            if self._caps.has_discard and end > offset:
                await aio.run(_discard, self.fd, self._caps, offset, end - offset)
            done = self._caps.has_discard
        finally:
            if entry is not None:
                self._end_write(entry)
            self._account_discard(done, length)

    def _account_discard(self, done: bool, length: int) -> None:
        """raw_account_discard(): the ``driver-specific`` stats of the node."""
        if done:
            self.discards_ok += 1
            self.discard_bytes_ok += length
        else:
            self.discards_failed += 1

    def specific_stats(self) -> BlockStatsSpecific | None:
        return BlockStatsSpecific(driver=BlockdevDriver.FILE, u=BlockStatsSpecificFile(
            discard_nb_ok=self.discards_ok, discard_nb_failed=self.discards_failed,
            discard_bytes_ok=self.discard_bytes_ok))

    async def _co_flush(self) -> None:
        if self.no_flush or self.read_only:
            return
        if self._flush_error:
            raise OSError(self._flush_error, os.strerror(self._flush_error))
        try:
            await aio.run(os.fdatasync, self.fd)
        except OSError as error:
            # After a failed fdatasync the kernel may have dropped the dirty
            # pages; later flushes would lie, so they fail too (as QEMU's).
            self._flush_error = error.errno or errno.EIO
            raise

    async def _co_truncate(self, size: int) -> None:
        # The caller's edge holds "resize" (block_resize takes it for the call).
        try:
            await aio.run(os.ftruncate, self.fd, size)
        except OSError as error:
            raise QMPError(f"Could not resize file: {os.strerror(error.errno or errno.EIO)}") from None
        self.total_size = size

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        count, data = await aio.run(_allocation, self.fd, offset, offset + length)
        count -= offset
        align = self.request_alignment
        if data:
            if count % align:
                count = min(length, -(-count // align) * align)
            return Extent(count, Status.DATA | Status.ALLOCATED, offset)
        if count % align:
            count -= count % align
            if count == 0:
                # A hole smaller than a block is not addressable: say data.
                return Extent(min(length, align), Status.DATA | Status.ALLOCATED, offset)
        return Extent(count, Status.ZERO | Status.ALLOCATED, offset)

    # -- O_DIRECT write ordering -----------------------------------------------------

    async def _begin_write(self, start: int, end: int,
                           rmw: bool) -> tuple[int, int, bool, asyncio.Event]:
        """Wait for overlapping writes where either side rewrites a block."""
        while True:
            for other_start, other_end, other_rmw, done in self._inflight:
                if other_start < end and start < other_end and (rmw or other_rmw):
                    await done.wait()
                    break
            else:
                break
        entry = (start, end, rmw, asyncio.Event())
        self._inflight.append(entry)
        return entry

    def _end_write(self, entry: tuple[int, int, bool, asyncio.Event]) -> None:
        self._inflight.remove(entry)
        entry[3].set()


# -- lock bytes -------------------------------------------------------------------


def _ofd_lock(fd: int, kind: int, byte: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))


def _ofd_taken(fd: int, byte: int) -> bool:
    """Whether another open file holds a lock that an exclusive one would hit."""
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
    except OSError as error:
        raise _lock_error(f"Failed to lock byte {byte}", error.errno) from None
    return bool(_FLOCK.unpack(answer)[0] != fcntl.F_UNLCK)


def _lock_error(text: str, code: int | None) -> QMPError:
    if code in (errno.EAGAIN, errno.EACCES):
        return QMPError(text)
    return QMPError(f"{text}: {os.strerror(code or errno.EIO)}")


# -- worker-thread functions --------------------------------------------------------


def _open_file(path: str, read_only: bool, direct: bool,
               auto_read_only: bool) -> tuple[int, int, int, int, bool]:
    """Open and check the file; returns (fd, size, alignment, memory alignment, read_only)."""
    flags = os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
    try:
        fd = fdsets.open_path(path, flags | (os.O_RDONLY if read_only else os.O_RDWR))
    except OSError as error:
        code = error.errno or errno.EIO
        if not read_only and auto_read_only and code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return _open_file(path, True, direct, False)
        if code == errno.EROFS:
            code = errno.EACCES
        if code == errno.EINVAL and direct:
            raise QMPError(f"Could not open '{path}': filesystem does not support O_DIRECT") from None
        raise QMPError(f"Could not open '{path}': {os.strerror(code)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise QMPError(f"'file' driver requires '{path}' to be a regular file")
        align, mem_align = _probe_alignment(fd) if direct else (1, 1)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        except OSError as error:
            raise QMPError(f"Could not refresh total sector count: {os.strerror(error.errno or errno.EIO)}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd, size, align, mem_align, read_only


def _probe_alignment(fd: int) -> tuple[int, int]:
    """QEMU's raw_probe_alignment: (request alignment, memory alignment)."""
    align = 0
    word = bytearray(4)
    try:
        fcntl.ioctl(fd, _BLKSSZGET, word)
        align = int.from_bytes(word, "little")
    except OSError:
        pass
    dio = bytearray(12)
    try:
        fcntl.ioctl(fd, _XFS_IOC_DIOINFO, dio)
        align = int.from_bytes(dio[4:8], "little")
    except OSError:
        pass
    candidates = (1, 512, 1024, 2048, 4096)
    with mmap.mmap(-1, 2 * _MAX_ALIGN) as area:
        view = memoryview(area)
        try:
            if not align:
                for size in candidates:
                    if _io_aligned(fd, view[:size]):
                        align = size if size != 1 else _MAX_ALIGN
                        break
            mem_align = 0
            for shift in candidates:
                if _io_aligned(fd, view[shift:shift + _MAX_ALIGN]):
                    mem_align = shift if shift != 1 else align
                    break
        finally:
            view.release()
    if not align or not mem_align:
        raise QMPError("Could not find working O_DIRECT alignment")
    return align, mem_align


def _io_aligned(fd: int, buf: memoryview) -> bool:
    try:
        os.preadv(fd, [buf], 0)
    except OSError as error:
        return error.errno != errno.EINVAL
    return True


def _address(buf: memoryview) -> int:
    return int(_ffi.cast("uintptr_t", _ffi.from_buffer(buf)))


_bounce = threading.local()


def _bounce_buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer of at least ``size`` bytes (kept per thread when small)."""
    if size > _BOUNCE_KEEP:
        return mmap.mmap(-1, size)
    area: mmap.mmap | None = getattr(_bounce, "area", None)
    if area is None:
        area = _bounce.area = mmap.mmap(-1, _BOUNCE_KEEP)
    return area


def _release_bounce(area: mmap.mmap) -> None:
    if area is not getattr(_bounce, "area", None):
        area.close()


def _pread_direct(fd: int, buf: memoryview, offset: int, align: int) -> None:
    """Fill an aligned ``buf``; a short read ends at the (unaligned) end of file."""
    done = 0
    total = len(buf)
    while done < total:
        count = os.preadv(fd, [buf[done:]], offset + done)
        if count == 0:
            buf[done:] = bytes(total - done)
            return
        done += count
        if done % align and done < total:
            buf[done:] = bytes(total - done)
            return


def _read_direct(fd: int, buf: memoryview, offset: int, align: int, mem_align: int) -> None:
    length = len(buf)
    if not length:
        return
    if not (offset | length) % align and not _address(buf) % mem_align:
        _pread_direct(fd, buf, offset, align)
        return
    start = offset - offset % align
    stop = -(-(offset + length) // align) * align
    area = _bounce_buffer(stop - start)
    try:
        with memoryview(area) as bounce:
            _pread_direct(fd, bounce[:stop - start], start, align)
            buf.cast("B")[:] = bounce[offset - start:offset - start + length]
    finally:
        _release_bounce(area)


def _write_direct(fd: int, data: memoryview, offset: int, align: int, mem_align: int) -> int:
    """Write through O_DIRECT; returns the end of what reached the file."""
    length = len(data)
    if not length:
        return offset
    if not (offset | length) % align and not _address(data) % mem_align:
        aio._pwrite_full(fd, data, offset)
        return offset + length
    start = offset - offset % align
    stop = -(-(offset + length) // align) * align
    area = _bounce_buffer(stop - start)
    try:
        with memoryview(area) as bounce:
            head = offset - start
            if head:
                _pread_direct(fd, bounce[:align], start, align)
            tail = stop - (offset + length)
            if tail and (stop - align >= start + align or not head):
                _pread_direct(fd, bounce[stop - start - align:stop - start], stop - align, align)
            bounce[head:head + length] = data.cast("B")
            aio._pwrite_full(fd, bounce[:stop - start], start)
    finally:
        _release_bounce(area)
    return stop


def _extend(fd: int, end: int) -> None:
    if os.fstat(fd).st_size < end:
        os.ftruncate(fd, end)


def _write_zeroes(fd: int, caps: _Caps, offset: int, length: int,
                  may_unmap: bool, extends: bool, align: int, mem_align: int) -> None:
    """QEMU's order: punch a hole if allowed, else zero the range, else write."""
    done = False
    if may_unmap and caps.has_discard:
        done = _try_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        if not done:
            caps.has_discard = False
    if not done and caps.has_write_zeroes:
        done = _try_fallocate(fd, FALLOC_FL_ZERO_RANGE, offset, length)
        if not done:
            caps.has_write_zeroes = False
    if not done and caps.has_discard and caps.has_fallocate and not extends:
        if _try_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length):
            # Not allowed to leave a hole: allocate the range again.
            done = _try_fallocate(fd, 0, offset, length)
            if not done:
                caps.has_fallocate = False
        else:
            caps.has_discard = False
    if not done:
        zeroes = memoryview(bytes(min(length, 1 << 20)))
        end = offset + length
        while offset < end:
            chunk = zeroes[:min(len(zeroes), end - offset)]
            if align > 1:
                _write_direct(fd, chunk, offset, align, mem_align)
            else:
                aio._pwrite_full(fd, chunk, offset)
            offset += len(chunk)
        return
    if extends:
        _extend(fd, offset + length)


def _discard(fd: int, caps: _Caps, offset: int, length: int) -> None:
    if not _try_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length):
        caps.has_discard = False


def _try_fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """False when the file system does not do ``mode``; other errors raise."""
    try:
        fallocate(fd, mode, offset, length)
    except OSError as error:
        if error.errno in _NOT_SUPPORTED or error.errno == errno.EINVAL:
            return False
        raise
    return True


def _allocation(fd: int, offset: int, end: int) -> tuple[int, bool]:
    """(end of the extent at ``offset``, whether it holds data) by SEEK_DATA/SEEK_HOLE."""
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as error:
        # ENXIO: in the hole at the end of the file (or past it).
        return end, error.errno != errno.ENXIO
    if data > offset:
        return min(data, end), False
    try:
        hole = os.lseek(fd, offset, os.SEEK_HOLE)
    except OSError:
        return end, True
    if hole <= offset:
        return end, True
    return min(hole, end), True


# -- opener -------------------------------------------------------------------------


def check_force_share(options: Any) -> None:
    if getattr(options, "force_share", False) and not getattr(options, "read_only", False):
        raise QMPError("force-share=on can only be used with read-only images")


@driver("file")
async def open_file(options: Any, graph: BlockGraph) -> BlockNode:
    check_force_share(options)
    branch = options.u
    direct, no_flush = cache_flags(options)
    aio_mode = str(getattr(branch, "aio", None) or "threads")
    if aio_mode == "native" and not direct:
        raise QMPError("aio=native was specified, but it requires cache.direct=on, which was not specified.")
    if aio_mode == "io_uring":
        raise QMPError("aio=io_uring was specified, but is not supported in this build.")
    locking = str(getattr(branch, "locking", None) or "auto")
    node = FileNode(
        node_name_of(options), branch.filename,
        read_only=bool(getattr(options, "read_only", False)),
        direct=direct, no_flush=no_flush, locking=locking != "off",
        unmap=str(getattr(options, "discard", None) or "ignore") == "unmap",
        auto_read_only=bool(getattr(options, "auto_read_only", False)),
        force_share=bool(getattr(options, "force_share", False)))
    await node.open()
    return node
