"""The ``throttle`` filter (QEMU's block/throttle.c).

Its reads and writes wait for the limits of the ``throttle-group`` it
names, as one member of that group (``vmd.block.throttle_group``, shared
with BlockBackends that have I/O limits). A drained section over the node
or below it lets waiting requests go at once and stops throttling until it
ends, as QEMU's throttle_co_drain_begin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmd.block.graph import BlockGraph, driver, node_name_of
from vmd.block.node import BlockNode, Extent
from vmd.block.perm import Role
from vmd.block.throttle_group import GROUPS, ThrottleGroupMember
from vmd.errors import QMPError


class ThrottleNode(BlockNode):
    """A filter whose reads and writes wait for their group's limits."""

    driver = "throttle"
    is_filter = True
    strong_options = ("throttle-group",)
    mutable_options = ("throttle-group",)

    def __init__(self, node_name: str, file: BlockNode, group: str, *, read_only: bool = False) -> None:
        super().__init__(node_name, read_only=read_only)
        self.attach_child("file", file, Role.FILTERED | Role.PRIMARY)
        #: This node's place in the group.
        self.member = ThrottleGroupMember()
        self.member.join(group)

    def reopen_prepare(self, options: dict[str, Any]) -> Callable[[], None]:
        """throttle_reopen_prepare: the node may move to another group."""
        name = str(options.pop("throttle-group", None))
        _check_group(name)

        def commit() -> None:
            self.member.leave()
            self.member.join(name)
        return commit

    @property  # type: ignore[override]
    def total_size(self) -> int:
        return self.file.total_size if self.children else 0

    @total_size.setter
    def total_size(self, value: int) -> None:
        """Set by ``BlockNode.__init__``; the size is the file's."""

    @property
    def grows_on_write(self) -> bool:
        """Over a file, a format's writes past the end grow it through this node."""
        return bool(self.children) and self.file.grows_on_write

    @grows_on_write.setter
    def grows_on_write(self, value: bool) -> None:
        """Never set: it is the file's."""

    def drain_begin(self) -> None:
        self.member.drain_begin()

    def drain_end(self) -> None:
        self.member.drain_end()

    # -- I/O -----------------------------------------------------------------------

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        await self.member.intercept(False, len(buf))
        await self.file.read(offset, buf)

    async def _co_write(self, offset: int, data: memoryview) -> None:
        await self.member.intercept(True, len(data))
        await self.file.write(offset, data)

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        await self.member.intercept(True, length)
        await self.file.write_zeroes(offset, length, may_unmap)

    async def _co_discard(self, offset: int, length: int) -> None:
        await self.member.intercept(True, length)
        await self.file.discard(offset, length)

    async def _co_flush(self) -> None:
        await self.file.flush()

    async def _co_truncate(self, size: int) -> None:
        await self.file.truncate(size)

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        return await self.file.block_status(offset, length)

    async def close(self) -> None:
        self.member.leave()


def _check_group(name: str) -> None:
    if name not in GROUPS:
        raise QMPError(f"Throttle group '{name}' does not exist")


@driver("throttle")
async def open_throttle(options: Any, graph: BlockGraph) -> BlockNode:
    """``driver: throttle``: the group must exist already."""
    branch = options.u
    _check_group(branch.throttle_group)
    file = await graph.open_child(branch.file, options, "file")
    return ThrottleNode(node_name_of(options), file, branch.throttle_group, read_only=bool(options.read_only))

