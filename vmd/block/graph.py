"""The named block nodes of a daemon and how they are opened and removed.

``blockdev-add`` options name their children either inline (a nested
``BlockdevOptions``) or by an existing node name; ``open_child`` resolves
both. Each driver module registers an opener with ``@driver("name")``:
``async def opener(options, graph) -> BlockNode``, where ``options`` is the
generated ``BlockdevOptions`` object (base members plus the driver's
branch in ``options.u``). The edges between nodes and their permissions
are ``vmd.block.edge``'s; this module names nodes, knows which ones the
monitor owns, and opens and closes trees. Nodes belong to the event loop
thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from vmd.block.backend import BlockBackend
from vmd.block.edge import RootHolder, drained, shape_changed, topological
from vmd.block.filename import wire_options
from vmd.block.node import BlockNode
from vmd.block.perm import Perm, Role
from vmd.block.reopen import flatten, record_options
from vmd.errors import QMPError

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


def driver_names() -> list[str]:
    """Every driver ``blockdev-add`` takes, sorted (``-drive format=help``)."""
    _load_drivers()
    return sorted(_OPENERS)


def node_name_of(options: Any) -> str:
    """The node name given, or QEMU's style of implicit name (``#block123``)."""
    return options.node_name or f"#block{next(_implicit_names):03d}"


class BlockGraph:
    """All named nodes, the users' backends, and the nodes the monitor owns."""

    def __init__(self) -> None:
        self._nodes: dict[str, BlockNode] = {}
        #: Nodes added by ``blockdev-add`` (QEMU's monitor_bdrv_states).
        self.owned: list[BlockNode] = []
        #: Every user's root edge holder, oldest first.
        self.backends: list[BlockBackend] = []
        #: Nodes registered by the ``open`` under way (closed if it fails).
        self._opening: list[BlockNode] | None = None

    def __iter__(self) -> Iterator[BlockNode]:
        return iter(list(self._nodes.values()))

    def get(self, node_name: str) -> BlockNode | None:
        return self._nodes.get(node_name)

    def find(self, node_name: str) -> BlockNode:
        node = self._nodes.get(node_name)
        if node is None:
            raise QMPError(f"Cannot find device='' nor node-name='{node_name}'")
        return node

    def backend(self, perm: Perm, shared: Perm, name: str = "") -> BlockBackend:
        """A new user, listed in ``x-debug-query-block-graph``; ``name``
        makes it a device the monitor addresses (QEMU's monitor_add_blk)."""
        return BlockBackend(perm, shared, name=name, registry=self.backends)

    def named_backend(self, name: str) -> BlockBackend | None:
        """The BlockBackend called ``name`` (QEMU's blk_by_name)."""
        return next((b for b in self.backends if name and b.name == name), None)

    def lookup(self, device: str | None, node_name: str | None) -> BlockNode:
        """bdrv_lookup_bs(): the node of device ``device``, else the node
        ``node_name``, with QEMU's texts."""
        if device is not None:
            backend = self.named_backend(device)
            if backend is not None:
                if backend.edge is None:
                    raise QMPError(f"Device '{device}' has no medium")
                return backend.node
        if node_name is not None:
            node = self._nodes.get(node_name)
            if node is not None:
                return node
        raise QMPError(f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'")

    def find_bs(self, name: str) -> BlockNode | None:
        """The node of device ``name`` or the node called ``name``, if any."""
        backend = self.named_backend(name)
        if backend is not None and backend.edge is not None:
            return backend.node
        return self._nodes.get(name)
    # -- opening -------------------------------------------------------------------

    async def open(self, options: Any) -> BlockNode:
        """Open a node tree from ``BlockdevOptions`` and name its nodes.

        If it fails, the nodes this call opened are closed again (and only
        those), newest first, as QEMU drops a half-opened tree.
        """
        _load_drivers()
        if options.node_name and options.node_name in self._nodes:
            raise QMPError(f"Duplicate nodes with node-name='{options.node_name}'")
        opener = _OPENERS.get(str(options.driver))
        if opener is None:
            raise QMPError(f"Driver '{options.driver}' is not supported by vmd")
        outermost = self._opening is None
        if outermost:
            self._opening = []
        try:
            node = await opener(options, self)
            node.open_options = wire_options(options)
            shape_changed()
            node.force_share = node.force_share or bool(getattr(options, "force_share", False))
            node.detect_zeroes = detect_zeroes_of(options)
            node.direct, node.no_flush = cache_flags(options)
            flat = flatten(node.open_options)
            record_options(node, flat, flat)
            self._register(node, node.node_name)
        except BaseException:
            if outermost:
                opened, self._opening = self._opening or [], None
                for node in reversed(opened):
                    await self._close_one(node)
            raise
        if outermost:
            self._opening = None
        return node

    def _register(self, node: BlockNode, node_name: str) -> None:
        node.node_name = node_name
        self._nodes[node_name] = node
        if self._opening is not None:
            self._opening.append(node)

    def adopt(self, node: BlockNode, node_name: str | None = None) -> None:
        """Register a node opened outside ``open`` and its unregistered
        children (``node_name``, or an implicit ``#blockNNN`` name)."""
        for below in reversed(topological([node])):
            if self._nodes.get(below.node_name) is not below:
                below.opened_inline = below is not node
                self._register(below, node_name if below is node and node_name
                               else f"#block{next(_implicit_names):03d}")

    async def add(self, options: Any) -> BlockNode:
        """``blockdev-add``: open, and keep as owned by the monitor."""
        if not options.node_name:
            raise QMPError("node-name is required at the top level of blockdev-add")
        node = await self.open(options)
        self.owned.append(node)
        return node

    async def open_child(self, ref: Any, parent: Any, role: str) -> BlockNode:
        """Resolve a ``BlockdevRef``: a node name or inline options.

        Inline children inherit the parent's unset options (``parent`` is
        the parent's ``BlockdevOptions``); a backing child is read-only
        unless it says otherwise, as in QEMU.
        """
        if isinstance(ref, str):
            return self.find(ref)
        explicit = flatten(ref)
        if role == "backing" and ref.read_only is None:
            ref.read_only = True
        inherit_options(parent, ref)
        node = await self.open(ref)
        node.opened_inline = True
        record_options(node, node.options, explicit)
        return node

    # -- removing ------------------------------------------------------------------

    async def remove(self, node_name: str) -> None:
        """``blockdev-del``, with QEMU's checks and texts in QEMU's order."""
        node = self._nodes.get(node_name)
        if node is None:
            raise QMPError(f"Failed to find node with node-name='{node_name}'")
        if any(isinstance(edge.parent, RootHolder) and edge.parent.blocker() is None for edge in node.parents):
            raise QMPError(f"Node {node_name} is in use")
        check_not_backing(node)
        if node not in self.owned:
            raise QMPError(f"Node {node_name} is not owned by the monitor")
        if node.parents:
            raise QMPError(f"Block device {node_name} is in use")
        self.owned.remove(node)
        async with drained(node):
            await self.close_tree(node)

    async def delete_backend(self, backend: BlockBackend) -> None:
        """A named backend (``-drive``) goes: its node tree closes unless
        something else holds it or the monitor owns it."""
        node = backend.node if backend.edge is not None else None
        backend.detach()
        if node is not None and not node.parents and node not in self.owned:
            await self.close_tree(node)

    async def close_tree(self, top: BlockNode) -> None:
        """Close ``top`` and the nodes below that nothing else holds, each
        parent before the children it flushes into (no recursion)."""
        stack = [top]
        while stack:
            node = stack.pop()
            children = [edge.child for edge in node.children.values()]
            await self._close_one(node)
            stack.extend(child for child in reversed(children)
                         if not child.parents and child not in self.owned)

    async def _close_one(self, node: BlockNode) -> None:
        """Close one node and drop its child edges (its children stay open)."""
        try:
            await node.close()
        finally:
            node.detach_children()
            if self._nodes.get(node.node_name) is node:
                del self._nodes[node.node_name]

    async def close_all(self) -> None:
        """Close everything: users first let go, then nodes top down."""
        for backend in list(self.backends):
            backend.detach()
        while self._nodes:
            top = next((node for node in self._nodes.values() if not node.parents), None)
            if top is None:  # pragma: no cover - the graph has no cycles
                raise AssertionError("block graph without a top node")
            if top in self.owned:
                self.owned.remove(top)
            await self.close_tree(top)


def cache_flags(options: Any) -> tuple[bool, bool]:
    """(cache.direct, cache.no-flush) of ``BlockdevOptions``."""
    cache = getattr(options, "cache", None)
    if cache is None:
        return False, False
    return bool(getattr(cache, "direct", False)), bool(getattr(cache, "no_flush", False))


def detect_zeroes_of(options: Any) -> str:
    """The ``detect-zeroes`` mode asked for, checked as QEMU's bdrv_open_common."""
    mode = getattr(options, "detect_zeroes", None)
    value = "off" if mode is None else str(getattr(mode, "value", mode))
    discard = getattr(options, "discard", None)
    if value == "unmap" and str(getattr(discard, "value", discard)) != "unmap":
        raise QMPError("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
    return value


def block_graph(ctx: Any) -> BlockGraph:
    """The daemon's graph, for a QMP handler's ``ctx``."""
    graph: BlockGraph = ctx.daemon.block
    return graph


def check_not_backing(node: BlockNode) -> None:
    """QEMU's op blockers (``Node 'x' is busy: ...``): a block job's (the
    newest, so QEMU reports it first), then a backing node's."""
    for edge in reversed(node.parents):
        reason = edge.parent.blocker() if isinstance(edge.parent, RootHolder) else None
        if reason is not None:
            raise QMPError(f"Node '{node.node_name}' is busy: {reason}")
    overlays = [(edge.linked, edge.parent.node_name) for edge in node.parents
                if edge.role & Role.COW and isinstance(edge.parent, BlockNode)]
    if overlays:  # the newest overlay's blocker comes first in QEMU's list
        raise QMPError(f"Node '{node.node_name}' is busy: node is used as backing hd of '{max(overlays)[1]}'")


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
