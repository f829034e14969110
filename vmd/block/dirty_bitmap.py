"""Dirty bitmaps (QEMU's BdrvDirtyBitmap, block/dirty-bitmap.c).

One bit per ``granularity`` bytes of a node, set for ranges written since
the bit was last cleared. A node keeps its bitmaps newest first (QEMU
inserts at the head of its list, and ``query-named-block-nodes`` shows
them in that order); every write, write-zeroes and discard that reaches
the node marks the bitmaps that are recording (``mark_dirty``), whether or
not the request succeeded, as QEMU's bdrv_co_write_req_finish does.

Bits are packed eight to a byte, least significant bit first: the layout
of qcow2's bitmap data and of the little-endian words whose SHA-256
``x-debug-block-dirty-bitmap-sha256`` reports, so both are the bytes
themselves. A 64 KiB granularity costs 2 KiB per GiB.

Besides its bits a bitmap has QEMU's state: a name (jobs' bitmaps have
none), ``disabled`` (not recording), ``persistent`` (a format stores it),
``busy`` (an NBD export or a job uses it), ``readonly`` (loaded from a
read-only image), ``inconsistent`` (stored while in use: unusable but
removable), and a ``successor`` while a backup holds it frozen.

Everything here belongs to the event loop thread.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from vmd.errors import QMPError

if TYPE_CHECKING:
    from vmd.block.node import BlockNode

#: QEMU's BDRV_BITMAP_MAX_NAME_SIZE.
MAX_NAME = 1023

_NONZERO = re.compile(rb"[^\x00]")
_NOT_FULL = re.compile(rb"[^\xff]")


class Check(enum.IntFlag):
    """What ``DirtyBitmap.check`` refuses (QEMU's BDRV_BITMAP_*)."""

    BUSY = 1
    RO = 2
    INCONSISTENT = 4
    DEFAULT = BUSY | RO | INCONSISTENT
    ALLOW_RO = BUSY | INCONSISTENT


class DirtyBitmap:
    """Dirty granules of a range of ``size`` bytes; counts in bytes."""

    def __init__(self, size: int, granularity: int, name: str | None = None) -> None:
        self.granularity = granularity
        self.size = size
        self.name = name
        self.disabled = False
        self.persistent = False
        self.busy = False
        self.readonly = False
        self.inconsistent = False
        #: The anonymous bitmap recording writes while this one is frozen.
        self.successor: DirtyBitmap | None = None
        self._bits = bytearray(-(-self.granules // 8))
        self._count = 0

    @property
    def granules(self) -> int:
        return -(-self.size // self.granularity)

    @property
    def recording(self) -> bool:
        """Whether writes reach it (or its successor): QEMU's ``recording``."""
        return not self.disabled or (self.successor is not None and not self.successor.disabled)

    # -- bits ------------------------------------------------------------------

    def _span(self, offset: int, length: int) -> tuple[int, int]:
        first = offset // self.granularity
        last = -(-min(offset + length, self.size) // self.granularity)
        return first, max(first, last)

    def _change(self, first: int, last: int, value: bool) -> None:
        """Set or clear granules ``[first, last)``, keeping the count."""
        if first >= last:
            return
        lo, hi = first // 8, -(-last // 8)
        word = int.from_bytes(self._bits[lo:hi], "little")
        mask = ((1 << (last - first)) - 1) << (first - lo * 8)
        before = (word & mask).bit_count()
        if value:
            word |= mask
            self._count += (last - first) - before
        else:
            word &= ~mask
            self._count -= before
        self._bits[lo:hi] = word.to_bytes(hi - lo, "little")

    def set(self, offset: int, length: int) -> None:
        """Mark ``[offset, offset + length)`` dirty (whole granules)."""
        self._change(*self._span(offset, length), True)

    def reset(self, offset: int, length: int) -> None:
        """Clear the granules ``[offset, offset + length)`` covers; the
        caller passes granule-aligned ranges."""
        self._change(*self._span(offset, length), False)

    def clear(self) -> None:
        self._bits[:] = bytes(len(self._bits))
        self._count = 0

    def _bit(self, granule: int) -> bool:
        return bool(self._bits[granule >> 3] >> (granule & 7) & 1)

    def is_dirty(self, offset: int, length: int) -> bool:
        first, last = self._span(offset, length)
        found = self._next(first, True)
        return 0 <= found < last

    def count(self) -> int:
        """Dirty bytes (the last granule counts whole, as QEMU)."""
        return self._count * self.granularity

    def _next(self, granule: int, dirty: bool) -> int:
        """The first granule at or after ``granule`` that is (not) dirty,
        or -1 (for clean ones: ``granules`` past the end)."""
        total = self.granules
        while granule < total and granule & 7:
            if self._bit(granule) == dirty:
                return granule
            granule += 1
        if granule >= total:
            return -1 if dirty else total
        match = (_NONZERO if dirty else _NOT_FULL).search(self._bits, granule >> 3)
        if match is None:
            return -1 if dirty else total
        byte = match.start()
        value = self._bits[byte] if dirty else ~self._bits[byte] & 0xFF
        found = byte * 8 + ((value & -value).bit_length() - 1)
        if found >= total:
            return -1 if dirty else total
        return found

    def next_dirty(self, offset: int) -> int:
        """The offset of the first dirty granule at or after ``offset``
        (granule-aligned), or -1."""
        found = self._next(offset // self.granularity, True)
        return -1 if found < 0 else found * self.granularity

    def dirty_run(self, offset: int, limit: int) -> int:
        """Bytes of the dirty run starting at ``offset``, at most ``limit``."""
        end = self._next(offset // self.granularity, False)
        return min(limit, end * self.granularity - offset, self.size - offset)

    def dirty_ranges(self, offset: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """(offset, length) of each dirty run meeting ``[offset, end)``,
        clipped to it."""
        end = self.size if end is None else min(end, self.size)
        pos = offset
        while pos < end:
            start = self.next_dirty(pos)
            if start < 0 or start >= end:
                return
            start = max(start, offset)
            n = min(self.dirty_run(start, end - start), end - start)
            yield start, n
            pos = start + n

    # -- whole bitmaps --------------------------------------------------------------

    def merge(self, other: DirtyBitmap) -> None:
        """Add ``other``'s dirty ranges (hbitmap_merge: granularities may differ)."""
        if other.granularity == self.granularity:
            merged = int.from_bytes(self._bits, "little") | int.from_bytes(other._bits, "little")
            self._bits[:] = merged.to_bytes(len(self._bits), "little")
            self._count = merged.bit_count()
            return
        for start, n in list(other.dirty_ranges()):
            self.set(start, n)

    def copy_bits(self) -> DirtyBitmap:
        """An anonymous bitmap with the same bits (for undo)."""
        twin = DirtyBitmap(self.size, self.granularity)
        twin._bits[:] = self._bits
        twin._count = self._count
        return twin

    def restore_bits(self, saved: DirtyBitmap) -> None:
        self._bits[:] = saved._bits
        self._count = saved._count

    def truncate(self, size: int) -> None:
        """The node changed size: new granules are clean, dropped ones go."""
        old, new = self.granules, -(-size // self.granularity)
        if new < old:
            self._change(new, old, False)
        self.size = size
        nbytes = -(-new // 8)
        del self._bits[nbytes:]
        self._bits.extend(bytes(nbytes - len(self._bits)))

    def serialize(self) -> bytes:
        """The bits, least significant first, padded to whole 64-bit words."""
        return bytes(self._bits).ljust(-(-len(self._bits) // 8) * 8 or 8, b"\0")

    def deserialize(self, data: bytes, first_granule: int) -> None:
        """Load packed bits for granules from ``first_granule`` (a multiple of 8)."""
        lo = first_granule // 8
        hi = min(len(self._bits), lo + len(data))
        self._bits[lo:hi] = data[:hi - lo]
        spare = self.granules % 8
        if spare and hi == len(self._bits):
            self._bits[-1] &= (1 << spare) - 1
        self._count = int.from_bytes(self._bits, "little").bit_count()

    def sha256(self) -> str:
        """QEMU's hbitmap_sha256: over the bit array as host (little-endian) words."""
        return hashlib.sha256(self.serialize()).hexdigest()

    # -- QEMU's checks ----------------------------------------------------------------

    def check(self, flags: Check) -> None:
        """bdrv_dirty_bitmap_check: refuse a bitmap in a state ``flags`` names."""
        if flags & Check.BUSY and self.busy:
            raise QMPError(f"Bitmap '{self.name}' is currently in use by another operation and cannot be used")
        if flags & Check.RO and self.readonly:
            raise QMPError(f"Bitmap '{self.name}' is readonly and cannot be modified")
        if flags & Check.INCONSISTENT and self.inconsistent:
            raise QMPError(f"Bitmap '{self.name}' is inconsistent and cannot be used")

    def set_inconsistent(self) -> None:
        self.inconsistent = True
        self.disabled = True


# -- bitmaps of a node ---------------------------------------------------------------

def default_granularity(node: BlockNode) -> int:
    """bdrv_get_default_bitmap_granularity: the node's cluster size,
    clamped to 4 KiB..64 KiB (64 KiB when it has none)."""
    cluster = getattr(node, "cs", 0) or 65536
    return min(65536, max(4096, cluster))


def find_bitmap(node: BlockNode, name: str) -> DirtyBitmap | None:
    return next((bitmap for bitmap in node.dirty_bitmaps if bitmap.name == name), None)


def create_bitmap(node: BlockNode, granularity: int, name: str | None = None) -> DirtyBitmap:
    """bdrv_create_dirty_bitmap: a new recording bitmap, first in the list."""
    if name is not None:
        if find_bitmap(node, name) is not None:
            raise QMPError(f"Bitmap already exists: {name}")
        if len(name.encode()) > MAX_NAME:
            raise QMPError(f"Bitmap name too long: {name}")
    bitmap = DirtyBitmap(node.total_size, granularity, name)
    node.dirty_bitmaps.insert(0, bitmap)
    return bitmap


def release_bitmap(node: BlockNode, bitmap: DirtyBitmap) -> None:
    if bitmap in node.dirty_bitmaps:
        node.dirty_bitmaps.remove(bitmap)


def mark_dirty(node: BlockNode, offset: int, length: int) -> None:
    """bdrv_set_dirty: a write reached ``node``."""
    for bitmap in node.dirty_bitmaps:
        if not bitmap.disabled:
            bitmap.set(offset, length)


def resize_bitmaps(node: BlockNode) -> None:
    for bitmap in node.dirty_bitmaps:
        bitmap.truncate(node.total_size)


# -- frozen bitmaps (a backup's) ------------------------------------------------------------

def create_successor(node: BlockNode, bitmap: DirtyBitmap) -> None:
    """Freeze ``bitmap``: an anonymous successor records from now on."""
    bitmap.check(Check.BUSY)
    if bitmap.successor is not None:
        raise QMPError("Cannot create a successor for a bitmap that already has one")
    child = create_bitmap(node, bitmap.granularity)
    child.disabled = bitmap.disabled
    bitmap.disabled = True
    bitmap.successor = child
    bitmap.busy = True


def abdicate(node: BlockNode, bitmap: DirtyBitmap) -> DirtyBitmap:
    """The successor takes the frozen bitmap's place (and name)."""
    child = bitmap.successor
    assert child is not None
    child.name, bitmap.name = bitmap.name, None
    child.persistent, bitmap.persistent = bitmap.persistent, False
    bitmap.successor = None
    bitmap.busy = False
    release_bitmap(node, bitmap)
    return child


def reclaim(node: BlockNode, bitmap: DirtyBitmap) -> DirtyBitmap:
    """Merge the successor back: nothing recorded meanwhile is lost."""
    child = bitmap.successor
    assert child is not None
    bitmap.merge(child)
    bitmap.disabled = child.disabled
    bitmap.busy = False
    bitmap.successor = None
    release_bitmap(node, child)
    return bitmap
