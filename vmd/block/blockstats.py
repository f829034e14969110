"""``query-blockstats`` (QEMU's block/qapi.c qmp_query_blockstats).

Per named or attached BlockBackend: its device, the accounting its users
did (``vmd.block.accounting``) and, for the node under it, the highest
offset written; below it the same for the node's primary data child
(``parent``) and its backing node, down the tree. With ``query-nodes``
each node of the graph on its own, with only its ``parent`` chain.
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import BlockStats
from vmd.block.accounting import node_stats
from vmd.block.backend import BlockBackend
from vmd.block.graph import block_graph
from vmd.block.node import BlockNode
from vmd.block.perm import Role


def qmp_query_blockstats(ctx: Any, query_nodes: bool | None) -> list[BlockStats]:
    graph = block_graph(ctx)
    if query_nodes:
        return [_node_stats(node, blk_level=False) for node in graph]
    return [_backend_stats(backend) for backend in graph.backends
            if backend.kind == "block-backend" and (backend.name or backend.device)]


def _backend_stats(backend: BlockBackend) -> BlockStats:
    node = backend.edge.child if backend.edge is not None else None
    stats = _node_stats(node, blk_level=True) if node is not None else BlockStats(stats=node_stats(0))
    stats.device = backend.name
    if backend.device:
        stats.qdev = backend.device
    stats.stats = backend.stats.to_qapi(node.wr_highest_offset if node is not None else 0)
    return stats


def _node_stats(top: BlockNode, *, blk_level: bool) -> BlockStats:
    """bdrv_query_bds_stats() of ``top`` and the nodes below it (``backing``
    at backend level only); a loop, not recursion: chains may be deep."""
    root = BlockStats(stats=node_stats(0))
    stack: list[tuple[BlockNode, BlockStats | None, str]] = [(top, None, "")]
    while stack:
        node, above, link = stack.pop()
        out = BlockStats(node_name=node.node_name, stats=node_stats(node.wr_highest_offset),
                         driver_specific=node.specific_stats())
        if above is None:
            root = out
        else:
            setattr(above, link, out)
        child = _data_child(node)
        if child is not None:
            stack.append((child, out, "parent"))
        if blk_level and node.backing is not None:
            stack.append((node.backing, out, "backing"))
    return root


def _data_child(node: BlockNode) -> BlockNode | None:
    """The primary child if it holds data (or is filtered), else the only
    data-holding child, else None."""
    primary = next((edge for edge in node.children.values() if edge.role & Role.PRIMARY), None)
    if primary is not None and primary.role & (Role.DATA | Role.FILTERED):
        return primary.child
    data = [edge.child for edge in node.children.values() if edge.role & Role.DATA]
    return data[0] if len(data) == 1 else None
