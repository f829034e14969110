"""The ``raw`` format: the ``file`` child's bytes, optionally a window of them.

With ``offset`` and ``size`` the node shows ``size`` bytes of its child
starting at ``offset`` (QEMU's checks and error texts); without them it is
a plain pass-through. Everything (reads, writes, zero writes, discards,
flushes, block status) goes straight to the child, shifted by ``offset``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from vmd._generated.types import BlkdebugEvent
from vmd.block.drivers.file import check_force_share
from vmd.block.graph import BlockGraph, driver, node_name_of
from vmd.block.node import BlockNode, Extent
from vmd.block.perm import Perm, Role
from vmd.errors import QMPError

SECTOR_SIZE = 512


class RawNode(BlockNode):
    driver = "raw"
    strong_options = ("offset", "size")
    mutable_options = ("offset", "size")

    def __init__(self, node_name: str, file: BlockNode, *, offset: int = 0,
                 size: int | None = None, read_only: bool = False,
                 unmap: bool = False) -> None:
        super().__init__(node_name, read_only=read_only)
        self.offset = offset
        self.size = size
        self.has_size = size is not None
        self.unmap = unmap
        # Without a window raw is a filter of its file (QEMU's raw_open).
        role = Role.DATA if offset or size is not None else Role.FILTERED
        self.attach_child("file", file, role | Role.PRIMARY)

    def allocated_file_size(self) -> int | None:
        """The file's, window or not (raw_get_allocated_file_size)."""
        return self.file.allocated_file_size()

    async def open(self) -> None:
        """QEMU's raw_apply_options: the window must lie inside the file."""
        file = self.file
        if not self.read_only and file.read_only:
            raise QMPError("Block node is read-only")
        self.size = _window(file.total_size, self.offset, self.size)

    def reopen_prepare(self, options: dict[str, Any]) -> Callable[[], None]:
        """raw_reopen_prepare: ``offset`` and ``size`` may change (or go back
        to the whole file), checked as at open."""
        offset = int(options.pop("offset", 0))
        given = options.pop("size", None)
        size = _window(self.file.total_size, offset, None if given is None else int(given))

        def commit() -> None:
            self.offset, self.size, self.has_size = offset, size, given is not None
        return commit

    @property  # type: ignore[override]
    def grows_on_write(self) -> bool:
        """Without a size, writes past the end extend the file below."""
        return not self.has_size and bool(self.children) and self.file.grows_on_write

    @grows_on_write.setter
    def grows_on_write(self, value: bool) -> None:
        """Class default only; the answer comes from the window and the file."""

    def _check_writable(self, offset: int, length: int) -> None:
        """A write past a fixed size has no room (raw_adjust_offset's ENOSPC)."""
        if self.has_size and not self.read_only and offset + length > (self.size or 0):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super()._check_writable(offset, length)

    @property  # type: ignore[override]
    def total_size(self) -> int:
        """QEMU's raw_getlength: follows the file, within the window."""
        size = self.size or 0
        if not self.children:
            return size
        length = self.file.total_size
        if length < self.offset:
            return 0
        if self.has_size:
            return min(size, length - self.offset)
        return length - self.offset

    @total_size.setter
    def total_size(self, value: int) -> None:
        """Set by ``BlockNode.__init__``; the size comes from the file."""

    def format_info(self) -> dict[str, Any]:
        return {}

    def child_perm(self, edge: Any, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        """QEMU's raw_child_perm: write and resize only when a parent asks."""
        child_perm, child_shared = super().child_perm(edge, perm, shared)
        keep = Perm.WRITE | Perm.RESIZE
        return (child_perm & ~keep) | (perm & keep), child_shared

    # -- I/O: shift by the offset and hand to the file ------------------------

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        self.file.debug_event(BlkdebugEvent.READ_AIO)
        await self.file.read(offset + self.offset, buf)

    async def _co_write(self, offset: int, data: memoryview) -> None:
        self.file.debug_event(BlkdebugEvent.WRITE_AIO)
        await self.file.write(offset + self.offset, data)

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        await self.file.write_zeroes(offset + self.offset, length, may_unmap and self.unmap)

    async def _co_discard(self, offset: int, length: int) -> None:
        if self.unmap:
            await self.file.discard(offset + self.offset, length)

    async def _co_truncate(self, size: int) -> None:
        if self.has_size:
            raise QMPError("Cannot resize fixed-size raw disks")
        await self.file.truncate(size + self.offset)
        self.size = size

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        extent = await self.file.block_status(offset + self.offset, length)
        return Extent(extent.length, extent.status, offset + self.offset)


def _window(real_size: int, offset: int, size: int | None) -> int:
    """The size of the window at ``offset`` in a file of ``real_size``
    bytes (all of the rest without ``size``), with QEMU's checks."""
    if offset > real_size:
        raise QMPError(f"Offset ({offset}) cannot be greater than "
                       f"size of the containing file ({real_size})")
    if size is None:
        return real_size - offset
    if real_size - offset < size:
        raise QMPError(f"The sum of offset ({offset}) and size ({size}) "
                       f"has to be smaller or equal to the  actual size of the "
                       f"containing file ({real_size})")
    if size % SECTOR_SIZE:
        raise QMPError(f"Specified size is not multiple of {SECTOR_SIZE}")
    return size


@driver("raw")
async def open_raw(options: Any, graph: BlockGraph) -> BlockNode:
    check_force_share(options)
    node_name = node_name_of(options)
    child = await graph.open_child(options.u.file, options, "file")
    branch = options.u
    node = RawNode(node_name, child,
                   offset=int(getattr(branch, "offset", None) or 0),
                   size=getattr(branch, "size", None),
                   read_only=bool(getattr(options, "read_only", False)),
                   unmap=str(getattr(options, "discard", None) or "ignore") == "unmap")
    try:
        await node.open()
    except BaseException:
        node.detach_children()  # the graph closes the children it opened
        raise
    return node
