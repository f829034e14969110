"""A block node: QEMU's BlockDriverState, as a Python object.

Every driver subclasses ``BlockNode``. All I/O methods are coroutines that
run on the event loop; the blocking system calls beneath them go to the
worker threads of ``vmd.block.aio``, so the loop never waits on a disk.
Reads fill a caller's buffer in place (``memoryview``), so data is copied
once, from the kernel into that buffer.

A node has child edges (``file`` for the protocol under a format,
``backing`` for the image below in a chain) and parent edges: from the nodes
above it and from its users (an export, a job, a guest device), each with
the permissions it holds (``vmd.block.edge``). A driver says what it needs
from each child given what its own parents need (``child_perm``) and takes
what the graph grants it (``check_perm``, then ``commit_perm`` or
``abort_perm``: a file takes and drops its lock bytes there).

Thread ownership: nodes belong to the event loop thread. Only the bytes of
a buffer cross to a worker thread, for the duration of one system call.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmd._generated.types import BlkdebugEvent, BlockStatsSpecific
from vmd.block import filename as filenames
from vmd.block import perm as perms
from vmd.block.dirty_bitmap import DirtyBitmap, mark_dirty, resize_bitmaps
from vmd.block.edge import Edge, attach, detach
from vmd.block.limits import check_offset
from vmd.block.perm import Perm, Role
from vmd.errors import QMPError

_created = itertools.count()


class Status:
    """What ``block_status`` says about a range (QEMU's BDRV_BLOCK_*): bits
    of a plain ``int``. Not an ``enum.IntFlag``, whose ``|`` and ``&`` run in
    Python: they were a third of the time of a cached qcow2 read with its
    block status (every structured NBD read asks for both)."""

    DATA = 1        # reads come from this node (or its file), not below
    ZERO = 2        # reads return zeroes
    ALLOCATED = 4   # this node (not its backing chain) decides the content


@dataclass(slots=True)
class Extent:
    """The status of ``length`` bytes starting where the caller asked.

    Not frozen: a frozen dataclass sets each field through
    ``object.__setattr__``, four times the cost, and every structured NBD
    read makes two of these. Nobody changes one once made.
    """

    length: int
    status: int  # Status bits
    #: Where the data lies in the ``file`` child, when it is plain there.
    file_offset: int | None = None


class BlockNode:
    """One node of the graph. Subclasses implement the ``_co_*`` hooks."""

    driver = ""
    #: Whether writes past the end extend the node (protocol drivers).
    grows_on_write = False
    #: Whether the format can have a backing child (blockdev-snapshot).
    supports_backing = False
    #: A filter driver (QEMU's is_filter): one child, passed through, and
    #: skipped when looking at a chain (raw is not one, though its child
    #: may have the filtered role).
    is_filter = False
    #: No job may freeze a link to it (QEMU's never_freeze: the filters a
    #: commit or mirror job inserts and removes again).
    never_freeze = False
    #: A protocol driver (QEMU's bdrv_file_open): its node's own name opens it.
    is_protocol = False
    #: The options that change what the node reads (QEMU's strong runtime
    #: options; a trailing dot takes every option under that prefix): they
    #: make its file name a ``json:`` one (``vmd.block.filename``).
    strong_options: tuple[str, ...] = ()
    #: Whether ``blockdev-reopen`` may reopen the node (QEMU's drivers
    #: without bdrv_reopen_prepare refuse), and the driver's options a
    #: reopen may change or leave out (mutable_opts).
    supports_reopen = True
    #: ``cache.direct`` and ``cache.no-flush`` as opened (a file acts on them).
    direct = False
    no_flush = False
    mutable_options: tuple[str, ...] = ()

    def __init__(self, node_name: str, *, read_only: bool = False) -> None:
        self.node_name = node_name
        #: When it was made (larger is newer): QEMU names a node once its
        #: file child is open and before its backing file, and lists nodes
        #: in that order.
        self.created = next(_created)
        self.read_only = read_only
        #: Child edges by name; parent edges, oldest first.
        self.children: dict[str, Edge] = {}
        self.parents: list[Edge] = []
        #: ``force-share``: children of this node share everything with others.
        self.force_share = False
        #: Opened for its parent (inline options, or named in an image
        #: header): it inherits the parent's options, read-only included.
        self.opened_inline = False
        #: The parent that opened it inline (QEMU's inherits_from): a
        #: reopen of that parent reopens it too.
        self.inherits_from: BlockNode | None = None
        #: Drained sections over this node under way.
        self.quiesce_counter = 0
        self.total_size = 0
        #: Requests must be multiples of this (O_DIRECT files: 512 or 4096).
        self.request_alignment = 1
        self.write_threshold = 0
        #: The end of the furthest write or zero write (done or failed) so
        #: far, for ``query-blockstats`` (bs->wr_highest_offset).
        self.wr_highest_offset = 0
        #: The backing file name recorded in the image (formats with chains).
        self.backing_file: str | None = None
        #: The backing file the node would open by itself: the header's
        #: name, or the file name of the backing node opened by that name
        #: (QEMU's auto_backing_file); another backing node overrides it.
        self.auto_backing_file = ""
        #: The options the node was opened with, as JSON data (QEMU's bs->options).
        self.open_options: dict[str, Any] = {}
        #: A job's filter inserted without a node name: it shows its child's names.
        self.implicit = False
        #: (``vmd.block.edge.shape_version``, names) when last computed.
        self.names_cache: tuple[int, filenames.Names] | None = None
        self.backing_fmt: str | None = None
        #: Called as (node, threshold, end of write) when a write crosses it.
        self.on_threshold: Callable[[BlockNode, int, int], None] | None = None
        #: Dirty bitmaps of this node, newest first (``vmd.block.dirty_bitmap``).
        self.dirty_bitmaps: list[DirtyBitmap] = []
        #: ``detect-zeroes``: "off", "on" (a write of zeroes becomes a
        #: zero write) or "unmap" (one that may also unmap).
        self.detect_zeroes = "off"
        #: Write requests ended (counted by write, write_zeroes and discard,
        #: failed ones too), and as many as the last flush covered (QEMU's
        #: write_gen and flushed_gen).
        self.write_gen = 0
        self.flushed_gen = 0
        #: The options the node was opened (or last reopened) with, flat
        #: (``file.filename``), children left out (QEMU's bs->options),
        #: and those of them given rather than inherited (explicit_options).
        self.options: dict[str, Any] = {}
        self.explicit_options: dict[str, Any] = {}
        #: Put in by a job without a name asked for (QEMU's implicit node).
        self.implicit = False

    # -- graph -------------------------------------------------------------

    def attach_child(self, name: str, child: BlockNode, role: Role) -> Edge:
        """Add a child edge with the permissions this driver needs from it."""
        return attach(self, child, name, role)

    def detach_children(self) -> None:
        for edge in list(self.children.values()):
            detach(edge)

    def child(self, name: str) -> BlockNode | None:
        edge = self.children.get(name)
        return edge.child if edge is not None else None

    @property
    def file(self) -> BlockNode:
        return self.children["file"].child

    @property
    def backing(self) -> BlockNode | None:
        edge = self.children.get("backing")
        return edge.child if edge is not None else None

    def filtered(self) -> BlockNode | None:
        """A filter's child, else the backing child (bdrv_filter_or_cow_bs)."""
        if self.is_filter:
            return next((edge.child for edge in self.children.values() if edge.role & Role.FILTERED), None)
        return self.backing

    # -- permissions (QEMU's bdrv_child_perm, bdrv_check_perm) ----------------------------

    def parent_desc(self) -> str:
        """How this node is named in permission errors as a parent."""
        return f"node '{self.node_name}'"

    def child_perm(self, edge: Edge, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        """What this node needs from ``edge``'s child when its own parents
        hold ``perm`` and share ``shared``."""
        return perms.default_perms(not self.read_only, edge.role, perm, shared)

    def check_perm(self, perm: Perm, shared: Perm) -> None:
        """Prepare to hold ``perm`` and share ``shared``; raise if impossible."""

    def commit_perm(self) -> None:
        """The prepared permissions are final."""

    def abort_perm(self) -> None:
        """Go back to the permissions held before ``check_perm``."""

    # -- life cycle ----------------------------------------------------------

    async def open(self) -> None:
        """Read metadata, check it; raise QMPError with QEMU's text."""

    async def close(self) -> None:
        """Flush what must be flushed and release host resources."""

    def drain_begin(self) -> None:
        """A drained section covers this node (QEMU's bdrv_drain_begin
        callback): requests it holds back must be let go."""

    def drain_end(self) -> None:
        """The drained section is over."""

    async def reopen_read_only(self) -> None:
        """Become read-only (the old top after a snapshot), with the
        children that inherit from this node; a format writes back what it
        still holds first (``_co_flush``). Permissions are then refreshed
        by the caller."""
        stack: list[BlockNode] = [self]
        while stack:
            node = stack.pop()
            if not node.read_only:
                await node.prepare_read_only()
                node.read_only = True
            stack.extend(edge.child for edge in node.children.values()
                         if edge.child.opened_inline and len(edge.child.parents) == 1)

    async def prepare_read_only(self) -> None:
        """Write back what the node holds and stop writing, while it still
        may write (its ``read_only`` is set by the caller)."""
        await self.flush()
        await self._co_make_read_only()

    async def _co_make_read_only(self) -> None:
        """Hook: what a driver does before it stops writing."""

    async def reopen_read_write(self) -> None:
        """Become writable (a commit's base), with the children that
        inherit from this node, children first; permissions are then
        refreshed by the caller. Raises QMPError (nothing changed on the
        node that failed)."""
        nodes: list[BlockNode] = []
        stack: list[BlockNode] = [self]
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(edge.child for edge in node.children.values()
                         if not edge.role & Role.COW and edge.child.opened_inline
                         and "read-only" not in edge.child.explicit_options and len(edge.child.parents) == 1)
        for node in reversed(nodes):
            if node.read_only:
                await node.prepare_writable()
                node.read_only = False

    async def prepare_writable(self) -> None:
        """What must happen before the node may write (its children may
        write already; ``read_only`` is cleared by the caller)."""
        await self._co_make_writable()

    async def set_cache_mode(self, direct: bool, no_flush: bool) -> None:
        """A reopen changes the ``cache`` options."""
        self.direct, self.no_flush = direct, no_flush

    def reopen_prepare(self, options: dict[str, Any]) -> Callable[[], None]:
        """Take the driver's options of a reopen out of ``options`` (flat),
        check them, and return what applies them once the reopen commits.
        Options left in ``options`` must be unchanged (the caller checks)."""
        return lambda: None

    async def _co_make_writable(self) -> None:
        """Hook: what a driver does before it may write (a file reopens
        its descriptor read-write)."""

    # -- I/O -------------------------------------------------------------------

    async def read(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the node's content at ``offset``."""
        self._check_range(offset, len(buf))
        await self._co_read(offset, buf)

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        length = len(data)
        self._check_writable(offset, length)
        try:
            if self.detect_zeroes != "off" and data and not any(data):
                await self._co_write_zeroes(offset, length, self.detect_zeroes == "unmap")
            else:
                await self._co_write(offset, memoryview(data))
        finally:
            self.write_gen += 1
            if offset + length > self.wr_highest_offset and length:   # _write_done's, inline: the hot path
                self.wr_highest_offset = offset + length
            if self.dirty_bitmaps:
                self._write_done(offset, length)
        if self.write_threshold:
            self._note_write(offset + length)

    async def write_zeroes(self, offset: int, length: int,
                           may_unmap: bool = False) -> None:
        self._check_writable(offset, length)
        try:
            await self._co_write_zeroes(offset, length, may_unmap)
        finally:
            self.write_gen += 1
            self._write_done(offset, length, True)
        self._note_write(offset + length)

    async def discard(self, offset: int, length: int) -> None:
        self._check_writable(offset, length)
        try:
            await self._co_discard(offset, length)
        finally:
            self.write_gen += 1
            self._write_done(offset, length)

    async def flush(self) -> None:
        """bdrv_co_flush: the primary child hears ``flush_to_os``, and
        ``flush_to_disk`` if anything was written here since the last flush
        (where a blkdebug child acts on them); then the driver flushes.
        QEMU fires ``flush_to_disk`` after the format wrote back its caches
        and vmd before: a rule it activates also fails that write-back."""
        gen = self.write_gen
        primary = self.primary_child()
        if primary is not None and not self.read_only:
            primary.debug_event(BlkdebugEvent.FLUSH_TO_OS)
            if gen != self.flushed_gen:
                primary.debug_event(BlkdebugEvent.FLUSH_TO_DISK)
        await self._co_flush()
        self.flushed_gen = gen

    async def truncate(self, size: int) -> None:
        check_offset(size)
        if self.read_only:
            raise QMPError("Block node is read-only")
        old = self.total_size
        backing = self.backing
        await self._co_truncate(size)
        resize_bitmaps(self)
        if size > old and backing is not None and backing.total_size > old:
            # bdrv_co_truncate's BDRV_REQ_ZERO_WRITE: the new area must read
            # as zeroes, not as the longer backing file's data beneath it.
            await self._co_write_zeroes(old, size - old, False)

    async def block_status(self, offset: int, length: int) -> Extent:
        """Status of the range starting at ``offset`` (maybe shorter)."""
        self._check_range(offset, length)
        return await self._co_block_status(offset, length)

    def debug_event(self, event: str) -> None:
        """A parent reports a ``BlkdebugEvent`` here (QEMU's BLKDBG_EVENT);
        only a blkdebug node acts on it."""

    # -- description -------------------------------------------------------

    def filename(self) -> str:
        """The node's file name as QEMU reports it (``vmd.block.filename``)."""
        return filenames.filename(self)

    def exact_filename(self, options: dict[str, Any], names_of: filenames.NamesOf) -> str | None:
        """The driver's own rule for a plain file name (QEMU's
        .bdrv_refresh_filename), "" for none; None: the generic rule.
        ``options`` are the node's full open options."""
        return None

    def primary_child(self) -> BlockNode | None:
        """The child holding the node's data or metadata (bdrv_primary_bs)."""
        return next((edge.child for edge in self.children.values() if edge.role & Role.PRIMARY), None)

    def reported_size(self) -> int:
        """The size QEMU reports (bdrv_getlength): whole 512-byte sectors,
        so a file of 1000 bytes shows as 1024."""
        return -(-self.total_size // 512) * 512

    def allocated_file_size(self) -> int | None:
        """Bytes the node takes on the host (``actual-size``), None where
        unknown (QEMU's bdrv_get_allocated_file_size): a filter's is its
        child's, a format's the sum of its data and metadata children's;
        protocol drivers that know override this."""
        if self.is_filter:
            below = self.filtered()
            return below.allocated_file_size() if below is not None else None
        total = 0
        for edge in self.children.values():
            if edge.role & (Role.DATA | Role.METADATA):
                size = edge.child.allocated_file_size()
                if size is None:
                    return None
                total += size
        return total

    def format_info(self) -> dict[str, Any]:
        """Driver-specific members for ``query-named-block-nodes``."""
        return {}

    def specific_stats(self) -> BlockStatsSpecific | None:
        """Driver-specific members for ``query-blockstats`` (file nodes have some)."""
        return None

    # -- persistent dirty bitmaps (a format that stores them overrides) ----------

    def can_store_new_bitmap(self, name: str, granularity: int) -> None:
        """Raise unless a new persistent bitmap could be stored here."""
        raise QMPError(f"Can't store persistent bitmaps to {self.node_name}: Operation not supported")

    async def remove_persistent_bitmap(self, name: str) -> None:
        """Drop the stored copy of bitmap ``name`` (absent is no error)."""

    # -- hooks ---------------------------------------------------------------

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        raise NotImplementedError

    async def _co_write(self, offset: int, data: memoryview) -> None:
        raise QMPError(f"Driver '{self.driver}' does not support writing")

    async def _co_write_zeroes(self, offset: int, length: int,
                               may_unmap: bool) -> None:
        zeroes = memoryview(bytearray(min(length, 1 << 20)))
        end = offset + length
        while offset < end:
            chunk = zeroes[:min(len(zeroes), end - offset)]
            await self._co_write(offset, chunk)
            offset += len(chunk)

    async def _co_discard(self, offset: int, length: int) -> None:
        """Discard is advisory; drivers that cannot simply ignore it."""

    async def _co_flush(self) -> None:
        for edge in self.children.values():
            await edge.child.flush()

    async def _co_truncate(self, size: int) -> None:
        raise QMPError(f"Image format '{self.driver}' does not support resize")

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        return Extent(length, Status.DATA | Status.ALLOCATED, offset)

    # -- helpers -------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.total_size:
            raise QMPError(
                f"Request out of range: offset {offset} length {length} "
                f"size {self.total_size}")

    def _check_writable(self, offset: int, length: int) -> None:
        if self.read_only:
            raise QMPError("Block node is read-only")
        if not self.grows_on_write:
            self._check_range(offset, length)

    def _write_done(self, offset: int, length: int, is_write: bool = False) -> None:
        """A write request (``is_write``: not a discard) ended, done or
        failed: the dirty bitmaps, and for writes the highest offset
        written, learn of it either way (QEMU's bdrv_co_write_req_finish)."""
        if is_write and length and offset + length > self.wr_highest_offset:
            self.wr_highest_offset = offset + length
        if self.dirty_bitmaps:
            mark_dirty(self, offset, length)

    def _note_write(self, end: int) -> None:
        """Fire the write threshold when a write crosses it (once)."""
        if self.write_threshold and end > self.write_threshold:
            threshold, self.write_threshold = self.write_threshold, 0
            if self.on_threshold is not None:
                self.on_threshold(self, threshold, end)


async def block_status_above(node: BlockNode, offset: int, length: int) -> Extent:
    """What a reader of ``node`` sees at ``offset``, down the backing chain.

    A range the node leaves unallocated reads from its backing node (and as
    zeroes past the backing node's end), as QEMU's bdrv_block_status_above;
    filters pass through. A loop, not recursion: chains may be deep.
    """
    top_status: int | None = None
    while True:
        below = node.filtered() if node.is_filter else None
        if below is not None:
            node = below
            continue
        extent = await node.block_status(offset, length)
        status = extent.status if top_status is None else extent.status & ~Status.ALLOCATED
        backing = node.backing
        if extent.status & (Status.ALLOCATED | Status.ZERO | Status.DATA) or backing is None:
            return Extent(extent.length, status, extent.file_offset)
        if offset >= backing.total_size:
            return Extent(extent.length, Status.ZERO)
        top_status = status
        node, length = backing, min(extent.length, backing.total_size - offset)
