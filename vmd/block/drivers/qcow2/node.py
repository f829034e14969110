"""The qcow2 format driver: ``Qcow2Node``.

Guest clusters map through a two-level table (L1 in memory, L2 tables in a
write-back cache) to host clusters of the ``file`` child; unallocated
clusters read from the ``backing`` node (or as zeroes).

Order of metadata updates (what keeps a SIGKILL at any moment harmless; a
crash may leak clusters but never leaves a reference to a cluster whose
refcount on disk is too low):

1. A new data cluster is allocated at the end of the file; its refcount is
   raised in the refcount-block cache. The guest data (with the untouched
   parts of the cluster copied from the old content: backing file, zeroes or
   a compressed/shared cluster) is written to the new cluster.
2. The L2 entry is updated in the L2 cache, and the L2 cache is made to
   depend on the refcount cache: before any L2 table is written back, the
   refcount blocks are written and the file is flushed.
3. A new L2 table is counted (refcount cache flushed), written, flushed, and
   only then does the L1 entry (written through) point at it.
4. Clusters are freed (discard, overwrite of compressed/shared clusters,
   zero writes with unmap) only after the L2 cache holding the entries that
   no longer reference them has been written and flushed.
5. Growing L1 or the refcount table: the new table is written and flushed
   before the header points at it; the old one is freed afterwards.
6. ``flush()`` writes back L2 tables (refcount blocks first, as above), then
   refcount blocks, then flushes the file child.

With ``lazy-refcounts`` the dirty bit is set (and flushed) before the first
write; refcount ordering is then relaxed and a dirty image opened
read-write has its refcounts rebuilt; a clean close clears the bit.

Concurrency (QEMU's, in short; see ``inflight``): ``_lock`` guards the
tables and caches and is held only to look up or change them, never across
guest data I/O. Reads and writes that free no host cluster run *shared* in
the request gate: a write to a cluster without one takes a new host
cluster under the lock, registers the allocation, writes the guest data
(and only the parts of the copy-on-write areas a backing file provides;
the rest of a fresh cluster at the end of the file already reads as
zeroes) without the lock, then sets the L2 entry under the lock (steps 1
and 2 above, in that order). A second write to a cluster being allocated
waits for the first. Requests that free clusters run *exclusive*, with the
lock held throughout. L2 updates of concurrent writes meet in the L2 cache
and reach the disk together, one table write per flush or eviction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from vmd._generated.types import BlkdebugEvent
from vmd.block.drivers.qcow2 import format as fmt
from vmd.block.drivers.qcow2.bitmaps import BitmapStore, referenced_clusters
from vmd.block.drivers.qcow2.cache import TableCache
from vmd.block.drivers.qcow2.inflight import Allocations, RequestGate
from vmd.block.drivers.qcow2.refcount import Refcounts
from vmd.block.edge import shape_changed
from vmd.block.node import BlockNode, Extent, Status
from vmd.block.perm import IMAGE, Role
from vmd.errors import QMPError

log = logging.getLogger(__name__)

_UNALLOC, _ZERO, _DATA, _COMPRESSED = range(4)
_CACHE_BYTES = 4 << 20
#: The members of Qcow2OverlapCheckFlags (``overlap-check.NAME``).
_OVERLAP_CHECKS = ("template", "main-header", "active-l1", "active-l2", "refcount-table", "refcount-block",
                   "snapshot-table", "inactive-l1", "inactive-l2", "bitmap-directory")


class Qcow2Node(BlockNode):
    driver = "qcow2"
    supports_backing = True
    mutable_options = ("lazy-refcounts", "pass-discard-request", "pass-discard-snapshot", "pass-discard-other",
                       "overlap-check", *(f"overlap-check.{check}" for check in _OVERLAP_CHECKS),
                       "cache-size", "l2-cache-size", "l2-cache-entry-size", "refcount-cache-size",
                       "cache-clean-interval")

    def __init__(self, node_name: str, file: BlockNode, *, read_only: bool = False,
                 lazy_refcounts: bool | None = None) -> None:
        super().__init__(node_name, read_only=read_only)
        self.attach_child("file", file, IMAGE)
        self._lazy_option = lazy_refcounts
        self.lazy = False
        self.header = fmt.Header()
        self.l1: list[int] = []
        self.cs = 0
        self.l2_entries = 0
        self._lock = asyncio.Lock()
        self._gate = RequestGate()
        self._allocations = Allocations()
        self._fresh_from = 0  # host offsets from here were never written
        self._marked_dirty = False
        self.backing_file: str | None = None
        self.backing_fmt: str | None = None
        self._zcache: tuple[int, bytes] | None = None
        self.bitmap_store = BitmapStore(self)

    # -- open / close ----------------------------------------------------------

    async def open(self) -> None:
        file = self.file
        size = file.total_size
        probe = bytearray(512)
        await file.read(0, memoryview(probe)[:min(512, size)])
        if size < 72 or probe[:4] != fmt.MAGIC:
            raise QMPError("Image is not in qcow2 format")
        bits = struct.unpack_from(">I", probe, 20)[0]
        if fmt.MIN_CLUSTER_BITS <= bits <= fmt.MAX_CLUSTER_BITS:
            buf = bytearray(min(1 << bits, size))
            await file.read(0, memoryview(buf))
        else:
            buf = probe
        h = self.header = fmt.parse_header(bytes(buf), size)
        if h.incompatible_features & fmt.INCOMPAT_CORRUPT and not self.read_only:
            raise QMPError("qcow2: Image is corrupt; cannot be opened read/write")
        self.cs = h.cluster_size
        self.l2_entries = self.cs // 8
        self.backing_file = h.backing_file
        self.backing_fmt = h.backing_format
        self.auto_backing_file = h.backing_file or ""
        if h.l1_size:
            raw = bytearray(h.l1_size * 8)
            await file.read(h.l1_table_offset, memoryview(raw))
            self.l1 = list(struct.unpack(f">{h.l1_size}Q", raw))
        self.refcounts = Refcounts(file, h, max(4, _CACHE_BYTES // 4 // self.cs))
        await self.refcounts.load()
        self._fresh_from = self.refcounts.next_free * self.cs
        self.l2_cache = TableCache(file, self.cs, max(4, _CACHE_BYTES // self.cs), "l2")
        lazy_header = bool(h.compatible_features & fmt.COMPAT_LAZY_REFCOUNTS)
        self.lazy = lazy_header if self._lazy_option is None else self._lazy_option
        if self.lazy and h.version < 3:
            raise QMPError("Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level")
        self.total_size = h.size
        if not self.read_only:
            if h.incompatible_features & fmt.INCOMPAT_DIRTY:
                await self._repair_refcounts()
            # Autoclear bits vmd does not know go before the first write.
            known = h.autoclear_features & fmt.AUTOCLEAR_BITMAPS
            if h.autoclear_features != known:
                h.autoclear_features = known
                await file.write(88, memoryview(struct.pack(">Q", known)))
                await file.flush()
        await self.bitmap_store.load()

    def set_backing(self, backing: BlockNode | None) -> None:
        if backing is not None:
            self.attach_child("backing", backing, Role.COW)

    async def change_backing_file(self, name: str | None, fmt: str | None) -> None:
        """Record another backing file in the header (QEMU's
        bdrv_change_backing_file: a commit or stream that drops images from
        the chain). The header cluster is written whole and flushed."""
        if self.read_only:
            raise QMPError("Block node is read-only")
        h = self.header
        old = h.backing_file, h.backing_format
        h.backing_file, h.backing_format = name, fmt
        try:
            cluster = h.pack().ljust(self.cs, b"\0")
        except QMPError:
            h.backing_file, h.backing_format = old
            raise
        async with self._lock:
            await self.file.write(0, memoryview(cluster))
            await self.file.flush()
        self.backing_file, self.backing_fmt = name, fmt
        self.auto_backing_file = name or ""
        shape_changed()

    async def close(self) -> None:
        if self.read_only or not hasattr(self, "l2_cache"):
            return  # read-only, or open() failed before the caches existed
        try:
            await self._co_make_read_only()
        except QMPError as error:
            # As QEMU, the image closes anyway; the bitmaps stay in use
            # on disk (inconsistent at the next open).
            log.warning("%s: could not store the dirty bitmaps: %s", self.node_name, error.desc)
            for bitmap in self.dirty_bitmaps:
                bitmap.readonly = True
            await self._co_make_read_only()

    async def _co_make_read_only(self) -> None:
        """Persistent bitmaps are stored (and become read-only), everything
        cached is written, and the dirty bit goes (lazy refcounts): a clean
        image from here on."""
        async with self._lock:
            await self.bitmap_store.reopen_read_only()
            await self._flush_locked()
        if self._marked_dirty:
            await self._set_incompat(self.header.incompatible_features & ~fmt.INCOMPAT_DIRTY)
            self._marked_dirty = False

    async def _co_make_writable(self) -> None:
        async with self._lock:
            await self.bitmap_store.reopen_read_write()

    def reopen_prepare(self, options: dict[str, Any]) -> Callable[[], None]:
        """qcow2_update_options_prepare's checks of the cache options; vmd
        sizes its caches itself and has no overlap checks, so the values
        are checked and then left unused."""
        values = {key: options.pop(key) for key in self.mutable_options if key in options}
        cache, l2 = values.get("cache-size"), values.get("l2-cache-size")
        refcount = values.get("refcount-cache-size")
        if cache is not None:
            if l2 is not None and refcount is not None and l2 + refcount > cache:
                raise QMPError("cache-size must be greater than the sum of l2-cache-size and refcount-cache-size")
            if l2 is not None and l2 > cache:
                raise QMPError("l2-cache-size may not exceed cache-size")
            if refcount is not None and refcount > cache:
                raise QMPError("refcount-cache-size may not exceed cache-size")
        entry = values.get("l2-cache-entry-size")
        if entry is not None and (entry < 512 or entry > self.cs or entry & (entry - 1)):
            raise QMPError(f"L2 cache entry size must be a power of two between 512 and the cluster size ({self.cs})")

        def commit() -> None:
            # New, empty caches (all was written back before), reading
            # through the file child, which the reopen may have replaced.
            self.refcounts.file = self.file
            self.refcounts.cache.rebind(self.file)
            self.l2_cache.rebind(self.file)
        return commit

    def can_store_new_bitmap(self, name: str, granularity: int) -> None:
        self.bitmap_store.can_store_new(name, granularity)

    async def remove_persistent_bitmap(self, name: str) -> None:
        async with self._lock:
            await self.bitmap_store.remove(name)

    async def _set_incompat(self, bits: int) -> None:
        self.header.incompatible_features = bits
        await self.file.write(fmt.OFF_INCOMPAT, memoryview(struct.pack(">Q", bits)))
        await self.file.flush()

    async def _mark_dirty(self) -> None:
        """With lazy refcounts: the dirty bit is on disk before any write."""
        if self.lazy and not self._marked_dirty:
            await self._set_incompat(self.header.incompatible_features | fmt.INCOMPAT_DIRTY)
            self._marked_dirty = True

    async def _repair_refcounts(self) -> None:
        """Raise stored refcounts to what the tables reference (leaks remain)."""
        h = self.header
        if h.nb_snapshots:
            raise QMPError("qcow2: cannot repair the refcounts of an image with snapshots")
        refs: Counter[int] = Counter()
        cs = self.cs
        refs[0] += 1
        for c in range(h.refcount_table_offset // cs, h.refcount_table_offset // cs + h.refcount_table_clusters):
            refs[c] += 1
        for off in self.refcounts.table:
            if off:
                refs[off // cs] += 1
        l1_bytes = h.l1_size * 8
        for c in range(h.l1_table_offset // cs, (h.l1_table_offset + l1_bytes + cs - 1) // cs):
            refs[c] += 1
        for l1e in self.l1:
            l2_off = l1e & fmt.L1E_OFFSET_MASK
            if not l2_off:
                continue
            refs[l2_off // cs] += 1
            table = bytearray(cs)
            await self.file.read(l2_off, memoryview(table))
            for entry in struct.unpack(f">{self.l2_entries}Q", table):
                if entry & fmt.OFLAG_COMPRESSED:
                    for c in fmt.compressed_clusters(entry, h.cluster_bits):
                        refs[c] += 1
                elif entry & fmt.L2E_OFFSET_MASK:
                    refs[(entry & fmt.L2E_OFFSET_MASK) // cs] += 1
        for offset, length in await referenced_clusters(self.file, h, h.size):
            for c in range(offset // cs, -(-(offset + length) // cs)):
                refs[c] += 1
        for c, n in sorted(refs.items()):
            current = await self.refcounts.get(c)
            if current < n:
                await self.refcounts.update(c, n - current)
        await self.refcounts.cache.flush()
        await self._set_incompat(h.incompatible_features & ~fmt.INCOMPAT_DIRTY)

    # -- description -------------------------------------------------------------

    def format_info(self) -> dict[str, Any]:
        h = self.header
        data: dict[str, Any] = {"compat": "1.1" if h.version >= 3 else "0.10"}
        if h.version >= 3:
            data.update({
                "compression-type": "zlib",
                "lazy-refcounts": bool(h.compatible_features & fmt.COMPAT_LAZY_REFCOUNTS),
                "refcount-bits": h.refcount_bits,
                "corrupt": bool(h.incompatible_features & fmt.INCOMPAT_CORRUPT),
                "extended-l2": False,
            })
            if self.bitmap_store.entries:
                data["bitmaps"] = self.bitmap_store.info()
        else:
            data.update({"compression-type": "zlib", "refcount-bits": h.refcount_bits})
        return {"cluster-size": self.cs, "format-specific": {"type": "qcow2", "data": data}}

    # -- mapping -------------------------------------------------------------------

    async def _entry(self, vc: int) -> int:
        l1i, l2i = divmod(vc, self.l2_entries)
        l1e = self.l1[l1i] if l1i < len(self.l1) else 0
        off = l1e & fmt.L1E_OFFSET_MASK
        if not off:
            return 0
        if off % self.cs:
            # QEMU marks such an image corrupt; vmd refuses the request.
            raise QMPError(f"qcow2: L2 table offset {off:#x} unaligned (L1 index: {l1i:#x})")
        table = await self.l2_cache.get(off)
        return int(struct.unpack_from(">Q", table, l2i * 8)[0])

    def _cached_entry(self, vc: int) -> int | None:
        """The L2 entry of ``vc`` when no table has to be read for it, else None.

        The fast paths of small requests use it while nobody holds ``_lock``:
        it does not wait, so the lookup is as atomic as one under the lock.
        """
        l1i, l2i = divmod(vc, self.l2_entries)
        l1e = self.l1[l1i] if l1i < len(self.l1) else 0
        off = l1e & fmt.L1E_OFFSET_MASK
        if not off:
            return 0
        table = self.l2_cache.peek(off) if off % self.cs == 0 else None
        return None if table is None else int(struct.unpack_from(">Q", table, l2i * 8)[0])

    def _kind(self, entry: int) -> int:
        if entry & fmt.OFLAG_COMPRESSED:
            return _COMPRESSED
        if self.header.version >= 3 and entry & fmt.OFLAG_ZERO:
            return _ZERO
        return _DATA if entry & fmt.L2E_OFFSET_MASK else _UNALLOC

    async def _read_backing(self, offset: int, buf: memoryview) -> None:
        backing = self.backing
        n = 0
        if backing is not None and offset < backing.total_size:
            n = min(len(buf), backing.total_size - offset)
            await backing.read(offset, buf[:n])
        if n < len(buf):
            buf[n:] = bytes(len(buf) - n)

    async def _decompress(self, entry: int) -> bytes:
        if self._zcache is not None and self._zcache[0] == entry:
            return self._zcache[1]
        host, count = fmt.compressed_range(entry, self.header.cluster_bits)
        raw = bytearray(count)
        await self.file.read(host, memoryview(raw)[:max(0, min(count, self.file.total_size - host))])
        try:
            out = zlib.decompressobj(-15).decompress(bytes(raw), self.cs)
        except zlib.error:
            raise QMPError("qcow2: could not decompress cluster") from None
        if len(out) != self.cs:
            raise QMPError("qcow2: could not decompress cluster")
        self._zcache = (entry, out)
        return out

    async def _read_host(self, host: int, buf: memoryview) -> None:
        """Read data clusters; past the end of the file they read as zeroes.

        The last cluster of the file may be short: a fresh cluster gets only
        its guest data written, and the rest of it lies past the end.
        """
        avail = max(0, min(len(buf), self.file.total_size - host))
        self.file.debug_event(BlkdebugEvent.READ_AIO)
        if avail:
            await self.file.read(host, buf[:avail])
        if avail < len(buf):
            buf[avail:] = bytes(len(buf) - avail)

    async def _read_in_cluster(self, vc: int, entry: int, in_off: int, buf: memoryview) -> None:
        kind = self._kind(entry)
        if kind == _DATA:
            await self._read_host((entry & fmt.L2E_OFFSET_MASK) + in_off, buf)
        elif kind == _ZERO:
            buf[:] = bytes(len(buf))
        elif kind == _COMPRESSED:
            data = await self._decompress(entry)
            buf[:] = data[in_off:in_off + len(buf)]
        else:
            await self._read_backing(vc * self.cs + in_off, buf)

    # -- read ----------------------------------------------------------------------

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        if not self._gate.try_acquire_shared():
            await self._gate.acquire_shared()
        try:
            pos = 0
            while pos < len(buf):
                pos += await self._read_run(offset + pos, buf[pos:])
        finally:
            self._gate.release_shared()

    async def _read_run(self, offset: int, buf: memoryview) -> int:
        """Read from ``offset`` up to the end of a run of alike clusters.

        Contiguous allocated clusters are merged into one read of the
        file; the mapping is looked up under the lock, the data read
        without it.
        """
        vc, in_off = divmod(offset, self.cs)
        n = min(self.cs - in_off, len(buf))
        if n == len(buf) and not self._lock.locked():  # within one cluster: no lock needed
            entry = self._cached_entry(vc)
            if entry is not None and self._kind(entry) == _DATA:
                await self._read_host((entry & fmt.L2E_OFFSET_MASK) + in_off, buf)
                return n
        async with self._lock:
            entry = await self._entry(vc)
            if self._kind(entry) == _DATA:
                host = (entry & fmt.L2E_OFFSET_MASK) + in_off
                while n < len(buf) and (vc + 1) % self.l2_entries:
                    nxt = await self._entry(vc + 1)
                    if self._kind(nxt) != _DATA or (nxt & fmt.L2E_OFFSET_MASK) != host + n:
                        break
                    vc += 1
                    n += min(self.cs, len(buf) - n)
        if self._kind(entry) == _DATA:
            await self._read_host(host, buf[:n])
        else:
            await self._read_in_cluster(vc, entry, in_off, buf[:n])
        return n

    # -- write ---------------------------------------------------------------------

    async def _co_write(self, offset: int, data: memoryview) -> None:
        pos, length = 0, len(data)
        if not self._gate.try_acquire_shared():
            await self._gate.acquire_shared()
        try:
            if self.lazy and not self._marked_dirty:
                async with self._lock:
                    await self._mark_dirty()
            while pos < length:
                host = self._in_place(offset + pos, length - pos)
                if host is not None:  # the common case, without a coroutine more
                    file = self.file
                    file.debug_event(BlkdebugEvent.WRITE_AIO)
                    await file.write(host, data[pos:] if pos else data)
                    pos = length
                    break
                done = await self._write_shared(offset + pos, data[pos:])
                if not done:
                    break
                pos += done
        finally:
            self._gate.release_shared()
        if pos < length:  # the cluster's old host cluster must be freed
            async with self._alone():
                await self._write_locked(offset + pos, data[pos:])

    @contextlib.asynccontextmanager
    async def _alone(self) -> AsyncIterator[None]:
        """Exclusive in the gate, holding the lock: for requests that free clusters."""
        await self._gate.acquire_exclusive()
        try:
            async with self._lock:
                yield
        finally:
            self._gate.release_exclusive()

    async def _write_shared(self, offset: int, data: memoryview) -> int:
        """Write a run of clusters from ``offset`` alongside other requests.

        Returns the bytes written, or 0 if the first cluster needs the
        exclusive path (its old host cluster would be freed).
        """
        vc, in_off = divmod(offset, self.cs)
        while True:
            while (pending := self._allocations.pending(vc)) is not None:
                await self._allocations.wait(pending)
            async with self._lock:
                if self._allocations.pending(vc) is not None:
                    continue  # another write took the cluster while we waited for the lock
                await self._l2_for_write(vc)
                entry = await self._entry(vc)
                if self._kind(entry) == _DATA and entry & fmt.OFLAG_COPIED:
                    host, n = await self._in_place_run(vc, in_off, entry, len(data))
                elif self._allocates_without_free(entry):
                    count, n, last = await self._fresh_run(vc, in_off, entry, len(data))
                    host = await self.refcounts.alloc(count)
                    done = self._allocations.start(vc, count)
                else:
                    return 0
                break
        self.file.debug_event(BlkdebugEvent.WRITE_AIO)
        if self._kind(entry) == _DATA:
            await self.file.write(host, data[:n])
            return n
        try:
            await self._fill_new(vc, (entry, last), host, in_off, data[:n], count)
            async with self._lock:
                table_off, l2i = await self._l2_for_write(vc)
                self._depend()
                for i in range(count):
                    await self._set_entry(table_off, l2i + i, (host + i * self.cs) | fmt.OFLAG_COPIED)
        finally:
            self._allocations.finish(vc, count, done)
        return n

    def _in_place(self, offset: int, length: int) -> int | None:
        """The host offset where a write within one cluster of ours, in a
        table of ours, goes in place without the lock (the lookup does not
        wait); None if the write needs more than that."""
        vc, in_off = divmod(offset, self.cs)
        if length > self.cs - in_off or self._lock.locked() or self._allocations.pending(vc) is not None:
            return None
        entry = self._cached_entry(vc)
        if (entry and entry & fmt.OFLAG_COPIED and self._kind(entry) == _DATA
                and self.l1[vc // self.l2_entries] & fmt.OFLAG_COPIED):
            return (entry & fmt.L2E_OFFSET_MASK) + in_off
        return None

    def _allocates_without_free(self, entry: int) -> bool:
        """A cluster that reads from below (or as zeroes) and owns no host cluster."""
        kind = self._kind(entry)
        return kind == _UNALLOC or (kind == _ZERO and not entry & fmt.L2E_OFFSET_MASK)

    async def _in_place_run(self, vc: int, in_off: int, first: int, length: int) -> tuple[int, int]:
        """(host offset, bytes) of the run of our contiguous clusters from ``vc``."""
        host = first & fmt.L2E_OFFSET_MASK
        n = min(self.cs - in_off, length)
        k = 1
        while n < length and (vc + k) % self.l2_entries:
            entry = await self._entry(vc + k)
            if not (self._kind(entry) == _DATA and entry & fmt.OFLAG_COPIED
                    and entry & fmt.L2E_OFFSET_MASK == host + k * self.cs):
                break
            n += min(self.cs, length - n)
            k += 1
        return host + in_off, n

    async def _fresh_run(self, vc: int, in_off: int, first: int,
                         length: int) -> tuple[int, int, int]:
        """(clusters, bytes, last entry) of the run one allocation serves.

        The run continues over clusters that are unallocated, not being
        allocated, and in the same L2 table; its last cluster may be
        written in part.
        """
        n = min(self.cs - in_off, length)
        count, last = 1, first
        while n < length and (vc + count) % self.l2_entries:
            if self._allocations.pending(vc + count) is not None:
                break
            entry = await self._entry(vc + count)
            if not self._allocates_without_free(entry):
                break
            n += min(self.cs, length - n)
            count, last = count + 1, entry
        return count, n, last

    async def _fill_new(self, vc: int, entries: tuple[int, int], host: int, in_off: int,
                        data: memoryview, count: int) -> None:
        """Write the guest data into new clusters, and the copy-on-write areas.

        The areas before and after the data read as the old cluster did:
        zeroes (a zero cluster, or nothing below) are already there in
        fresh clusters at the end of the file; a backing file's data is
        copied, but only as far as the backing file reaches.
        """
        await self.file.write(host + in_off, data)
        first, last = entries
        await self._fill_cow(vc * self.cs, host, 0, in_off, self._kind(first))
        await self._fill_cow(vc * self.cs, host, in_off + len(data), count * self.cs, self._kind(last))

    async def _fill_cow(self, guest: int, host: int, start: int, stop: int, kind: int) -> None:
        """Make ``[start, stop)`` of the new clusters read as before."""
        if start >= stop:
            return
        backing = self.backing
        below = 0
        if kind == _UNALLOC and backing is not None:
            below = max(0, min(stop, backing.total_size - guest) - start)
        if below:
            buf = bytearray(below)
            await backing.read(guest + start, memoryview(buf))  # type: ignore[union-attr]
            await self.file.write(host + start, memoryview(buf))
        zero_start, zero_stop = host + start + below, min(host + stop, self._fresh_from)
        if zero_start < zero_stop:  # a reused cluster: its old content must go
            await self.file.write_zeroes(zero_start, zero_stop - zero_start)

    async def _write_locked(self, offset: int, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            vc, in_off = divmod(offset + pos, self.cs)
            n = min(self.cs - in_off, len(data) - pos)
            if in_off == 0 and n == self.cs:
                pos += await self._write_full_clusters(vc, data[pos:])
                continue
            await self._write_cluster(vc, in_off, data[pos:pos + n])
            pos += n

    async def _write_full_clusters(self, vc: int, data: memoryview) -> int:
        """Write whole clusters from ``vc`` as one host write; returns bytes done.

        A run ends at the end of ``data``, of the L2 table, or where the
        clusters stop being alike: either all already ours and contiguous on
        the host (overwritten in place), or all needing a new cluster (given
        one contiguous allocation, as QEMU does). Anything else goes
        through ``_write_cluster`` one cluster at a time. The data goes
        straight from the caller's buffer, without a copy.
        """
        table_off, l2i = await self._l2_for_write(vc)
        limit = min(len(data) // self.cs, self.l2_entries - l2i)
        first = await self._entry(vc)
        in_place = self._kind(first) == _DATA and bool(first & fmt.OFLAG_COPIED)
        if not in_place and not self._needs_new_cluster(first):
            await self._write_cluster(vc, 0, data[:self.cs])
            return self.cs
        entries = [first]
        while len(entries) < limit:
            entry = await self._entry(vc + len(entries))
            if in_place:
                if not (self._kind(entry) == _DATA and entry & fmt.OFLAG_COPIED
                        and entry & fmt.L2E_OFFSET_MASK == (first & fmt.L2E_OFFSET_MASK) + len(entries) * self.cs):
                    break
            elif not self._needs_new_cluster(entry):
                break
            entries.append(entry)
        length = len(entries) * self.cs
        if in_place:
            self.file.debug_event(BlkdebugEvent.WRITE_AIO)
            await self.file.write(first & fmt.L2E_OFFSET_MASK, data[:length])
            return length
        host = await self.refcounts.alloc(len(entries))
        self.file.debug_event(BlkdebugEvent.WRITE_AIO)
        await self.file.write(host, data[:length])
        self._depend()
        for i in range(len(entries)):
            await self._set_entry(table_off, l2i + i, (host + i * self.cs) | fmt.OFLAG_COPIED)
        await self._free_entries(entries)
        return length

    def _needs_new_cluster(self, entry: int) -> bool:
        """Whether a full overwrite of this cluster takes a fresh cluster."""
        kind = self._kind(entry)
        if kind == _DATA:
            return not entry & fmt.OFLAG_COPIED
        if kind == _ZERO:
            return not (entry & fmt.L2E_OFFSET_MASK and entry & fmt.OFLAG_COPIED)
        return True

    def _depend(self) -> None:
        if not self.lazy:
            self.l2_cache.set_dependency(self.refcounts.cache)

    async def _l2_for_write(self, vc: int) -> tuple[int, int]:
        """(L2 table offset, index) for ``vc``, allocating or copying the table."""
        l1i, l2i = divmod(vc, self.l2_entries)
        l1e = self.l1[l1i]
        old = l1e & fmt.L1E_OFFSET_MASK
        if old and l1e & fmt.OFLAG_COPIED:
            return old, l2i
        content = bytearray(self.cs) if not old else bytearray(await self.l2_cache.get(old))
        new = await self.refcounts.alloc(1)
        if not self.lazy:
            await self.refcounts.cache.flush()
        await self.file.write(new, memoryview(bytes(content)))
        await self.file.flush()
        await self.file.write(self.header.l1_table_offset + l1i * 8,
                              memoryview(struct.pack(">Q", new | fmt.OFLAG_COPIED)))
        self.l1[l1i] = new | fmt.OFLAG_COPIED
        self.l2_cache.put_clean(new, content)
        if old:
            await self.file.flush()
            await self.refcounts.free(old)
        return new, l2i

    async def _set_entry(self, table_off: int, l2i: int, entry: int) -> None:
        table = await self.l2_cache.get(table_off)
        struct.pack_into(">Q", table, l2i * 8, entry)
        self.l2_cache.mark_dirty(table_off)

    async def _free_entries(self, entries: list[int]) -> None:
        """Drop the clusters old L2 entries held, once the L2 change is on disk."""
        entries = [e for e in entries if self._kind(e) in (_DATA, _COMPRESSED)
                   or (e & fmt.L2E_OFFSET_MASK)]
        if not entries:
            return
        await self.l2_cache.flush()
        for e in entries:
            if e & fmt.OFLAG_COMPRESSED:
                for c in fmt.compressed_clusters(e, self.header.cluster_bits):
                    await self.refcounts.update(c, -1)
            else:
                await self.refcounts.free(e & fmt.L2E_OFFSET_MASK)

    async def _write_cluster(self, vc: int, in_off: int, chunk: memoryview) -> None:
        table_off, l2i = await self._l2_for_write(vc)
        entry = await self._entry(vc)
        kind = self._kind(entry)
        if kind == _DATA and entry & fmt.OFLAG_COPIED:
            self.file.debug_event(BlkdebugEvent.WRITE_AIO)
            await self.file.write((entry & fmt.L2E_OFFSET_MASK) + in_off, chunk)
            return
        full = bytearray(self.cs)
        if len(chunk) < self.cs:
            await self._read_in_cluster(vc, entry, 0, memoryview(full))
        full[in_off:in_off + len(chunk)] = chunk
        if kind == _ZERO and entry & fmt.L2E_OFFSET_MASK and entry & fmt.OFLAG_COPIED:
            # Preallocated zero cluster: fill it in place, then drop the flag.
            host = entry & fmt.L2E_OFFSET_MASK
            self.file.debug_event(BlkdebugEvent.WRITE_AIO)
            await self.file.write(host, memoryview(full))  # full is ours alone: no copy
            await self._set_entry(table_off, l2i, host | fmt.OFLAG_COPIED)
            return
        host = await self.refcounts.alloc(1)
        self.file.debug_event(BlkdebugEvent.WRITE_AIO)
        await self.file.write(host, memoryview(full))  # full is ours alone: no copy
        self._depend()
        await self._set_entry(table_off, l2i, host | fmt.OFLAG_COPIED)
        await self._free_entries([entry])

    # -- zeroes, discard -------------------------------------------------------------

    def _reads_zero_unallocated(self, vc: int) -> bool:
        backing = self.backing
        return backing is None or vc * self.cs >= backing.total_size

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        async with self._alone():
            await self._mark_dirty()
            end = offset + length
            freed: list[int] = []
            while offset < end:
                vc, in_off = divmod(offset, self.cs)
                n = min(self.cs - in_off, end - offset)
                entry = await self._entry(vc)
                kind = self._kind(entry)
                if kind == _ZERO or (kind == _UNALLOC and self._reads_zero_unallocated(vc)):
                    pass
                elif n < self.cs or self.header.version < 3:
                    await self._write_cluster(vc, in_off, memoryview(bytes(n)))
                else:
                    table_off, l2i = await self._l2_for_write(vc)
                    entry = await self._entry(vc)
                    if self._kind(entry) == _DATA and entry & fmt.OFLAG_COPIED and not may_unmap:
                        await self._set_entry(table_off, l2i, entry | fmt.OFLAG_ZERO)
                    else:
                        await self._set_entry(table_off, l2i, fmt.OFLAG_ZERO)
                        freed.append(entry)
                offset += n
            await self._free_entries(freed)

    async def _co_discard(self, offset: int, length: int) -> None:
        async with self._alone():
            await self._mark_dirty()
            end = offset + length
            first, last = -(-offset // self.cs), end // self.cs
            if end == self.total_size and end % self.cs:
                last += 1
            freed: list[int] = []
            for vc in range(first, last):
                l1i = vc // self.l2_entries
                if l1i >= len(self.l1) or not self.l1[l1i] & fmt.L1E_OFFSET_MASK:
                    continue
                entry = await self._entry(vc)
                new = fmt.OFLAG_ZERO if self.header.version >= 3 and self.backing is not None else 0
                if entry != new:
                    table_off, l2i = await self._l2_for_write(vc)
                    entry = await self._entry(vc)
                    await self._set_entry(table_off, l2i, new)
                    freed.append(entry)
            await self._free_entries(freed)

    # -- flush, resize -------------------------------------------------------------

    async def _flush_locked(self) -> None:
        await self.l2_cache.flush()
        await self.refcounts.cache.flush()
        await self.file.flush()

    async def _co_flush(self) -> None:
        if self.read_only:
            return
        async with self._lock:
            await self._flush_locked()

    async def _co_truncate(self, size: int) -> None:
        async with self._alone():
            if size % 512:
                raise QMPError("The new size must be a multiple of 512")
            if size < self.header.size:
                raise QMPError("qcow2 doesn't support shrinking images yet")
            self.bitmap_store.check_resize()
            needed = fmt.l1_entries_for(size, self.cs)
            if needed > fmt.MAX_L1_ENTRIES:
                raise QMPError("Failed to grow the L1 table: File too large")
            await self._mark_dirty()
            if needed > len(self.l1):
                await self._grow_l1(needed)
            await self.file.write(fmt.OFF_SIZE, memoryview(struct.pack(">Q", size)))
            await self.file.flush()
            self.header.size = size
            self.total_size = size

    async def _grow_l1(self, entries: int) -> None:
        h = self.header
        old_off, old_bytes = h.l1_table_offset, len(self.l1) * 8
        clusters = -(-entries * 8 // self.cs)
        new_off = await self.refcounts.alloc(clusters)
        await self.refcounts.cache.flush()
        table = self.l1 + [0] * (entries - len(self.l1))
        await self.file.write(new_off, memoryview(struct.pack(f">{entries}Q", *table)))
        await self.file.flush()
        await self.file.write(fmt.OFF_L1, memoryview(struct.pack(">IQ", entries, new_off)))
        await self.file.flush()
        self.l1 = table
        h.l1_size, h.l1_table_offset = entries, new_off
        if old_bytes:
            await self.refcounts.free(old_off, -(-old_bytes // self.cs))

    # -- block status ------------------------------------------------------------

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        in_off = offset % self.cs
        if length <= self.cs - in_off and not self._lock.locked():  # within one cluster
            entry = self._cached_entry(offset // self.cs)
            if entry is not None and self._kind(entry) == _DATA:
                host = (entry & fmt.L2E_OFFSET_MASK) + in_off
                return Extent(length, Status.DATA | Status.ALLOCATED, host)
        async with self._lock:
            vc, in_off = divmod(offset, self.cs)
            entry = await self._entry(vc)
            kind = self._kind(entry)
            host = entry & fmt.L2E_OFFSET_MASK
            n = min(self.cs - in_off, length)
            k = 1
            while n < length and k < self.l2_entries:
                nxt = await self._entry(vc + k)
                if self._kind(nxt) != kind:
                    break
                nxt_host = nxt & fmt.L2E_OFFSET_MASK
                if kind in (_DATA, _ZERO) and bool(host) != bool(nxt_host):
                    break  # a preallocated zero cluster does not merge with a plain one
                if kind in (_DATA, _ZERO) and host and nxt_host != host + k * self.cs:
                    break
                n += min(self.cs, length - n)
                k += 1
        if kind == _DATA:
            return Extent(n, Status.DATA | Status.ALLOCATED, host + in_off)
        if kind == _COMPRESSED:
            return Extent(n, Status.DATA | Status.ALLOCATED)
        if kind == _ZERO:
            # A preallocated zero cluster still says where it lies (QEMU: OFFSET_VALID).
            return Extent(n, Status.ZERO | Status.ALLOCATED, host + in_off if host else None)
        return Extent(n, Status.ZERO if self.backing is None else 0)


async def open_image(path: str, *, read_only: bool = False, backing: bool = True,
                     lazy_refcounts: bool | None = None, node_name: str = "",
                     adopt: Callable[[BlockNode], None] | None = None) -> Qcow2Node:
    """Open a qcow2 file and, with ``backing``, its chain (read-only).

    ``adopt`` is called on every node opened for the chain (a graph names
    them). On failure everything opened here is closed again.
    """
    from vmd.block.drivers.file import FileNode
    file = FileNode(f"{node_name or path}-file", path, read_only=read_only)
    await file.open()
    try:
        node = Qcow2Node(node_name or path, file, read_only=read_only, lazy_refcounts=lazy_refcounts)
    except BaseException:
        await file.close()
        raise
    try:
        await node.open()
        if backing:
            await open_chain(node, path, adopt)
    except BaseException:
        await close_image(node)
        raise
    return node


async def open_chain(top: Qcow2Node, top_path: str,
                     adopt: Callable[[BlockNode], None] | None = None) -> None:
    """Open the backing files named in the headers below ``top``, one
    image at a time (a loop: a chain may be thousands of images deep).

    Each header's name then stands for the node it opened, whatever its
    spelling (auto_backing_file becomes that node's file name, set bottom
    up once the whole chain is there, as QEMU's recursive open does)."""
    opened: list[Qcow2Node] = []
    node, path = top, top_path
    while node.backing_file:
        below = await open_backing(node, path)
        try:
            node.set_backing(below)
        except BaseException:
            await close_image(below)
            raise
        opened.append(node)
        if adopt is not None:
            adopt(below)
        _inline_backing(node, below)
        if not isinstance(below, Qcow2Node):
            break
        node, path = below, backing_path(node, path)
    shape_changed()
    # Bottom up, each name computed once: a node's is cached only after
    # its own auto_backing_file is set.
    for node in reversed(opened):
        node.auto_backing_file = node.backing.filename()  # type: ignore[union-attr]


def _inline_backing(overlay: BlockNode, image: BlockNode) -> None:
    """An image opened from a header is its overlay's inline child, with the
    options QEMU records for it: the driver, and a file's name."""
    image.opened_inline = True
    image.inherits_from = overlay
    for edge in image.children.values():
        edge.child.inherits_from = image
    for node in (image, *(edge.child for edge in image.children.values())):
        options: dict[str, Any] = {"driver": node.driver}
        if node.driver == "file":
            options["filename"] = node.filename()
        node.options, node.explicit_options = options, dict(options)


def backing_path(node: BlockNode, overlay_path: str) -> str:
    """The backing file the header of ``node`` names, relative names taken
    from the directory of the image (bdrv_get_full_backing_filename)."""
    name = node.backing_file or ""
    if os.path.isabs(name) or ":" in name.split("/")[0]:
        return name
    return os.path.join(os.path.dirname(overlay_path), name)


async def open_backing(node: Qcow2Node, overlay_path: str) -> BlockNode:
    """The image named in ``node``'s header, read-only, with its format,
    without its own backing file. A ``blkdebug:CONFIG:IMAGE`` name puts a
    blkdebug node between the format (a raw node too) and the file."""
    from vmd.block.drivers.blkdebug import split_filename
    path = backing_path(node, overlay_path)
    image_path = split_filename(path)[1] if path.startswith("blkdebug:") else path
    try:
        fmt_name = node.backing_fmt
        if fmt_name is None:
            with open(image_path, "rb") as probe:
                fmt_name = "qcow2" if probe.read(4) == fmt.MAGIC else "raw"
        if fmt_name not in ("qcow2", "raw"):
            raise QMPError(f"Unknown driver '{fmt_name}'")
        if fmt_name == "qcow2" and path is image_path:
            return await open_image(path, read_only=True, backing=False)
        protocol = await _open_protocol(path, image_path)
        image: BlockNode
        if fmt_name == "raw":  # a raw node tells blkdebug of its reads (read_aio)
            from vmd.block.drivers.raw import RawNode
            image = RawNode(path, protocol, read_only=True)
        else:
            image = Qcow2Node(path, protocol, read_only=True)
        try:
            await image.open()
        except BaseException:
            await close_image(image)
            raise
        return image
    except QMPError as error:
        raise QMPError(f"Could not open backing file: {error.desc}") from None
    except OSError as error:
        raise QMPError(f"Could not open backing file: Could not open '{path}': "
                       f"{os.strerror(error.errno or 5)}") from None


async def _open_protocol(path: str, image_path: str) -> BlockNode:
    """The file at ``image_path``, read-only, under a blkdebug node when
    ``path`` is a ``blkdebug:`` name."""
    from vmd.block.drivers.blkdebug import open_legacy
    from vmd.block.drivers.file import FileNode
    file = FileNode(image_path, image_path, read_only=True)
    await file.open()
    if path is image_path:
        return file
    try:
        return await open_legacy(path, file, read_only=True)
    except BaseException:
        await file.close()
        raise


async def close_image(top: BlockNode) -> None:
    """Close a tree made by ``open_image`` (node, file, backing chain), each
    node before its children, without recursion."""
    stack = [top]
    while stack:
        node = stack.pop()
        children = [edge.child for edge in node.children.values()]
        try:
            await node.close()
        finally:
            node.detach_children()
        stack.extend(child for child in children if not child.parents)
