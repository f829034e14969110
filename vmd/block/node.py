"""A block node: QEMU's BlockDriverState, as a Python object.

Every driver subclasses ``BlockNode``. All I/O methods are coroutines that
run on the event loop; the blocking system calls beneath them go to the
worker threads of ``vmd.block.aio``, so the loop never waits on a disk.
Reads fill a caller's buffer in place (``memoryview``), so data is copied
once, from the kernel into that buffer.

A node has children (``file`` for the protocol under a format, ``backing``
for the image below in a chain). Parents and users (a QMP job, an export, a
guest device) are recorded so that a node in use cannot be removed and a
node has at most one writer.

Thread ownership: nodes belong to the event loop thread. Only the bytes of
a buffer cross to a worker thread, for the duration of one system call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmd.block.limits import check_offset
from vmd.qmp.errors import QMPError


class Status(enum.IntFlag):
    """What ``block_status`` says about a range (QEMU's BDRV_BLOCK_*)."""

    DATA = 1        # reads come from this node (or its file), not below
    ZERO = 2        # reads return zeroes
    ALLOCATED = 4   # this node (not its backing chain) decides the content


@dataclass(frozen=True, slots=True)
class Extent:
    """The status of ``length`` bytes starting where the caller asked."""

    length: int
    status: Status
    #: Where the data lies in the ``file`` child, when it is plain there.
    file_offset: int | None = None


class BlockNode:
    """One node of the graph. Subclasses implement the ``_co_*`` hooks."""

    driver = ""
    #: Whether writes past the end extend the node (protocol drivers).
    grows_on_write = False

    def __init__(self, node_name: str, *, read_only: bool = False) -> None:
        self.node_name = node_name
        self.read_only = read_only
        self.children: dict[str, BlockNode] = {}
        self.parents: list[tuple[BlockNode, str]] = []
        self.users: list[str] = []
        self.writers: list[str] = []
        self.total_size = 0
        #: Requests must be multiples of this (O_DIRECT files: 512 or 4096).
        self.request_alignment = 1
        self.write_threshold = 0
        #: The backing file name recorded in the image (formats with chains).
        self.backing_file: str | None = None
        self.backing_fmt: str | None = None
        #: Called as (node, threshold, end of write) when a write crosses it.
        self.on_threshold: Callable[[BlockNode, int, int], None] | None = None

    # -- graph -------------------------------------------------------------

    def attach_child(self, role: str, child: BlockNode) -> None:
        self.children[role] = child
        child.parents.append((self, role))

    def detach_children(self) -> None:
        for role, child in self.children.items():
            child.parents.remove((self, role))
        self.children.clear()

    @property
    def file(self) -> BlockNode:
        return self.children["file"]

    @property
    def backing(self) -> BlockNode | None:
        return self.children.get("backing")

    def add_user(self, user: str, *, write: bool) -> None:
        """Record a user; refuse a second writer, as QEMU's permissions do."""
        if write:
            if self.read_only:
                raise QMPError("Block node is read-only")
            if self.writers:
                raise QMPError(
                    f"Conflicts with use by {self.writers[0]} as 'root', "
                    f"which does not allow 'write' on {self.node_name}")
            self.writers.append(user)
        self.users.append(user)

    def remove_user(self, user: str) -> None:
        if user in self.users:
            self.users.remove(user)
        if user in self.writers:
            self.writers.remove(user)

    # -- life cycle ----------------------------------------------------------

    async def open(self) -> None:
        """Read metadata, check it; raise QMPError with QEMU's text."""

    async def close(self) -> None:
        """Flush what must be flushed and release host resources."""

    # -- I/O -------------------------------------------------------------------

    async def read(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the node's content at ``offset``."""
        self._check_range(offset, len(buf))
        await self._co_read(offset, buf)

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        self._check_writable(offset, len(data))
        await self._co_write(offset, memoryview(data))
        self._note_write(offset + len(data))

    async def write_zeroes(self, offset: int, length: int,
                           may_unmap: bool = False) -> None:
        self._check_writable(offset, length)
        await self._co_write_zeroes(offset, length, may_unmap)
        self._note_write(offset + length)

    async def discard(self, offset: int, length: int) -> None:
        self._check_writable(offset, length)
        await self._co_discard(offset, length)

    async def flush(self) -> None:
        await self._co_flush()

    async def truncate(self, size: int) -> None:
        check_offset(size)
        if self.read_only:
            raise QMPError("Block node is read-only")
        await self._co_truncate(size)

    async def block_status(self, offset: int, length: int) -> Extent:
        """Status of the range starting at ``offset`` (maybe shorter)."""
        self._check_range(offset, length)
        return await self._co_block_status(offset, length)

    # -- description -------------------------------------------------------

    def filename(self) -> str:
        """The image's file name as QEMU reports it."""
        file = self.children.get("file")
        return file.filename() if file is not None else ""

    def format_info(self) -> dict[str, Any]:
        """Driver-specific members for ``query-named-block-nodes``."""
        return {}

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
        for child in self.children.values():
            await child.flush()

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

    def _note_write(self, end: int) -> None:
        """Fire the write threshold when a write crosses it (once)."""
        if self.write_threshold and end > self.write_threshold:
            threshold, self.write_threshold = self.write_threshold, 0
            if self.on_threshold is not None:
                self.on_threshold(self, threshold, end)


async def block_status_above(node: BlockNode, offset: int, length: int) -> Extent:
    """What a reader of ``node`` sees at ``offset``, down the backing chain.

    A range the node leaves unallocated reads from its backing node (and as
    zeroes past the backing node's end), as QEMU's bdrv_block_status_above.
    """
    extent = await node.block_status(offset, length)
    backing = node.backing
    if extent.status & (Status.ALLOCATED | Status.ZERO | Status.DATA) or backing is None:
        return extent
    if offset >= backing.total_size:
        return Extent(extent.length, Status.ZERO)
    below = await block_status_above(backing, offset, min(extent.length, backing.total_size - offset))
    return Extent(below.length, below.status & ~Status.ALLOCATED, below.file_offset)
