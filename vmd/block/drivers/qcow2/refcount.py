"""Reference counts: the refcount table, refcount blocks and cluster allocation.

Clusters are allocated by appending at the end of the image (freed clusters
are not reused; a crash can only leak). Ordering rules:

* a new refcount block is written (zeroed, with its own count if it covers
  itself) and flushed before the refcount table entry points at it, and the
  table entry is flushed before anything relies on the block;
* a grown refcount table is written and flushed, with every block it needs,
  before the header points at it; the old table is freed only after that;
* ordinary refcount changes go to the refcount-block cache; callers make the
  L2 cache depend on it so counts reach the disk before L2 entries do.
"""

from __future__ import annotations

import errno
import os
import struct

from vmd.block import limits
from vmd.block.drivers.qcow2 import format as fmt
from vmd.block.drivers.qcow2.cache import TableCache
from vmd.block.node import BlockNode
from vmd.errors import QMPError


class Refcounts:
    def __init__(self, file: BlockNode, header: fmt.Header, cache_capacity: int = 16) -> None:
        self.file = file
        self.header = header
        self.cs = header.cluster_size
        self.bits = header.cluster_bits
        self.order = header.refcount_order
        self.block_entries = self.cs * 8 // header.refcount_bits
        self.table: list[int] = []
        self.cache = TableCache(file, self.cs, cache_capacity, "refcount")
        self.next_free = 0

    async def load(self) -> None:
        h = self.header
        raw = bytearray(h.refcount_table_clusters * self.cs)
        await self.file.read(h.refcount_table_offset, memoryview(raw))
        self.table = [e & fmt.REFT_OFFSET_MASK for e in struct.unpack(f">{len(raw) // 8}Q", raw)]
        for index, offset in enumerate(self.table):
            if offset % self.cs or offset > limits.MAX_LENGTH:
                raise QMPError(f"qcow2: Refblock offset {offset:#x} invalid (reftable index: {index:#x})")
        self.next_free = -(-self.file.total_size // self.cs)

    # -- reading -----------------------------------------------------------

    async def get(self, cluster: int) -> int:
        t, i = divmod(cluster, self.block_entries)
        if t >= len(self.table) or not self.table[t]:
            return 0
        block = await self.cache.get(self.table[t])
        return fmt.get_refcount(block, i, self.order)

    # -- allocation ----------------------------------------------------------

    def _take(self, n: int) -> int:
        first = self.next_free
        self.next_free += n
        return first

    async def alloc(self, n: int = 1) -> int:
        """Allocate ``n`` contiguous clusters at the end; returns the byte offset.

        The new counts are in the cache (dirty); callers decide when they must
        be on disk."""
        first = self._take(n)
        for c in range(first, first + n):
            await self.update(c, 1)
        return first * self.cs

    async def update(self, cluster: int, delta: int) -> None:
        t, i = divmod(cluster, self.block_entries)
        if delta < 0 and (t >= len(self.table) or not self.table[t]):
            # No block counts it: its refcount is 0 (a corrupt image points there).
            raise QMPError(f"qcow2: Preventing invalid write on metadata (refcount of cluster {cluster} < 0)")
        block_off = await self._block_for(t)
        block = await self.cache.get(block_off)
        value = fmt.get_refcount(block, i, self.order) + delta
        if value < 0:
            raise QMPError(f"qcow2: Preventing invalid write on metadata (refcount of cluster {cluster} < 0)")
        fmt.set_refcount(block, i, self.order, value)
        self.cache.mark_dirty(block_off)

    async def free(self, offset: int, n: int = 1) -> None:
        for c in range(offset // self.cs, offset // self.cs + n):
            await self.update(c, -1)

    async def _block_for(self, t: int) -> int:
        if t >= len(self.table):
            await self._grow_table(t + 1)
        if not self.table[t]:
            await self._new_block(t)
        return self.table[t]

    async def _new_block(self, t: int) -> None:
        """Make refcount block ``t``: on disk and counted before the table points at it."""
        c = self._take(1)
        off = c * self.cs
        block = bytearray(self.cs)
        own_t, own_i = divmod(c, self.block_entries)
        if own_t == t:
            fmt.set_refcount(block, own_i, self.order, 1)
        else:
            # Counted by another block, which must be stable first.
            await self.update(c, 1)
            await self.cache.flush()
        await self.file.write(off, memoryview(bytes(block)))
        await self.file.flush()
        await self.file.write(self.header.refcount_table_offset + t * 8, memoryview(struct.pack(">Q", off)))
        await self.file.flush()
        self.table[t] = off
        self.cache.put_clean(off, block)

    async def _grow_table(self, min_entries: int) -> None:
        """Move the refcount table to a bigger place at the end of the file."""
        await self.cache.flush()
        old_off = self.header.refcount_table_offset
        old_clusters = self.header.refcount_table_clusters
        entries_per_cluster = self.cs // 8
        entries = max(min_entries, len(self.table) * 2)
        while True:
            clusters = -(-entries // entries_per_cluster)
            covered = clusters * entries_per_cluster * self.block_entries
            # The table, the new blocks and some slack must be coverable.
            if covered > self.next_free + clusters + 16 + entries:
                break
            entries *= 2
        if clusters * self.cs > fmt.MAX_REFTABLE_BYTES:
            # QEMU's limit too; a corrupt entry pointing far away lands here.
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        table_off = self._take(clusters) * self.cs
        table = self.table + [0] * (clusters * entries_per_cluster - len(self.table))
        new_blocks: dict[int, bytearray] = {}
        pending = list(range(table_off // self.cs, table_off // self.cs + clusters))
        while pending:
            c = pending.pop()
            t, i = divmod(c, self.block_entries)
            if not table[t] and t not in new_blocks:
                b = self._take(1)
                new_blocks[t] = bytearray(self.cs)
                table[t] = b * self.cs
                pending.append(b)
            if t in new_blocks:
                block = new_blocks[t]
                fmt.set_refcount(block, i, self.order, fmt.get_refcount(block, i, self.order) + 1)
            else:
                await self.update(c, 1)
        await self.cache.flush()
        for t, block in new_blocks.items():
            await self.file.write(table[t], memoryview(bytes(block)))
        await self.file.write(table_off, memoryview(struct.pack(f">{len(table)}Q", *table)))
        await self.file.flush()
        await self.file.write(fmt.OFF_REFTABLE, memoryview(struct.pack(">QI", table_off, clusters)))
        await self.file.flush()
        self.header.refcount_table_offset = table_off
        self.header.refcount_table_clusters = clusters
        self.table = table
        for t, block in new_blocks.items():
            self.cache.put_clean(table[t], block)
        await self.free(old_off, old_clusters)
