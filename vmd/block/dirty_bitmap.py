"""An in-memory dirty bitmap (QEMU's BdrvDirtyBitmap without persistence).

One bit per ``granularity`` bytes of a node: set for ranges written since
the bit was last cleared. The mirror job tracks the writes made during
its copy with one. Bits live in a ``bytearray`` (a byte per granule:
simple, and a 64 KiB granularity costs 16 KiB per GiB).
"""

from __future__ import annotations


class DirtyBitmap:
    """Dirty granules of a range of ``size`` bytes; counts in bytes."""

    def __init__(self, size: int, granularity: int) -> None:
        self.granularity = granularity
        self.size = size
        self._bits = bytearray(-(-size // granularity))
        self._count = 0

    def _span(self, offset: int, length: int) -> range:
        first = offset // self.granularity
        last = -(-min(offset + length, self.size) // self.granularity)
        return range(first, max(first, last))

    def set(self, offset: int, length: int) -> None:
        """Mark ``[offset, offset + length)`` dirty (whole granules)."""
        bits = self._bits
        for i in self._span(offset, length):
            if not bits[i]:
                bits[i] = 1
                self._count += 1

    def reset(self, offset: int, length: int) -> None:
        """Clear the granules ``[offset, offset + length)`` covers; the
        caller passes granule-aligned ranges."""
        bits = self._bits
        for i in self._span(offset, length):
            if bits[i]:
                bits[i] = 0
                self._count -= 1

    def is_dirty(self, offset: int, length: int) -> bool:
        return any(self._bits[i] for i in self._span(offset, length))

    def count(self) -> int:
        """Dirty bytes (the last granule counts whole, as QEMU)."""
        return self._count * self.granularity

    def next_dirty(self, offset: int) -> int:
        """The offset of the first dirty granule at or after ``offset``
        (granule-aligned), or -1."""
        index = self._bits.find(1, offset // self.granularity)
        return -1 if index < 0 else index * self.granularity

    def dirty_run(self, offset: int, limit: int) -> int:
        """Bytes of the dirty run starting at ``offset``, at most ``limit``."""
        start = offset // self.granularity
        end = self._bits.find(0, start)
        if end < 0:
            end = len(self._bits)
        return min(limit, end * self.granularity - offset, self.size - offset)
