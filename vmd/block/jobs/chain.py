"""Walking a backing chain for the block jobs (QEMU's bdrv_is_allocated_above
and friends). Loops, not recursion: chains may be deep. Filters are
passed through, as QEMU skips them."""

from __future__ import annotations

from vmd.block.node import BlockNode, Status
from vmd.errors import QMPError


def skip_filters(node: BlockNode | None) -> BlockNode | None:
    """The first node at or below ``node`` that is not a filter."""
    while node is not None and node.is_filter:
        node = node.filtered()
    return node


def backing_of(node: BlockNode) -> BlockNode | None:
    """The next image of the chain below ``node`` (filters skipped)."""
    node_ = skip_filters(node)
    return skip_filters(node_.backing) if node_ is not None else None


def chain_contains(top: BlockNode, node: BlockNode) -> bool:
    """Whether ``node`` is ``top`` or an image (or filter) below it."""
    below: BlockNode | None = top
    while below is not None:
        if below is node:
            return True
        below = below.filtered()
    return False


def chain_between(top: BlockNode, base: BlockNode | None) -> list[BlockNode]:
    """``top`` and the nodes below it down to, not including, ``base``."""
    nodes: list[BlockNode] = []
    node: BlockNode | None = top
    while node is not None and node is not base:
        nodes.append(node)
        node = node.filtered()
    return nodes


def overlay_of(active: BlockNode, node: BlockNode) -> BlockNode | None:
    """The node whose backing (or filtered) child is ``node`` on the chain
    from ``active`` (bdrv_find_overlay), or None when ``node`` is on top."""
    above: BlockNode | None = None
    below: BlockNode | None = active
    while below is not None and below is not node:
        above, below = below, below.filtered()
    if below is None:
        raise QMPError(f"'{node.node_name}' is not in this backing file chain")
    return above


async def allocated_above(top: BlockNode, base: BlockNode | None, offset: int,
                          length: int) -> tuple[bool, int]:
    """Whether an image from ``top`` down to, not including, ``base``
    decides the content at ``offset``; and for how many bytes that holds.
    Past the end of an image below ``top`` the walk stops: that image
    decides there (it reads as zeroes, whatever lies below), as QEMU's
    bdrv_co_common_block_status_above counts it allocated."""
    n = length
    node = skip_filters(top)
    while node is not None and node is not base:
        if offset >= node.total_size:
            return node is not skip_filters(top), n
        extent = await node.block_status(offset, min(n, node.total_size - offset))
        n = min(n, extent.length)
        if extent.status & Status.ALLOCATED:
            return True, n
        node = backing_of(node)
        if base is not None and node is skip_filters(base):
            break
    return False, n
