"""The block layer's size limits, checked before anything is allocated.

Sizes and offsets reach the block layer from QMP (``block_resize``,
``blockdev-create``, driver options such as ``null-co``'s ``size``), from the
command line and from image headers. Each is checked here against QEMU's
limits, with QEMU's error texts, before a table is grown or a byte written:
a huge size must be refused, not tried (a 2^63 resize once built a 1 GiB L1
table in memory and a 137 GB sparse file).
"""

from __future__ import annotations

from vmd.errors import QMPError

#: QEMU's BDRV_MAX_LENGTH: INT64_MAX aligned down to 1 GiB (BDRV_MAX_ALIGNMENT).
MAX_LENGTH = ((1 << 63) - 1) & ~((1 << 30) - 1)


def check_offset(offset: int) -> None:
    """A request's end offset (or a new size) within the block layer's range."""
    if offset > MAX_LENGTH:
        raise QMPError(f"offset({offset}) exceeds maximum({MAX_LENGTH})")


def check_length(length: int) -> None:
    """A node's size when it is opened (QEMU's bdrv_refresh_total_sectors)."""
    if length < 0 or length > MAX_LENGTH:
        raise QMPError("Could not refresh total sector count: File too large")
