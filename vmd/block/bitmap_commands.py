"""QMP commands on dirty bitmaps (QEMU's block/monitor/bitmap-qmp-cmds.c).

Checks run in QEMU 7.2's order with its texts (compared with QEMU in
tests/test_dirty_bitmaps.py). Each command is also a transaction action;
the ``*_prepare`` functions do the checks and the change and return what
undoes it, so ``transaction`` and the plain command share one path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmd._generated.types import BlockDirtyBitmapSha256
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
from vmd.errors import QMPError

Undo = Callable[[], None]


def lookup(graph: BlockGraph, node_name: str, name: str) -> tuple[BlockNode, DirtyBitmap]:
    """block_dirty_bitmap_lookup: the node and its bitmap, or QEMU's error."""
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


async def remove(node: BlockNode, bitmap: DirtyBitmap) -> None:
    """Drop the bitmap, and its stored copy first if it is persistent."""
    if bitmap.persistent and bitmap.name is not None:
        await node.remove_persistent_bitmap(bitmap.name)
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

