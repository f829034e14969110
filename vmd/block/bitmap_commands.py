"""QMP commands on dirty bitmaps (QEMU's block/monitor/bitmap-qmp-cmds.c)
and their ``transaction`` actions (blockdev.c's block_dirty_bitmap_*).

Checks run in QEMU 7.2's order with its texts (compared with QEMU in
tests/test_dirty_bitmaps.py). The ``*_prepare`` functions do the checks
and the change and return what undoes it, so an action and the plain
command share one path. As in QEMU, the plain commands are not
one-action transactions (a transaction drains every node first, which
running jobs would show).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmd._generated.types import BlockDirtyBitmapSha256, TransactionActionKind
from vmd.block.dirty_bitmap import (
    Check,
    DirtyBitmap,
    create_bitmap,
    default_granularity,
    find_bitmap,
    release_bitmap,
)
from vmd.block.graph import BlockGraph, block_graph
from vmd.block.node import BlockNode
from vmd.block.transaction import Action, action
from vmd.errors import QMPError

Undo = Callable[[], None]


def lookup(graph: BlockGraph, node_name: str, name: str) -> tuple[BlockNode, DirtyBitmap]:
    """block_dirty_bitmap_lookup: the node (by device or node name) and its
    bitmap, or QEMU's error."""
    node = graph.find_bs(node_name)
    if node is None:
        raise QMPError(f"Node '{node_name}' not found")
    bitmap = find_bitmap(node, name)
    if bitmap is None:
        raise QMPError(f"Dirty bitmap '{name}' not found")
    return node, bitmap


# -- add ------------------------------------------------------------------------------

def add_prepare(graph: BlockGraph, node_name: str, name: str, granularity: int | None,
                persistent: bool | None, disabled: bool | None) -> Undo:
    if not name:
        raise QMPError("Bitmap name cannot be empty")
    node = graph.find_bs(node_name)
    if node is None:
        raise QMPError(f"Cannot find device='{node_name}' nor node-name='{node_name}'")
    if granularity is None:
        granularity = default_granularity(node)
    elif granularity < 512 or granularity & (granularity - 1):
        raise QMPError("Granularity must be power of 2 and at least 512")
    if persistent:
        node.can_store_new_bitmap(name, granularity)
    bitmap = create_bitmap(node, granularity, name)
    bitmap.disabled = bool(disabled)
    bitmap.persistent = bool(persistent)
    return lambda: release_bitmap(node, bitmap)


def qmp_block_dirty_bitmap_add(ctx: Any, node: str, name: str, granularity: int | None = None,
                               persistent: bool | None = None, disabled: bool | None = None) -> None:
    add_prepare(block_graph(ctx), node, name, granularity, persistent, disabled)


# -- remove -----------------------------------------------------------------------------

def remove_check(graph: BlockGraph, node_name: str, name: str) -> tuple[BlockNode, DirtyBitmap]:
    node, bitmap = lookup(graph, node_name, name)
    bitmap.check(Check.BUSY | Check.RO)
    return node, bitmap


async def _drop_stored(node: BlockNode, bitmap: DirtyBitmap) -> None:
    """A persistent bitmap's stored copy goes (the bitmap stays in memory)."""
    if bitmap.persistent and bitmap.name is not None:
        await node.remove_persistent_bitmap(bitmap.name)


async def remove(node: BlockNode, bitmap: DirtyBitmap) -> None:
    """Drop the bitmap, and its stored copy first if it is persistent."""
    await _drop_stored(node, bitmap)
    release_bitmap(node, bitmap)


async def qmp_block_dirty_bitmap_remove(ctx: Any, node: str, name: str) -> None:
    await remove(*remove_check(block_graph(ctx), node, name))


# -- clear, enable, disable -------------------------------------------------------------------

def clear_prepare(graph: BlockGraph, node_name: str, name: str) -> Undo:
    _, bitmap = lookup(graph, node_name, name)
    bitmap.check(Check.DEFAULT)
    saved = bitmap.copy_bits()
    bitmap.clear()
    return lambda: bitmap.restore_bits(saved)


def qmp_block_dirty_bitmap_clear(ctx: Any, node: str, name: str) -> None:
    clear_prepare(block_graph(ctx), node, name)


def enable_prepare(graph: BlockGraph, node_name: str, name: str, enable: bool) -> Undo:
    _, bitmap = lookup(graph, node_name, name)
    bitmap.check(Check.ALLOW_RO)
    was = bitmap.disabled
    bitmap.disabled = not enable

    def undo() -> None:
        bitmap.disabled = was
    return undo


def qmp_block_dirty_bitmap_enable(ctx: Any, node: str, name: str) -> None:
    enable_prepare(block_graph(ctx), node, name, True)


def qmp_block_dirty_bitmap_disable(ctx: Any, node: str, name: str) -> None:
    enable_prepare(block_graph(ctx), node, name, False)


# -- merge ------------------------------------------------------------------------------------

def _merge_source(graph: BlockGraph, node: BlockNode, ref: Any) -> DirtyBitmap:
    if isinstance(ref, str):
        source = find_bitmap(node, ref)
        if source is None:
            raise QMPError(f"Dirty bitmap '{ref}' not found")
        return source
    return lookup(graph, ref.node, ref.name)[1]


def _check_merge(target: DirtyBitmap, source: DirtyBitmap) -> None:
    """bdrv_merge_dirty_bitmap's checks of both sides."""
    target.check(Check.DEFAULT)
    source.check(Check.ALLOW_RO)
    if source.size != target.size:
        raise QMPError(f"Bitmaps are of different sizes (destination size is {target.size}, "
                       f"source size is {source.size}) and can't be merged")


def merge_prepare(graph: BlockGraph, node_name: str, target_name: str, bitmaps: list[Any]) -> Undo:
    """block_dirty_bitmap_merge: the sources are gathered into a scratch
    bitmap of the target's granularity first, so a bad source leaves the
    target untouched."""
    node, target = lookup(graph, node_name, target_name)
    target.check(Check.DEFAULT)
    scratch = DirtyBitmap(target.size, target.granularity)
    for ref in bitmaps:
        source = _merge_source(graph, node, ref)
        _check_merge(scratch, source)
        scratch.merge(source)
    _check_merge(target, scratch)
    saved = target.copy_bits()
    target.merge(scratch)
    return lambda: target.restore_bits(saved)


def qmp_block_dirty_bitmap_merge(ctx: Any, node: str, target: str, bitmaps: list[Any]) -> None:
    merge_prepare(block_graph(ctx), node, target, bitmaps)


def qmp_x_debug_block_dirty_bitmap_sha256(ctx: Any, node: str, name: str) -> BlockDirtyBitmapSha256:
    return BlockDirtyBitmapSha256(sha256=lookup(block_graph(ctx), node, name)[1].sha256())



# -- transaction actions (QEMU's block_dirty_bitmap_*_prepare/commit/abort) ----------------

class _BitmapAction(Action):
    """A bitmap action whose ``change`` does the work and returns its undo;
    bitmap actions refuse ``completion-mode: grouped``, as QEMU's."""

    undo: Undo | None = None

    async def prepare(self) -> None:
        self.check_completion_mode()
        self.undo = self.change(self.daemon.block, self.data)

    def change(self, graph: BlockGraph, data: Any) -> Undo:
        raise NotImplementedError

    async def abort(self) -> None:
        if self.undo is not None:
            self.undo()


@action(TransactionActionKind.BLOCK_DIRTY_BITMAP_ADD)
class AddAction(_BitmapAction):
    def change(self, graph: BlockGraph, data: Any) -> Undo:
        return add_prepare(graph, data.node, data.name, data.granularity, data.persistent, data.disabled)


@action(TransactionActionKind.BLOCK_DIRTY_BITMAP_CLEAR)
class ClearAction(_BitmapAction):
    def change(self, graph: BlockGraph, data: Any) -> Undo:
        return clear_prepare(graph, data.node, data.name)


@action(TransactionActionKind.BLOCK_DIRTY_BITMAP_ENABLE)
class EnableAction(_BitmapAction):
    def change(self, graph: BlockGraph, data: Any) -> Undo:
        return enable_prepare(graph, data.node, data.name, True)


@action(TransactionActionKind.BLOCK_DIRTY_BITMAP_DISABLE)
class DisableAction(_BitmapAction):
    def change(self, graph: BlockGraph, data: Any) -> Undo:
        return enable_prepare(graph, data.node, data.name, False)


@action(TransactionActionKind.BLOCK_DIRTY_BITMAP_MERGE)
class MergeAction(_BitmapAction):
    def change(self, graph: BlockGraph, data: Any) -> Undo:
        return merge_prepare(graph, data.node, data.target, data.bitmaps)


@action(TransactionActionKind.BLOCK_DIRTY_BITMAP_REMOVE)
class RemoveAction(Action):
    """The stored copy goes at once (an abort does not bring it back: the
    bitmap is stored again when the image closes, as in QEMU); the bitmap
    itself stays, busy, until the commit drops it."""

    found: tuple[BlockNode, DirtyBitmap] | None = None

    async def prepare(self) -> None:
        self.check_completion_mode()
        node, bitmap = remove_check(self.daemon.block, self.data.node, self.data.name)
        await _drop_stored(node, bitmap)
        bitmap.busy = True
        self.found = node, bitmap

    async def commit(self) -> None:
        assert self.found is not None
        node, bitmap = self.found
        bitmap.busy = False
        release_bitmap(node, bitmap)

    async def abort(self) -> None:
        if self.found is not None:
            self.found[1].busy = False
