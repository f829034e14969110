"""A read-only consistency check of a qcow2 image (``qemu-img check`` without ``-r``).

The walk follows QEMU's ``qcow2_check_refcounts``: every structure that
should hold a reference (header, L1 tables, L2 tables, data and compressed
clusters, snapshot table, refcount table and blocks) adds one to an
in-memory count per host cluster; those counts are then compared with the
refcounts stored in the image. A stored count below the computed one is a
corruption (``ERROR cluster ...``), above it a leak (``Leaked cluster ...``).
The ``OFLAG_COPIED`` bits of L1 and L2 entries must say whether the stored
refcount is exactly one. Findings go to ``messages`` with QEMU's wording.

Nothing is written: the image is only read through its ``file`` child.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from vmd.block.drivers.qcow2 import format as fmt
from vmd.block.drivers.qcow2.bitmaps import referenced_clusters
from vmd.block.node import BlockNode
from vmd.errors import QMPError

L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
REFT_RESERVED_MASK = 0x1FF


@dataclass
class CheckResult:
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    image_end_offset: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    #: Diagnostic lines, in order (qemu-img prints them on stderr).
    messages: list[str] = field(default_factory=list)


class _ReadError(Exception):
    pass


class _Checker:
    def __init__(self, file: BlockNode, header: fmt.Header, virtual_size: int,
                 progress: Callable[[int, int], None] | None) -> None:
        self.file = file
        self.h = header
        self.cs = header.cluster_size
        self.bits = header.cluster_bits
        self.res = CheckResult()
        self.refs: list[int] = []
        self.refcount_max = (1 << header.refcount_bits) - 1
        self.virtual_size = virtual_size
        self.progress = progress
        self._blocks: dict[int, bytes] = {}
        self.reftable: list[int] = []

    # -- helpers -------------------------------------------------------------

    def say(self, text: str) -> None:
        self.res.messages.append(text)

    async def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; past the end of the file reads zeroes."""
        buf = bytearray(length)
        avail = max(0, min(length, self.file.total_size - offset))
        if avail:
            await self.file.read(offset, memoryview(buf)[:avail])
        return bytes(buf)

    def inc(self, offset: int, size: int) -> None:
        """Count one reference to every cluster of [offset, offset + size)."""
        if size <= 0:
            return
        first = offset >> self.bits
        last = (offset + size - 1) >> self.bits
        if last >= len(self.refs):
            self.refs.extend([0] * (last + 1 - len(self.refs)))
        for k in range(first, last + 1):
            if self.refs[k] == self.refcount_max:
                self.say(f"ERROR: overflow cluster offset=0x{k << self.bits:x}")
                self.say("Use qemu-img amend to increase the refcount entry width or qemu-img convert "
                         "to create a clean copy if the image cannot be opened for writing")
                self.res.corruptions += 1
                continue
            self.refs[k] += 1

    async def stored_refcount(self, cluster: int) -> int:
        """The refcount the image records for ``cluster``; raises _ReadError."""
        per_block = self.cs * 8 // self.h.refcount_bits
        index, pos = divmod(cluster, per_block)
        if index >= len(self.reftable):
            return 0
        block_off = self.reftable[index] & fmt.REFT_OFFSET_MASK
        if not block_off:
            return 0
        if block_off % self.cs:
            raise _ReadError("Input/output error")
        block = self._blocks.get(block_off)
        if block is None:
            block = await self.read(block_off, self.cs)
            if len(self._blocks) > 64:
                self._blocks.clear()
            self._blocks[block_off] = block
        return fmt.get_refcount(block, pos, self.h.refcount_order)

    # -- walking the tables -------------------------------------------------------

    async def l2(self, l2_offset: int, frag: bool) -> None:
        table = await self.read(l2_offset, self.cs)
        entries = struct.unpack(f">{self.cs // 8}Q", table)
        next_contiguous = 0
        shift = 62 - (self.bits - 8)
        offset_mask = (1 << shift) - 1
        sectors_mask = (1 << (self.bits - 8)) - 1
        res = self.res
        for entry in entries:
            if entry & fmt.OFLAG_COMPRESSED:
                if entry & fmt.OFLAG_COPIED:
                    self.say(f"ERROR: coffset=0x{entry & offset_mask:x}: copied flag must never be set "
                             "for compressed clusters")
                    entry &= ~fmt.OFLAG_COPIED
                    res.corruptions += 1
                coffset = entry & offset_mask
                sectors = ((entry >> shift) & sectors_mask) + 1
                self.inc(coffset, sectors * 512 - (coffset & 511))
                if frag:
                    res.allocated_clusters += 1
                    res.compressed_clusters += 1
                    # Compressed clusters are fragmented by nature.
                    res.fragmented_clusters += 1
                continue
            if entry & L2E_STD_RESERVED_MASK:
                self.say(f"ERROR found l2 entry with reserved bits set: {entry:x}")
                res.corruptions += 1
            offset = entry & fmt.L2E_OFFSET_MASK
            if not offset:
                continue  # unallocated, or a plain zero cluster
            if offset % self.cs:
                res.corruptions += 1
                if entry & fmt.OFLAG_ZERO:
                    self.say(f"ERROR offset={offset:x}: Preallocated cluster is not properly aligned; "
                             "L2 entry corrupted.")
                else:
                    self.say(f"ERROR offset={offset:x}: Data cluster is not properly aligned; "
                             "L2 entry corrupted.")
            if frag:
                res.allocated_clusters += 1
                if next_contiguous and offset != next_contiguous:
                    res.fragmented_clusters += 1
                next_contiguous = offset + self.cs
            self.inc(offset, self.cs)

    async def l1(self, l1_offset: int, l1_size: int, frag: bool, step: Callable[[], None] | None) -> None:
        self.inc(l1_offset, l1_size * 8)
        raw = await self.read(l1_offset, l1_size * 8)
        for entry in struct.unpack(f">{l1_size}Q", raw):
            if step is not None:
                step()
            if entry & L1E_RESERVED_MASK:
                self.say(f"ERROR found L1 entry with reserved bits set: {entry:x}")
                self.res.corruptions += 1
            l2_offset = entry & fmt.L1E_OFFSET_MASK
            if not l2_offset:
                continue
            self.inc(l2_offset, self.cs)
            if l2_offset % self.cs:
                self.say(f"ERROR l2_offset={l2_offset:x}: Table is not cluster aligned; L1 entry corrupted")
                self.res.corruptions += 1
            await self.l2(l2_offset, frag)

    async def snapshots(self) -> None:
        """Each snapshot's L1 table and the snapshot table itself."""
        h = self.h
        if not h.nb_snapshots:
            return
        pos = h.snapshots_offset
        for _ in range(h.nb_snapshots):
            head = await self.read(pos, 40)
            l1_off, l1_size, id_len, name_len = struct.unpack_from(">QIHH", head, 0)
            extra = struct.unpack_from(">I", head, 36)[0]
            pos += 40 + extra + id_len + name_len
            pos += -pos % 8
            await self.l1(l1_off, l1_size, False, None)
        self.inc(h.snapshots_offset, pos - h.snapshots_offset)

    async def bitmaps(self) -> None:
        """The bitmap directory, tables and data (qcow2_check_bitmaps_refcounts)."""
        try:
            ranges = await referenced_clusters(self.file, self.h, self.virtual_size)
        except QMPError:
            self.res.corruptions += 1
            return
        for offset, length in ranges:
            self.inc(offset, length)

    def refblocks(self, nb_clusters: int) -> None:
        for i, entry in enumerate(self.reftable):
            if entry & REFT_RESERVED_MASK:
                self.say(f"ERROR refcount table entry {i} has reserved bits set")
                self.res.corruptions += 1
                continue
            offset = entry & fmt.REFT_OFFSET_MASK
            cluster = offset >> self.bits
            if offset % self.cs:
                self.say(f"ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted")
                self.res.corruptions += 1
                continue
            if cluster >= nb_clusters:
                self.say(f"ERROR refcount block {i} is outside image")
                self.res.corruptions += 1
                continue
            if offset:
                self.inc(offset, self.cs)
                if self.refs[cluster] != 1:
                    self.say(f"ERROR refcount block {i} refcount={self.refs[cluster]}")
                    self.res.corruptions += 1

    async def oflag_copied(self, l1: list[int], step: Callable[[], None]) -> None:
        for i, l1_entry in enumerate(l1):
            step()
            l2_offset = l1_entry & fmt.L1E_OFFSET_MASK
            if not l2_offset:
                continue
            try:
                refcount = await self.stored_refcount(l2_offset >> self.bits)
            except _ReadError:
                continue
            if (refcount == 1) != bool(l1_entry & fmt.OFLAG_COPIED):
                self.say(f"ERROR OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1_entry:x} "
                         f"refcount={refcount}")
                self.res.corruptions += 1
            table = await self.read(l2_offset, self.cs)
            for entry in struct.unpack(f">{self.cs // 8}Q", table):
                if entry & fmt.OFLAG_COMPRESSED:
                    continue
                data = entry & fmt.L2E_OFFSET_MASK
                if not data:
                    continue
                try:
                    refcount = await self.stored_refcount(data >> self.bits)
                except _ReadError:
                    continue
                if (refcount == 1) != bool(entry & fmt.OFLAG_COPIED):
                    self.say(f"ERROR OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={refcount}")
                    self.res.corruptions += 1

    # -- the whole check ----------------------------------------------------------

    async def run(self, l1: list[int]) -> CheckResult:
        h, cs, res = self.h, self.cs, self.res
        file_size = self.file.total_size
        nb_clusters = -(-file_size // cs)
        res.total_clusters = -(-self.virtual_size // cs)
        raw = await self.read(h.refcount_table_offset, h.refcount_table_clusters * cs)
        self.reftable = list(struct.unpack(f">{len(raw) // 8}Q", raw))
        self.refs = [0] * nb_clusters
        work = max(1, 2 * h.l1_size + nb_clusters)
        done = 0

        def step() -> None:
            nonlocal done
            done += 1
            if self.progress is not None and done % 64 == 0:
                self.progress(done, work)

        self.inc(0, cs)
        await self.l1(h.l1_table_offset, h.l1_size, True, step)
        await self.snapshots()
        await self.bitmaps()
        self.inc(h.refcount_table_offset, h.refcount_table_clusters * cs)
        self.refblocks(nb_clusters)
        highest = 0
        for i in range(len(self.refs)):
            step()
            try:
                stored = await self.stored_refcount(i)
            except _ReadError as error:
                self.say(f"Can't get refcount for cluster {i}: {error}")
                res.check_errors += 1
                continue
            computed = self.refs[i]
            if stored > 0 or computed > 0:
                highest = i
            if stored != computed:
                kind = "ERROR" if stored < computed else "Leaked"
                self.say(f"{kind} cluster {i} refcount={stored} reference={computed}")
                if stored < computed:
                    res.corruptions += 1
                else:
                    res.leaks += 1
        await self.oflag_copied(l1, step)
        res.image_end_offset = (highest + 1) * cs
        if self.progress is not None:
            self.progress(work, work)
        return res


async def check_qcow2(file: BlockNode, header: fmt.Header, l1: list[int], virtual_size: int,
                      progress: Callable[[int, int], None] | None = None) -> CheckResult:
    """Check the image in ``file`` (header and L1 as parsed at open); read-only.

    ``progress(done, total)`` is called now and then while tables are walked.
    Errors reading the file count as check errors (``check_errors``).
    """
    checker = _Checker(file, header, virtual_size, progress)
    try:
        return await checker.run(l1)
    except OSError as error:
        checker.say(f"ERROR: I/O error in check_refcounts: {error.strerror or error}")
        checker.res.check_errors += 1
        return checker.res
