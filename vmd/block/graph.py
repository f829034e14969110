"""The named block nodes of a daemon and how they are opened and removed.

``blockdev-add`` options name their children either inline (a nested
``BlockdevOptions``) or by an existing node name; ``open_child`` resolves
both. Each driver module registers an opener with ``@driver("name")``:
``async def opener(options, graph) -> BlockNode``, where ``options`` is the
generated ``BlockdevOptions`` object (base members plus the driver's
branch in ``options.u``). Nodes belong to the event loop thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from vmd.block.node import BlockNode
from vmd.qmp.errors import QMPError

Opener = Callable[[Any, "BlockGraph"], Awaitable[BlockNode]]
_OPENERS: dict[str, Opener] = {}
_implicit_names = itertools.count(1)


def driver(*names: str) -> Callable[[Opener], Opener]:
    """Register the opener of driver ``names``."""
    def register(opener: Opener) -> Opener:
        for name in names:
            _OPENERS[name] = opener
        return opener
    return register


def _load_drivers() -> None:
    from vmd.block.drivers import load_all
    load_all()


def node_name_of(options: Any) -> str:
    """The node name given, or QEMU's style of implicit name (``#block123``)."""
    return options.node_name or f"#block{next(_implicit_names):03d}"


class BlockGraph:
    """All named nodes; the roots are what ``blockdev-add`` created."""

    def __init__(self) -> None:
        self._nodes: dict[str, BlockNode] = {}
        self.roots: list[BlockNode] = []

    def __iter__(self) -> Iterator[BlockNode]:
        return iter(list(self._nodes.values()))

    def get(self, node_name: str) -> BlockNode | None:
        return self._nodes.get(node_name)

    def find(self, node_name: str) -> BlockNode:
        node = self._nodes.get(node_name)
        if node is None:
            raise QMPError(f"Cannot find device='' nor node-name='{node_name}'")
        return node

    async def open(self, options: Any) -> BlockNode:
        """Open a node tree from ``BlockdevOptions`` and name its nodes."""
        _load_drivers()
        if options.node_name and options.node_name in self._nodes:
            raise QMPError(f"Duplicate nodes with node-name='{options.node_name}'")
        opener = _OPENERS.get(str(options.driver))
        if opener is None:
            raise QMPError(f"Driver '{options.driver}' is not supported by vmd")
        before = set(self._nodes)
        try:
            node = await opener(options, self)
        except BaseException:
            await self._forget_since(before)
            raise
        self._nodes[node.node_name] = node
        return node

    async def _forget_since(self, before: set[str]) -> None:
        """A failed open: close the children it opened, newest first."""
        for name in reversed([name for name in self._nodes if name not in before]):
            node = self._nodes.pop(name)
            node.detach_children()
            await node.close()

    def adopt(self, node: BlockNode, node_name: str | None = None) -> None:
        """Register a node opened outside ``open`` (and its new children).

        It gets ``node_name``, or an implicit ``#blockNNN`` name.
        """
        for child in node.children.values():
            if self._nodes.get(child.node_name) is not child:
                self.adopt(child)
        node.node_name = node_name or f"#block{next(_implicit_names):03d}"
        self._nodes[node.node_name] = node

    async def add(self, options: Any) -> BlockNode:
        """``blockdev-add``: open, and keep as a root."""
        if not options.node_name:
            raise QMPError("node-name is required at the top level of blockdev-add")
        node = await self.open(options)
        self.roots.append(node)
        return node

    async def open_child(self, ref: Any, parent: Any, role: str) -> BlockNode:
        """Resolve a ``BlockdevRef``: a node name or inline options.

        Inline children inherit the parent's unset options (``parent`` is
        the parent's ``BlockdevOptions``); a backing child is read-only
        unless it says otherwise, as in QEMU.
        """
        if isinstance(ref, str):
            return self.find(ref)
        if role == "backing" and ref.read_only is None:
            ref.read_only = True
        inherit_options(parent, ref)
        return await self.open(ref)

    async def remove(self, node_name: str) -> None:
        """``blockdev-del``: only roots that nobody uses."""
        node = self._nodes.get(node_name)
        if node is None:
            raise QMPError(f"Failed to find node with node-name='{node_name}'")
        if node not in self.roots:
            raise QMPError(f"Node {node_name} is not owned by the monitor")
        if node.users:
            raise QMPError(f"Node {node_name} is in use")
        if node.parents:
            raise QMPError(f"Block device {node_name} is in use")
        self.roots.remove(node)
        await self._close_tree(node)

    async def _close_tree(self, node: BlockNode) -> None:
        """Close ``node`` and the children that nothing else holds."""
        await node.close()
        del self._nodes[node.node_name]
        children = list(node.children.values())
        node.detach_children()
        for child in children:
            if not child.parents and child not in self.roots and not child.users:
                await self._close_tree(child)

    async def close_all(self) -> None:
        """Close everything, parents before the children they flush into."""
        while self.roots:
            top = next((node for node in self.roots if not node.parents), self.roots[0])
            self.roots.remove(top)
            await self._close_tree(top)


#: Options a child opened inline takes from its parent unless it sets them
#: (QEMU's bdrv_inherited_options; detect-zeroes is not inherited).
_INHERITED = ("read_only", "discard", "force_share", "auto_read_only")


def inherit_options(parent: Any, child: Any) -> None:
    """Fill the unset base options of an inline child from its parent."""
    for name in _INHERITED:
        if getattr(child, name, None) is None and getattr(parent, name, None) is not None:
            setattr(child, name, getattr(parent, name))
    parent_cache = getattr(parent, "cache", None)
    if parent_cache is None:
        return
    child_cache = getattr(child, "cache", None)
    if child_cache is None:
        child.cache = type(parent_cache)(direct=parent_cache.direct, no_flush=parent_cache.no_flush)
        return
    for name in ("direct", "no_flush"):
        if getattr(child_cache, name, None) is None:
            setattr(child_cache, name, getattr(parent_cache, name, None))
