"""The qcow2 format driver (package: format, cache, refcount, node, create)."""

from __future__ import annotations

from typing import Any

from vmd.block.drivers.qcow2.create import create_qcow2
from vmd.block.drivers.qcow2.node import Qcow2Node, open_chain, open_image
from vmd.block.graph import BlockGraph, driver, node_name_of
from vmd.block.node import BlockNode
from vmd.errors import QMPError
from vmd.qapi_runtime import JSON_NULL

__all__ = ["Qcow2Node", "create_qcow2", "open_image", "open_qcow2"]


@driver("qcow2")
async def open_qcow2(options: Any, graph: BlockGraph) -> BlockNode:
    """``blockdev-add`` ``driver: qcow2``: file child, then the backing chain.

    ``backing`` absent (None) opens the file named in the header, read-only,
    with the format from the backing-format extension (probed otherwise);
    ``backing`` naming a node or nested options uses that node."""
    u = options.u
    name = node_name_of(options)
    file = await graph.open_child(u.file, options, "file")
    lazy = getattr(u, "lazy_refcounts", None)
    node = Qcow2Node(name, file, read_only=bool(options.read_only), lazy_refcounts=lazy)
    try:
        await node.open()
        backing_ref = u.backing
        if backing_ref is JSON_NULL:
            pass  # "backing": null: no backing file, whatever the header says
        elif backing_ref is not None:
            node.set_backing(await graph.open_child(backing_ref, options, "backing"))
        elif node.backing_file:
            filename = file.filename()
            if not filename:
                raise QMPError("Cannot use relative backing file names for a file without a file name")
            await open_chain(node, filename, graph.adopt)
    except BaseException:
        node.detach_children()  # the graph closes the children it opened
        raise
    return node
