"""Persistent dirty bitmaps in a qcow2 image (QEMU's block/qcow2-bitmap.c).

Layout (docs/interop/qcow2.txt): the header extension ``0x23852875``
holds the number of bitmaps and the bitmap directory's size and offset;
it counts only while autoclear bit 0 is set (a program that does not know
bitmaps clears the bit when it writes, and the bitmaps are then ignored).
Each directory entry names a bitmap, its granularity, its flags (``in_use``,
``auto`` = recording) and its bitmap table, whose entries point at clusters
of bitmap data (0: all clean; bit 0 without an offset: all dirty). The data
is the bitmap's bits, least significant first.

What vmd does, in QEMU's order:

1. Open read-write: the bitmaps are loaded, then marked ``in_use`` on disk
   before any guest write can happen (autoclear bit cleared and flushed,
   the directory rewritten in place and flushed, the bit set again and
   flushed). A bitmap already ``in_use`` when opened was not stored
   cleanly: it is loaded as inconsistent (removable, nothing else).
   Opened read-only, bitmaps are read-only and nothing is written.
2. Close (and reopen read-only): every persistent bitmap is written to new
   clusters with new tables and a new directory without ``in_use``; the
   refcounts and the file are flushed, and only then does the header
   point at the new directory; the old clusters are freed afterwards. A
   crash at any point leaves either the old directory (bitmaps marked
   ``in_use``, so inconsistent, as QEMU) or the new one; at worst
   clusters leak.
3. ``block-dirty-bitmap-remove`` of a stored bitmap writes a directory
   without it at once, the same way.

New persistent bitmaps live in memory until the image is closed, as in
QEMU. The node's ``_lock`` is held around every change here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmd.block.dirty_bitmap import Check, DirtyBitmap, create_bitmap, find_bitmap
from vmd.block.drivers.qcow2 import format as fmt
from vmd.errors import QMPError

if TYPE_CHECKING:
    from vmd.block.drivers.qcow2.node import Qcow2Node

AUTOCLEAR_BITMAPS = fmt.AUTOCLEAR_BITMAPS
MAX_BITMAPS = fmt.MAX_BITMAPS
MAX_DIRECTORY = fmt.MAX_BITMAP_DIRECTORY
FLAG_IN_USE = 1 << 0
FLAG_AUTO = 1 << 1
RESERVED_FLAGS = 0xFFFFFFFC
MAX_TABLE_ENTRIES = 0x8000000
MAX_PHYS_BYTES = 0x20000000
MIN_GRANULARITY_BITS, MAX_GRANULARITY_BITS = 9, 31
MAX_NAME = 1023
TYPE_DIRTY_TRACKING = 1
TABLE_RESERVED = 0xFF000000000001FE
TABLE_OFFSET_MASK = 0x00FFFFFFFFFFFE00
TABLE_ALL_ONES = 1

_ENTRY = struct.Struct(">QIIBBHI")     # table offset, table size, flags, type, granularity bits, name size, extra


@dataclass
class StoredBitmap:
    """One entry of the bitmap directory."""

    name: str
    granularity_bits: int
    flags: int
    table_offset: int = 0
    table_size: int = 0


# -- pure format ----------------------------------------------------------------------

def _ceil(value: int, unit: int) -> int:
    return -(-value // unit)


def _entry_size(name: bytes) -> int:
    return -(-(_ENTRY.size + len(name)) // 8) * 8


def table_entries(size: int, granularity: int, cluster_size: int) -> int:
    """Bitmap table entries for a disk of ``size`` bytes: the bits, in
    whole 64-bit words, spread over clusters."""
    words = max(1, _ceil(_ceil(size, granularity), 64))
    return _ceil(words * 8, cluster_size)


def _entry_ok(entry: StoredBitmap, cs: int, disk_size: int) -> bool:
    """QEMU's check_dir_entry."""
    if (not entry.table_size or not entry.table_offset or entry.table_offset % cs
            or entry.table_size > MAX_TABLE_ENTRIES or entry.flags & RESERVED_FLAGS
            or not MIN_GRANULARITY_BITS <= entry.granularity_bits <= MAX_GRANULARITY_BITS
            or len(entry.name.encode()) > MAX_NAME):
        return False
    phys = entry.table_size * cs
    if phys > MAX_PHYS_BYTES:
        return False
    return bool(entry.flags & FLAG_IN_USE or disk_size <= (phys * 8) << entry.granularity_bits)


def parse_directory(raw: bytes, nb: int, cs: int, disk_size: int) -> list[StoredBitmap]:
    """The directory's entries, with QEMU's texts for a broken one."""
    entries: list[StoredBitmap] = []
    pos = 0
    while pos < len(raw):
        if pos + _ENTRY.size > len(raw):
            raise QMPError("Broken bitmap directory")
        if len(entries) + 1 > nb:
            raise QMPError("More bitmaps found than specified in header extension")
        offset, size, flags, kind, bits, name_size, extra = _ENTRY.unpack_from(raw, pos)
        name_at = pos + _ENTRY.size + extra
        end = pos + -(-(_ENTRY.size + name_size + extra) // 8) * 8
        if end > len(raw):
            raise QMPError("Broken bitmap directory")
        if extra:
            raise QMPError("Bitmap extra data is not supported")
        name = raw[name_at:name_at + name_size].decode("utf-8", "replace")
        entry = StoredBitmap(name, bits, flags, offset, size)
        if kind != TYPE_DIRTY_TRACKING or not _entry_ok(entry, cs, disk_size):
            raise QMPError(f"Bitmap '{name}' doesn't satisfy the constraints")
        entries.append(entry)
        pos = end
    if len(entries) != nb:
        raise QMPError("Less bitmaps found than specified in header extension")
    return entries


def pack_directory(entries: list[StoredBitmap]) -> bytes:
    out = bytearray()
    for entry in entries:
        name = entry.name.encode()
        record = _ENTRY.pack(entry.table_offset, entry.table_size, entry.flags, TYPE_DIRTY_TRACKING,
                             entry.granularity_bits, len(name), 0) + name
        out += record.ljust(_entry_size(name), b"\0")
    return bytes(out)


def info_flags(flags: int) -> list[str]:
    """``Qcow2BitmapInfoFlags`` of a directory entry."""
    return [text for bit, text in ((FLAG_IN_USE, "in-use"), (FLAG_AUTO, "auto")) if flags & bit]


def check_constraints(name: str, granularity: int, disk_size: int, cs: int) -> None:
    """check_constraints_on_bitmap."""
    bits = granularity.bit_length() - 1
    if bits > MAX_GRANULARITY_BITS:
        raise QMPError(f"Granularity exceeds maximum ({1 << MAX_GRANULARITY_BITS} bytes)")
    if bits < MIN_GRANULARITY_BITS:
        raise QMPError(f"Granularity is under minimum ({1 << MIN_GRANULARITY_BITS} bytes)")
    needed = _ceil(_ceil(disk_size, granularity), 8)
    if needed > MAX_PHYS_BYTES or needed > MAX_TABLE_ENTRIES * cs:
        raise QMPError("Too much space will be occupied by the bitmap. Use larger granularity")
    if len(name.encode()) > MAX_NAME:
        raise QMPError(f"Name length exceeds maximum ({MAX_NAME} characters)")


# -- the store of one open image ------------------------------------------------------

class BitmapStore:
    """The bitmap directory of an open ``Qcow2Node`` and its I/O."""

    def __init__(self, node: Qcow2Node) -> None:
        self.node = node
        #: The directory as it is on disk.
        self.entries: list[StoredBitmap] = []

    @property
    def cs(self) -> int:
        return self.node.cs

    async def _read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        await self.node.file.read(offset, memoryview(buf))
        return bytes(buf)

    async def _write_flush(self, offset: int, data: bytes) -> None:
        await self.node.file.write(offset, memoryview(data))
        await self.node.file.flush()

    async def _set_autoclear(self, bits: int) -> None:
        self.node.header.autoclear_features = bits
        await self._write_flush(88, struct.pack(">Q", bits))

    # -- open ----------------------------------------------------------------------

    async def load(self) -> None:
        """Load the stored bitmaps into the node (qcow2_load_dirty_bitmaps)."""
        h, node = self.node.header, self.node
        if not h.nb_bitmaps:
            return
        if h.bitmap_directory_offset % self.cs:
            raise QMPError("bitmaps_ext: invalid bitmap directory offset")
        raw = await self._read(h.bitmap_directory_offset, h.bitmap_directory_size)
        self.entries = parse_directory(raw, h.nb_bitmaps, self.cs, node.total_size)
        changed = False
        for entry in self.entries:
            bitmap = create_bitmap(node, 1 << entry.granularity_bits, entry.name)
            bitmap.persistent = True
            if entry.flags & FLAG_IN_USE:
                bitmap.set_inconsistent()
            else:
                await self._load_data(entry, bitmap)
                bitmap.disabled = not entry.flags & FLAG_AUTO
                if not node.read_only:
                    entry.flags |= FLAG_IN_USE
                    changed = True
            bitmap.readonly = node.read_only
        if changed and not node.read_only:
            await self._rewrite_in_place()

    async def _load_data(self, entry: StoredBitmap, bitmap: DirtyBitmap) -> None:
        if entry.table_size != table_entries(bitmap.size, bitmap.granularity, self.cs):
            raise QMPError(f"Could not read bitmap '{entry.name}' from image: Invalid argument")
        raw = await self._read(entry.table_offset, entry.table_size * 8)
        table = struct.unpack(f">{entry.table_size}Q", raw)
        per_cluster = self.cs * 8
        for index, item in enumerate(table):
            offset = item & TABLE_OFFSET_MASK
            if item & TABLE_RESERVED or (offset and (item & TABLE_ALL_ONES or offset % self.cs)):
                raise QMPError(f"Could not read bitmap_table table from image for bitmap '{entry.name}': "
                               "Invalid argument")
            first = index * per_cluster
            if offset:
                bitmap.deserialize(await self._read(offset, self.cs), first)
            elif item & TABLE_ALL_ONES:
                bitmap.set(first * bitmap.granularity, per_cluster * bitmap.granularity)

    async def _rewrite_in_place(self) -> None:
        """update_ext_header_and_dir_in_place: flags changed, same size."""
        h = self.node.header
        bits = h.autoclear_features
        await self._set_autoclear(bits & ~AUTOCLEAR_BITMAPS)
        await self._write_flush(h.bitmap_directory_offset, pack_directory(self.entries))
        await self._set_autoclear(bits | AUTOCLEAR_BITMAPS)

    # -- new bitmaps -----------------------------------------------------------------

    def can_store_new(self, name: str, granularity: int) -> None:
        """qcow2_co_can_store_new_dirty_bitmap, QEMU's texts."""
        node = self.node
        if find_bitmap(node, name) is not None:
            raise QMPError(f"Bitmap already exists: {name}")
        try:
            if node.header.version < 3:
                raise QMPError("Cannot store dirty bitmaps in qcow2 v2 files")
            check_constraints(name, granularity, node.total_size, self.cs)
            persistent = [b for b in node.dirty_bitmaps if b.persistent and b.name is not None]
            if len(persistent) + 1 > MAX_BITMAPS:
                raise QMPError("Maximum number of persistent bitmaps is already reached")
            size = sum(_entry_size(b.name.encode()) for b in persistent if b.name) + _entry_size(name.encode())
            if size > MAX_DIRECTORY:
                raise QMPError("Not enough space in the bitmap directory")
        except QMPError as error:
            raise QMPError(f"Can't make bitmap '{name}' persistent in '{node.node_name}': {error.desc}") from None

    # -- storing ---------------------------------------------------------------------

    async def store(self) -> None:
        """qcow2_store_persistent_dirty_bitmaps: write every persistent,
        writable, consistent bitmap; then the directory; then the header."""
        node = self.node
        entries = [StoredBitmap(e.name, e.granularity_bits, e.flags, e.table_offset, e.table_size)
                   for e in self.entries]
        by_name = {entry.name: entry for entry in entries}
        todo: list[tuple[StoredBitmap, DirtyBitmap]] = []
        for bitmap in node.dirty_bitmaps:
            if not bitmap.persistent or bitmap.inconsistent or bitmap.readonly or bitmap.name is None:
                continue
            check_constraints(bitmap.name, bitmap.granularity, node.total_size, self.cs)
            entry = by_name.get(bitmap.name)
            if entry is None:
                entry = StoredBitmap(bitmap.name, 0, 0)
                entries.append(entry)
                by_name[bitmap.name] = entry
            elif not entry.flags & FLAG_IN_USE:
                raise QMPError(f"Bitmap '{bitmap.name}' already exists in the image")
            entry.flags = 0 if bitmap.disabled else FLAG_AUTO
            entry.granularity_bits = bitmap.granularity.bit_length() - 1
            todo.append((entry, bitmap))
        if not todo:
            return
        if node.read_only:
            raise QMPError("No write access")
        old = {entry.name: (entry.table_offset, entry.table_size) for entry in self.entries}
        chosen = {id(entry): bitmap for entry, bitmap in todo}
        for entry in entries:  # in directory order, as QEMU
            if id(entry) in chosen:
                entry.table_offset, entry.table_size = await self._store_data(chosen[id(entry)])
        await self._write_directory(entries)
        for entry, _ in todo:
            if entry.name in old:
                await self._free_table(*old[entry.name])

    async def _store_data(self, bitmap: DirtyBitmap) -> tuple[int, int]:
        """Data clusters (only those with a dirty bit) and the table."""
        cs, refcounts = self.cs, self.node.refcounts
        data = bitmap.serialize()
        size = table_entries(bitmap.size, bitmap.granularity, cs)
        table = [0] * size
        for index in range(size):
            chunk = data[index * cs:(index + 1) * cs]
            if chunk.count(0) == len(chunk):
                continue
            offset = await refcounts.alloc(1)
            await self.node.file.write(offset, memoryview(chunk.ljust(cs, b"\0")))
            table[index] = offset
        raw = struct.pack(f">{size}Q", *table)
        clusters = -(-len(raw) // cs)
        table_offset = await refcounts.alloc(clusters)
        await self.node.file.write(table_offset, memoryview(raw.ljust(clusters * cs, b"\0")))
        return table_offset, size

    async def _write_directory(self, entries: list[StoredBitmap]) -> None:
        """update_ext_header_and_dir: a new directory, counted and flushed
        before the header points at it; the old one is freed after."""
        node, h = self.node, self.node.header
        old_offset, old_size = h.bitmap_directory_offset, h.bitmap_directory_size
        if entries:
            raw = pack_directory(entries)
            clusters = -(-len(raw) // self.cs)
            offset = await node.refcounts.alloc(clusters)
            await node.file.write(offset, memoryview(raw.ljust(clusters * self.cs, b"\0")))
            h.autoclear_features |= AUTOCLEAR_BITMAPS
            h.nb_bitmaps, h.bitmap_directory_size, h.bitmap_directory_offset = len(entries), len(raw), offset
        else:
            h.autoclear_features &= ~AUTOCLEAR_BITMAPS
            h.nb_bitmaps = h.bitmap_directory_size = h.bitmap_directory_offset = 0
        await node.refcounts.cache.flush()
        await node.file.flush()
        await self._write_flush(0, h.pack().ljust(self.cs, b"\0"))
        self.entries = entries
        if old_size:
            await node.refcounts.free(old_offset, -(-old_size // self.cs))

    async def _free_table(self, offset: int, size: int) -> None:
        """Free a bitmap table and the data clusters it points at."""
        if not offset:
            return
        raw = await self._read(offset, size * 8)
        for item in struct.unpack(f">{size}Q", raw):
            if item & TABLE_OFFSET_MASK:
                await self.node.refcounts.free(item & TABLE_OFFSET_MASK)
        await self.node.refcounts.free(offset, -(-size * 8 // self.cs))

    async def remove(self, name: str) -> None:
        """qcow2_co_remove_persistent_dirty_bitmap."""
        entry = next((e for e in self.entries if e.name == name), None)
        if entry is None:
            return
        await self._write_directory([e for e in self.entries if e is not entry])
        await self._free_table(entry.table_offset, entry.table_size)

    # -- reopening -------------------------------------------------------------------

    async def reopen_read_only(self) -> None:
        """qcow2_reopen_bitmaps_ro: store, then the bitmaps are read-only."""
        await self.store()
        for bitmap in self.node.dirty_bitmaps:
            if bitmap.persistent:
                bitmap.readonly = True

    async def reopen_read_write(self) -> None:
        """qcow2_reopen_bitmaps_rw: stored bitmaps in memory become
        writable, marked in use on disk first."""
        node, changed = self.node, False
        for entry in self.entries:
            bitmap = find_bitmap(node, entry.name)
            if bitmap is not None and not entry.flags & FLAG_IN_USE and bitmap.readonly:
                entry.flags |= FLAG_IN_USE
                changed = True
        if changed:
            await self._rewrite_in_place()
        for bitmap in node.dirty_bitmaps:
            bitmap.readonly = False

    # -- queries -------------------------------------------------------------------

    def info(self) -> list[dict[str, Any]]:
        """``Qcow2BitmapInfo`` of each stored bitmap, in directory order."""
        return [{"name": e.name, "granularity": 1 << e.granularity_bits, "flags": info_flags(e.flags)}
                for e in self.entries]

    def check_resize(self) -> None:
        """qcow2_truncate_bitmaps_check."""
        for entry in self.entries:
            bitmap = find_bitmap(self.node, entry.name)
            if bitmap is None:
                raise QMPError("Cannot resize qcow2 with persistent bitmaps that were not loaded into memory")
            bitmap.check(Check.DEFAULT)


async def referenced_clusters(file: Any, header: fmt.Header, disk_size: int) -> list[tuple[int, int]]:
    """(offset, length) of every range the bitmaps extension uses: the
    directory, each table and each data cluster (for checks and repairs)."""
    if not header.nb_bitmaps:
        return []
    cs = header.cluster_size
    ranges = [(header.bitmap_directory_offset, header.bitmap_directory_size)]
    raw = bytearray(header.bitmap_directory_size)
    await file.read(header.bitmap_directory_offset, memoryview(raw))
    for entry in parse_directory(bytes(raw), header.nb_bitmaps, cs, disk_size):
        ranges.append((entry.table_offset, entry.table_size * 8))
        table = bytearray(entry.table_size * 8)
        await file.read(entry.table_offset, memoryview(table))
        ranges += [(item & TABLE_OFFSET_MASK, cs) for item in struct.unpack(f">{entry.table_size}Q", table)
                   if item & TABLE_OFFSET_MASK]
    return ranges
