"""A bounded write-back cache of metadata tables (L2 tables, refcount blocks).

Each entry is one cluster, keyed by its offset in the file child. Entries are
modified in memory and marked dirty; they reach the disk on eviction or on
``flush``. A cache may *depend* on another (QEMU's
``qcow2_cache_set_dependency``): before any of its dirty entries is written,
the other cache is written back and the file is flushed. The qcow2 driver
makes the L2 cache depend on the refcount cache when new clusters were
allocated (a refcount must be stable on disk before an L2 entry points at the
cluster), and frees clusters only after the L2 cache is flushed.
"""

from __future__ import annotations

from collections import OrderedDict

from vmd.block.node import BlockNode


class TableCache:
    def __init__(self, file: BlockNode, table_size: int, capacity: int, name: str) -> None:
        self.file = file
        self.table_size = table_size
        self.capacity = max(2, capacity)
        self.name = name
        self._tables: OrderedDict[int, bytearray] = OrderedDict()
        self._dirty: set[int] = set()
        self.depends_on: TableCache | None = None

    def rebind(self, file: BlockNode) -> None:
        """Read through ``file`` from now on, starting empty, as QEMU's
        reopen makes new caches (the node was flushed before: nothing is
        dirty)."""
        assert not self._dirty, "a cache is rebound only after a flush"
        self.file = file
        self._tables.clear()

    def set_dependency(self, other: TableCache) -> None:
        self.depends_on = other

    async def _honour_dependency(self) -> None:
        if self.depends_on is not None:
            other, self.depends_on = self.depends_on, None
            await other.flush()

    async def get(self, offset: int) -> bytearray:
        """The table at ``offset`` (read from the file on a miss)."""
        table = self._tables.get(offset)
        if table is not None:
            self._tables.move_to_end(offset)
            return table
        await self._make_room()
        table = bytearray(self.table_size)
        await self._read_partial(offset, table)
        self._tables[offset] = table
        return table

    def peek(self, offset: int) -> bytearray | None:
        """The table at ``offset`` if it is cached (no I/O), else None."""
        table = self._tables.get(offset)
        if table is not None:
            self._tables.move_to_end(offset)
        return table

    async def _read_partial(self, offset: int, table: bytearray) -> None:
        avail = max(0, min(self.table_size, self.file.total_size - offset))
        if avail:
            await self.file.read(offset, memoryview(table)[:avail])

    def put_clean(self, offset: int, table: bytearray) -> None:
        """Insert a table already written to disk (a freshly made one)."""
        self._tables[offset] = table
        self._tables.move_to_end(offset)
        self._dirty.discard(offset)

    def mark_dirty(self, offset: int) -> None:
        assert offset in self._tables
        self._dirty.add(offset)

    def discard(self, offset: int) -> None:
        """Forget a table (its cluster is being freed); never written back."""
        self._tables.pop(offset, None)
        self._dirty.discard(offset)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    async def _make_room(self) -> None:
        while len(self._tables) >= self.capacity:
            victim = next((off for off in self._tables if off not in self._dirty), None)
            if victim is None:
                victim = next(iter(self._tables))
                await self._write_back(victim)
            self._tables.pop(victim, None)

    async def _write_back(self, offset: int) -> None:
        await self._honour_dependency()
        table = self._tables[offset]
        await self.file.write(offset, memoryview(bytes(table)))
        self._dirty.discard(offset)

    async def write_all(self) -> None:
        """Write every dirty entry (no flush of the file)."""
        if not self._dirty:
            return
        await self._honour_dependency()
        for offset in sorted(self._dirty):
            await self.file.write(offset, memoryview(bytes(self._tables[offset])))
        self._dirty.clear()

    async def flush(self) -> None:
        """Write every dirty entry, then flush the file (stable on disk)."""
        had = bool(self._dirty) or self.depends_on is not None
        await self.write_all()
        if had:
            await self.file.flush()
