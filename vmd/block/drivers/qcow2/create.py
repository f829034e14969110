"""``create_qcow2``: a fresh image with qemu-img's layout.

Cluster 0 holds the header (v3: 112 bytes, backing-format extension,
feature name table, end marker, backing file name), cluster 1 the refcount
table, cluster 2 the first refcount block (counting clusters 0-2). The image
is then opened and resized, which places the L1 table at cluster 3 exactly as
qemu-img does (it also creates with size 0, then truncates).
"""

from __future__ import annotations

import errno
import os
import struct

from vmd.block import limits
from vmd.block.drivers.qcow2 import format as fmt
from vmd.block.drivers.qcow2.node import Qcow2Node
from vmd.block.node import BlockNode
from vmd.errors import QMPError


async def create_qcow2(file: BlockNode, size: int, *, cluster_size: int = 65536,
                       backing_file: str | None = None, backing_fmt: str | None = None,
                       lazy_refcounts: bool = False, version: int = 3, refcount_bits: int = 16) -> None:
    if cluster_size < 512 or cluster_size > (2 << 20) or cluster_size & (cluster_size - 1):
        raise QMPError("Cluster size must be a power of two between 512 and 2048k")
    if refcount_bits < 1 or refcount_bits > 64 or refcount_bits & (refcount_bits - 1):
        raise QMPError("Refcount width must be a power of two and may not exceed 64 bits")
    if version not in (2, 3):
        raise QMPError(f"Invalid compatibility level: '{version}'")
    if version == 2 and lazy_refcounts:
        raise QMPError("Lazy refcounts only supported with compatibility level 1.1 and above "
                       "(use version=v3 or greater)")
    if version == 2 and refcount_bits != 16:
        raise QMPError("Different refcount widths than 16 bits require compatibility level 1.1 or "
                       "above (use version=v3 or greater)")
    if backing_fmt and not backing_file:
        raise QMPError("Backing format cannot be used without backing file")
    if size % 512:
        raise QMPError("Image size must be a multiple of 512 bytes")
    cs = cluster_size
    _check_size(size, cs)
    h = fmt.Header(version=version, cluster_bits=cs.bit_length() - 1, size=0,
                   refcount_table_offset=cs, refcount_table_clusters=1,
                   refcount_order=refcount_bits.bit_length() - 1,
                   header_length=112 if version == 3 else 72,
                   compatible_features=fmt.COMPAT_LAZY_REFCOUNTS if lazy_refcounts else 0,
                   backing_file=backing_file, backing_format=backing_fmt)
    head = h.pack()
    refblock = bytearray(cs)
    for c in range(3):
        fmt.set_refcount(refblock, c, h.refcount_order, 1)
    reftable = struct.pack(">Q", 2 * cs).ljust(cs, b"\0")
    await file.truncate(0)
    try:
        await file.write(0, memoryview(head.ljust(cs, b"\0")))
        await file.write(cs, memoryview(reftable))
        await file.write(2 * cs, memoryview(bytes(refblock)))
        await file.flush()
    except OSError as error:  # a full disk, most likely: say what failed, as QEMU
        raise QMPError(f"Could not write qcow2 header: {os.strerror(error.errno or errno.EIO)}") from None
    node = Qcow2Node("#create", file, lazy_refcounts=False)
    await node.open()
    try:
        if size:
            await node.truncate(size)
        await node.flush()
    finally:
        node.detach_children()


def _check_size(size: int, cluster_size: int) -> None:
    """Refuse, before writing anything, a size the resize after creation
    would refuse (QEMU writes the empty image first, then fails to grow)."""
    try:
        limits.check_offset(size)
        if fmt.l1_entries_for(size, cluster_size) > fmt.MAX_L1_ENTRIES:
            raise QMPError("Failed to grow the L1 table: File too large")
    except QMPError as error:
        raise QMPError(f"Could not resize image: {error.desc}") from None
