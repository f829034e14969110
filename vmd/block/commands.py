"""QMP commands of the block layer (block-core.json), QEMU's blockdev.c.

Handlers reach the graph as ``ctx.daemon.block``. Replies of the node
queries are wire dictionaries in QEMU's shapes (``BlockDeviceInfo``,
``ImageInfo``); the graph is returned as the generated ``XDbgBlockGraph``.
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import (
    BlockdevSnapshot,
    BlockdevSnapshotSync,
    NewImageMode,
    TransactionActionKind,
    XDbgBlockGraph,
    XDbgBlockGraphEdge,
    XDbgBlockGraphNode,
    XDbgBlockGraphNodeType,
)
from vmd.block.backend import BlockBackend
from vmd.block.dirty_bitmap import DirtyBitmap
from vmd.block.filename import absolute
from vmd.block.graph import block_graph
from vmd.block.io_limits import limits_info
from vmd.block.node import BlockNode
from vmd.block.perm import ALL, Perm, perm_qapi
from vmd.block.reopen import ReopenQueue, flatten
from vmd.block.transaction import run_action
from vmd.errors import QMPError


async def qmp_blockdev_add(ctx: Any, options: Any) -> None:
    await block_graph(ctx).add(options)


async def qmp_blockdev_reopen(ctx: Any, options: list[Any]) -> None:
    """All the nodes named, reopened in one transaction."""
    graph = block_graph(ctx)
    queue = ReopenQueue()
    for item in options:
        if item.node_name is None:
            raise QMPError("node-name not specified")
        node = graph.get(item.node_name)
        if node is None:
            raise QMPError(f"Failed to find node with node-name='{item.node_name}'")
        queue.add(node, flatten(item), keep_old=False)
    await queue.run(graph)


async def qmp_blockdev_del(ctx: Any, node_name: str) -> None:
    await block_graph(ctx).remove(node_name)


def qmp_query_named_block_nodes(ctx: Any, flat: bool | None) -> list[dict[str, Any]]:
    """Every named node, newest first (QEMU prepends each to its list)."""
    nodes = sorted(block_graph(ctx), key=lambda node: node.created, reverse=True)
    return [device_info(node, flat=bool(flat)) for node in nodes]


def qmp_query_block(ctx: Any) -> list[dict[str, Any]]:
    """``BlockInfo`` of every named backend and of every guest device's, oldest first."""
    return [_block_info(backend) for backend in block_graph(ctx).backends
            if backend.kind == "block-backend" and (backend.name or backend.device)]


def _block_info(backend: BlockBackend) -> dict[str, Any]:
    info: dict[str, Any] = {"device": backend.name, "locked": False, "removable": backend.device is None,
                            "type": "unknown"}
    if backend.device is not None:
        info["qdev"] = backend.device
        info["io-status"] = backend.iostatus
    if backend.edge is not None:
        inserted = device_info(backend.node, flat=False)
        inserted["cache"]["writeback"] = backend.write_cache
        inserted.update(limits_info(backend))
        info["inserted"] = inserted
    return info


def device_info(node: BlockNode, *, flat: bool) -> dict[str, Any]:
    """``BlockDeviceInfo`` of one node."""
    depth, below = 0, node.filtered()
    while below is not None and not flat:  # QEMU reports 0 in flat mode
        depth, below = depth + 1, below.filtered()
    info: dict[str, Any] = {
        "file": node.filename(), "node-name": node.node_name, "ro": node.read_only, "drv": node.driver,
        "encrypted": False, "detect_zeroes": node.detect_zeroes, "backing_file_depth": depth,
        "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "write_threshold": node.write_threshold,
        "cache": {"writeback": True, "direct": getattr(node, "direct", False),
                  "no-flush": getattr(node, "no_flush", False)},
        "image": image_info(node, recurse=not flat),
    }
    backing = node.backing
    if backing is not None and not node.is_filter:  # bdrv_cow_bs: the backing node's name
        info["backing_file"] = backing.filename()
    if node.dirty_bitmaps:
        info["dirty-bitmaps"] = [bitmap_info(bitmap) for bitmap in node.dirty_bitmaps]
    return info


def bitmap_info(bitmap: DirtyBitmap) -> dict[str, Any]:
    """``BlockDirtyInfo`` (bdrv_query_dirty_bitmaps)."""
    info: dict[str, Any] = {"recording": bitmap.recording, "persistent": bitmap.persistent, "busy": bitmap.busy,
                            "granularity": bitmap.granularity, "count": bitmap.count()}
    if bitmap.name is not None:
        info["name"] = bitmap.name
    if bitmap.inconsistent:
        info["inconsistent"] = True
    return info


def image_info(node: BlockNode, *, recurse: bool) -> dict[str, Any]:
    """``ImageInfo`` of a node, with the backing chain nested in it unless
    ``flat`` (built in a loop: chains may be thousands deep)."""
    top: dict[str, Any] = {}
    above: dict[str, Any] | None = None
    below: BlockNode | None = node
    while below is not None:
        info = _one_image_info(below)
        if above is None:
            top = info
        else:
            above["backing-image"] = info
        above, below = info, below.filtered() if recurse else None
    return top


def _one_image_info(node: BlockNode) -> dict[str, Any]:
    info: dict[str, Any] = {"filename": node.filename(), "format": node.driver, "virtual-size": node.reported_size()}
    actual = node.allocated_file_size()
    if actual is not None:
        info["actual-size"] = actual
    info.update(node.format_info())
    if node.backing_file:
        info["backing-filename"] = node.backing_file
        full = absolute(node, node.backing_file)
        if full is not None:
            info["full-backing-filename"] = full
        if node.backing_fmt:
            info["backing-filename-format"] = node.backing_fmt
    return info


def qmp_x_debug_query_block_graph(ctx: Any) -> XDbgBlockGraph:
    """Users, nodes and every edge with its permissions (XDbgBlockGraph).

    As QEMU: ids count from 1 over the users, then the nodes; both lists
    come out newest first because QEMU builds them by prepending.
    """
    graph = block_graph(ctx)
    holders: list[Any] = list(graph.backends)
    nodes = list(graph)
    ids = {id(item): number for number, item in enumerate(holders + nodes, start=1)}
    out_nodes = [XDbgBlockGraphNode(id=ids[id(holder)], type=XDbgBlockGraphNodeType(holder.kind),
                                    name=holder.graph_name) for holder in holders]
    out_nodes += [XDbgBlockGraphNode(id=ids[id(node)], type=XDbgBlockGraphNodeType.BLOCK_DRIVER, name=node.node_name)
                  for node in nodes]
    edges = [holder.edge for holder in holders if holder.edge is not None]
    edges += [edge for node in nodes for edge in reversed(node.children.values())]
    out_edges = [XDbgBlockGraphEdge(parent=ids[id(edge.parent)], child=ids[id(edge.child)], name=edge.name,
                                    perm=perm_qapi(edge.perm), shared_perm=perm_qapi(edge.shared))
                 for edge in edges if id(edge.child) in ids]
    return XDbgBlockGraph(nodes=out_nodes[::-1], edges=out_edges[::-1])


async def qmp_block_resize(ctx: Any, device: str | None, node_name: str | None, size: int) -> None:
    graph = block_graph(ctx)
    node = graph.lookup(device, node_name)
    if size < 0:
        raise QMPError("Parameter 'size' expects a >0 size")
    # As QEMU: a short-lived user that holds "resize" for the call.
    backend = graph.backend(Perm.RESIZE, ALL)
    backend.attach(node)
    try:
        await node.truncate(size)
    finally:
        backend.detach()


async def qmp_blockdev_snapshot(ctx: Any, node: str, overlay: str) -> None:
    """Put an existing overlay (opened without backing) on top of ``node``."""
    await run_action(ctx.daemon, TransactionActionKind.BLOCKDEV_SNAPSHOT,
                     BlockdevSnapshot(node=node, overlay=overlay))


async def qmp_blockdev_snapshot_sync(ctx: Any, device: str | None, node_name: str | None, snapshot_file: str,
                                     snapshot_node_name: str | None, format: str | None,
                                     mode: NewImageMode | None) -> None:
    """Create a qcow2 overlay file over a node, open it, make it the new top."""
    await run_action(ctx.daemon, TransactionActionKind.BLOCKDEV_SNAPSHOT_SYNC, BlockdevSnapshotSync(
        device=device, node_name=node_name, snapshot_file=snapshot_file,
        snapshot_node_name=snapshot_node_name, format=format, mode=mode))
