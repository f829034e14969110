"""QMP commands of the block layer (block-core.json), QEMU's blockdev.c.

Handlers reach the graph as ``ctx.daemon.block``. Replies are built as
plain wire dictionaries in QEMU's shapes (``BlockDeviceInfo``,
``ImageInfo``, ``XDbgBlockGraph``).
"""

from __future__ import annotations

import os
from typing import Any

from vmd.block import aio
from vmd.block.create import create_empty_file
from vmd.block.graph import BlockGraph
from vmd.block.node import BlockNode
from vmd.qmp.errors import QMPError


def _graph(ctx: Any) -> BlockGraph:
    graph: BlockGraph = ctx.daemon.block
    return graph


async def qmp_blockdev_add(ctx: Any, options: Any) -> None:
    await _graph(ctx).add(options)


async def qmp_blockdev_del(ctx: Any, node_name: str) -> None:
    await _graph(ctx).remove(node_name)


def qmp_query_named_block_nodes(ctx: Any, flat: bool | None) -> list[dict[str, Any]]:
    return [device_info(node, flat=bool(flat)) for node in _graph(ctx)]


def qmp_query_block(ctx: Any) -> list[dict[str, Any]]:
    # Only named BlockBackends (guest devices) are listed; none exist yet.
    return []


def device_info(node: BlockNode, *, flat: bool) -> dict[str, Any]:
    """``BlockDeviceInfo`` of one node."""
    depth, below = 0, node.backing
    while below is not None and not flat:  # QEMU reports 0 in flat mode
        depth, below = depth + 1, below.backing
    info: dict[str, Any] = {
        "file": node.filename(), "node-name": node.node_name, "ro": node.read_only, "drv": node.driver,
        "encrypted": False, "detect_zeroes": "off", "backing_file_depth": depth,
        "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "write_threshold": node.write_threshold,
        "cache": {"writeback": True, "direct": getattr(node, "direct", False),
                  "no-flush": getattr(node, "no_flush", False)},
        "image": image_info(node, recurse=not flat),
    }
    if node.backing_file:
        info["backing_file"] = node.backing_file
    return info


def image_info(node: BlockNode, *, recurse: bool) -> dict[str, Any]:
    """``ImageInfo`` of a node (with the backing chain unless ``flat``)."""
    info: dict[str, Any] = {"filename": node.filename(), "format": node.driver, "virtual-size": node.total_size}
    actual = _actual_size(node)
    if actual is not None:
        info["actual-size"] = actual
    info.update(node.format_info())
    backing = node.backing
    if node.backing_file:
        info["backing-filename"] = node.backing_file
        info["full-backing-filename"] = backing.filename() if backing is not None else node.backing_file
        if node.backing_fmt:
            info["backing-filename-format"] = node.backing_fmt
    if recurse and backing is not None:
        info["backing-image"] = image_info(backing, recurse=True)
    return info


def _actual_size(node: BlockNode) -> int | None:
    """Allocated bytes of the file under the node (st_blocks), as QEMU."""
    path = node.filename()
    try:
        return os.stat(path).st_blocks * 512 if path else None
    except OSError:
        return None


def qmp_x_debug_query_block_graph(ctx: Any) -> dict[str, Any]:
    """Nodes and parent-to-child edges, QEMU's XDbgBlockGraph."""
    graph = _graph(ctx)
    nodes = list(graph)
    ids = {id(node): index for index, node in enumerate(nodes)}
    result_nodes = [{"id": ids[id(node)], "type": "block-driver", "name": node.node_name} for node in nodes]
    edges = []
    for node in nodes:
        for role, child in node.children.items():
            edges.append({"parent": ids[id(node)], "child": ids[id(child)], "name": role,
                          "perm": ["consistent-read"] + (["write"] if not node.read_only else []),
                          "shared-perm": ["consistent-read", "write-unchanged", "resize"]})
    return {"nodes": result_nodes, "edges": edges}


async def qmp_block_resize(ctx: Any, device: str | None, node_name: str | None, size: int) -> None:
    if (device is None) == (node_name is None):
        raise QMPError("Need exactly one of 'device' and 'node-name'")
    graph = _graph(ctx)
    node = graph.find(node_name) if node_name is not None else graph.find(device or "")
    if size < 0:
        raise QMPError("Parameter 'size' expects a >0 size")
    await node.truncate(size)


async def qmp_blockdev_snapshot(ctx: Any, node: str, overlay: str) -> None:
    """Put ``overlay`` (opened without backing) on top of ``node``."""
    graph = _graph(ctx)
    base = graph.find(node)
    top = graph.find(overlay)
    if top.backing is not None:
        raise QMPError(f"The overlay '{overlay}' already has a backing image")
    if top.read_only:
        raise QMPError(f"The overlay '{overlay}' is not writable")
    if base in graph.roots:
        graph.roots.remove(base)
    top.attach_child("backing", base)
    top.backing_file = base.filename()
    top.backing_fmt = base.driver


async def qmp_blockdev_snapshot_sync(ctx: Any, device: str | None, node_name: str | None, snapshot_file: str,
                                     snapshot_node_name: str | None, format: str | None, mode: Any) -> None:
    """Create a qcow2 overlay file over a node and make it the new top."""
    from vmd.block.drivers.file import FileNode
    from vmd.block.drivers.qcow2 import Qcow2Node, create_qcow2
    graph = _graph(ctx)
    base = graph.find(node_name or device or "")
    if (format or "qcow2") != "qcow2":
        raise QMPError(f"Unsupported snapshot format '{format}'; vmd creates qcow2 overlays")
    if snapshot_node_name and graph.get(snapshot_node_name) is not None:
        raise QMPError(f"Duplicate nodes with node-name='{snapshot_node_name}'")
    if str(mode or "absolute-paths") == "absolute-paths":
        await aio.run(create_empty_file, snapshot_file, 0)
        file = FileNode("", snapshot_file)
        await file.open()
        await create_qcow2(file, base.total_size, backing_file=base.filename(), backing_fmt=base.driver)
        await file.close()
    file = FileNode("", snapshot_file)
    await file.open()
    overlay = Qcow2Node("", file)
    await overlay.open()
    graph.adopt(file)
    graph.adopt(overlay, snapshot_node_name)
    overlay.set_backing(base)
    if base in graph.roots:
        graph.roots[graph.roots.index(base)] = overlay


def qmp_query_block_jobs(ctx: Any) -> list[Any]:
    # Block jobs (commit, stream, mirror, backup) come with the jobs issue.
    return []
