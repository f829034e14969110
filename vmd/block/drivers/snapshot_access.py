"""The ``snapshot-access`` driver (QEMU 7.2's block/snapshot-access.c).

A node over a ``copy-before-write`` filter (its ``file`` child) that reads
the filter's point-in-time snapshot instead of its current data: what image
fleecing exports over NBD while writes go on through the filter. It takes no
permissions on its child (the filter guards the data itself); writes are
refused, and a discard tells the filter the range is no longer needed.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from vmd.block.drivers.cbw import CopyBeforeWriteNode
from vmd.block.edge import Edge
from vmd.block.filename import NamesOf
from vmd.block.graph import BlockGraph, driver, node_name_of
from vmd.block.node import BlockNode, Extent
from vmd.block.perm import ALL, NONE, Perm, Role


def _not_supported() -> OSError:
    return OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))


class SnapshotAccessNode(BlockNode):
    driver = "snapshot-access"
    supports_reopen = False

    def __init__(self, node_name: str, file: BlockNode, *, read_only: bool = False, unmap: bool = False) -> None:
        super().__init__(node_name, read_only=read_only)
        self.attach_child("file", file, Role.DATA | Role.PRIMARY)
        self.total_size = file.total_size
        #: ``discard=unmap``: discards reach the filter (else they are dropped).
        self.unmap = unmap

    def exact_filename(self, options: dict[str, Any], names_of: NamesOf) -> str:
        """snapshot_access_refresh_filename: the filter's name."""
        return names_of(self.file).filename

    def _snapshot(self) -> CopyBeforeWriteNode:
        file = self.file
        if not isinstance(file, CopyBeforeWriteNode):
            raise _not_supported()
        return file

    def child_perm(self, edge: Edge, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        return NONE, ALL

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        await self._snapshot().snapshot_read(offset, buf)

    async def _co_write(self, offset: int, data: memoryview) -> None:
        raise _not_supported()

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        raise _not_supported()

    async def _co_discard(self, offset: int, length: int) -> None:
        if self.unmap:
            await self._snapshot().snapshot_discard(offset, length)

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        return await self._snapshot().snapshot_block_status(offset, length)

    async def _co_flush(self) -> None:
        """Nothing of the snapshot is written here."""


@driver("snapshot-access")
async def open_snapshot_access(options: Any, graph: BlockGraph) -> BlockNode:
    name = node_name_of(options)
    file = await graph.open_child(options.u.file, options, "file")
    return SnapshotAccessNode(name, file, read_only=bool(options.read_only),
                              unmap=str(getattr(options, "discard", None) or "ignore") == "unmap")
