"""The ``copy-on-read`` filter (QEMU's block/copy-on-read.c).

A filter node with one child, ``file``: everything passes through, except
that a read of a range its child does not hold itself (the data comes from
the backing chain below the child) also writes that data into the child, so
the next read finds it there. The write changes no guest-visible data, which
is why the filter asks its child only for "write unchanged" beyond what its
own users ask (``child_perm``).

Filters are skipped where QEMU skips them: block status over a chain, the
bottom of a chain, the depth of a chain. The job filters (commit_top,
mirror_top, copy-before-write) are built the same way.
"""

from __future__ import annotations

from typing import Any

from vmd.block.edge import Edge
from vmd.block.graph import BlockGraph, driver, node_name_of
from vmd.block.node import BlockNode, Extent, Status
from vmd.block.perm import Perm, Role
from vmd.errors import QMPError


class CopyOnReadNode(BlockNode):
    driver = "copy-on-read"
    is_filter = True

    def __init__(self, node_name: str, file: BlockNode, *, read_only: bool = False) -> None:
        super().__init__(node_name, read_only=read_only)
        self.attach_child("file", file, Role.FILTERED | Role.PRIMARY)

    @property  # type: ignore[override]
    def total_size(self) -> int:
        return self.file.total_size if self.children else 0

    @total_size.setter
    def total_size(self, value: int) -> None:
        """Set by ``BlockNode.__init__``; the size is the child's."""

    def child_perm(self, edge: Edge, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        """What the users need, and "write unchanged" for the copies."""
        return perm | Perm.WRITE_UNCHANGED, shared

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        file = self.file
        done = 0
        while done < len(buf):
            extent = await file.block_status(offset + done, len(buf) - done)
            piece = buf[done:done + extent.length]
            await file.read(offset + done, piece)
            if not extent.status & Status.ALLOCATED and file.backing is not None and not self.read_only:
                await file.write(offset + done, piece)
            done += extent.length

    async def _co_write(self, offset: int, data: memoryview) -> None:
        await self.file.write(offset, data)

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        await self.file.write_zeroes(offset, length, may_unmap)

    async def _co_discard(self, offset: int, length: int) -> None:
        await self.file.discard(offset, length)

    async def _co_truncate(self, size: int) -> None:
        await self.file.truncate(size)

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        return await self.file.block_status(offset, length)


@driver("copy-on-read")
async def open_cor(options: Any, graph: BlockGraph) -> BlockNode:
    if getattr(options.u, "bottom", None) is not None:
        raise QMPError("copy-on-read option 'bottom' is not supported by vmd")
    name = node_name_of(options)
    child = await graph.open_child(options.u.file, options, "file")
    return CopyOnReadNode(name, child, read_only=bool(options.read_only))
