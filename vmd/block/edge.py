"""Edges of the block graph and every change made to them (QEMU's BdrvChild).

An ``Edge`` joins a parent to a child node under a name (``file``,
``backing``, ``root``...) and a role, and carries the permissions the parent
holds on the child and those it shares with the child's other parents. A
parent is either another node or a ``RootHolder``: a user of the graph (an
NBD export, a job, a guest device) that holds one ``root`` edge, never the
node itself, so that moving the edge moves the user.

Every change (attach, detach, replace) is one transaction: the graph is
changed, the permissions of the affected subtrees are recomputed top down
(``refresh_perms``, QEMU's bdrv_refresh_perms) and each node is asked to
take them (``check_perm``: a file takes its lock bytes); on a conflict
everything is put back as it was, else each node commits. Graph walks use
explicit stacks, never recursion: a backing chain may be thousands deep.

``drained`` is QEMU's drained section: every user above the nodes stops
starting requests and the section begins once their requests in flight
have finished. Graph changes that move users run inside one.

Everything here belongs to the event loop thread.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING

from vmd.block.perm import ALL, NONE, Perm, Role, perm_text
from vmd.errors import QMPError

if TYPE_CHECKING:
    from vmd.block.node import BlockNode


class RootHolder:
    """A parent that is not a node: one user of the graph (child_root etc.).

    Subclasses say how they are described in permission errors and how they
    stop and resume their requests for a drained section.
    """

    #: The node type in ``x-debug-query-block-graph``.
    kind = "block-backend"
    #: The user's own name ("" when anonymous).
    name = ""

    @property
    def graph_name(self) -> str:
        """The name shown in ``x-debug-query-block-graph``."""
        return self.name

    def parent_desc(self) -> str:
        raise NotImplementedError

    def quiesce_begin(self) -> None:
        """Start no new requests until ``quiesce_end``."""

    def quiesce_end(self) -> None:
        """Requests may start again."""

    async def wait_idle(self) -> None:
        """Return once no request of this user is in flight."""

    def child_changed(self, edge: Edge) -> None:
        """The edge now points at another node (after a replacement)."""

    def blocker(self) -> str | None:
        """Why other operations on the node are refused while this user
        holds it (QEMU's op blocker: a block job's), or None."""
        return None


_links = itertools.count()


class Edge:
    """One parent-to-child link with its permissions."""

    __slots__ = ("parent", "child", "name", "role", "perm", "shared", "frozen", "linked")

    def __init__(self, parent: BlockNode | RootHolder, child: BlockNode, name: str, role: Role,
                 perm: Perm = NONE, shared: Perm = ALL) -> None:
        self.parent = parent
        self.child = child
        self.name = name
        self.role = role
        self.perm = perm
        self.shared = shared
        #: A frozen edge may not be moved or removed (a job's chain).
        self.frozen = False
        #: When it last reached its child (larger is newer): QEMU lists a
        #: child's parents newest first, and so its op blockers.
        self.linked = next(_links)

    def __repr__(self) -> str:
        return f"<Edge {self.name} -> {self.child.node_name} perm={self.perm!r} shared={self.shared!r}>"


class Transaction:
    """Undo and commit actions of one graph change (QEMU's Transaction).

    Used as a context manager: an exception undoes every action, newest
    first, and propagates; a normal exit runs the commit actions in order.
    """

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._commit: list[Callable[[], None]] = []

    def on_abort(self, action: Callable[[], None]) -> None:
        self._undo.append(action)

    def on_commit(self, action: Callable[[], None]) -> None:
        self._commit.append(action)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        actions, self._undo, self._commit = (self._undo[::-1] if error else self._commit), [], []
        for action in actions:
            action()


# -- walking the graph without recursion ---------------------------------------------

def _is_node(parent: BlockNode | RootHolder) -> bool:
    return not isinstance(parent, RootHolder)


def descendants(start: BlockNode) -> Iterator[BlockNode]:
    """``start`` and every node below it, each once."""
    seen = {id(start)}
    stack = [start]
    while stack:
        node = stack.pop()
        yield node
        for edge in node.children.values():
            if id(edge.child) not in seen:
                seen.add(id(edge.child))
                stack.append(edge.child)


def topological(starts: Iterable[BlockNode]) -> list[BlockNode]:
    """The nodes below ``starts``, every parent before its children
    (QEMU's bdrv_topological_dfs)."""
    seen: set[int] = set()
    post: list[BlockNode] = []
    for start in starts:
        if id(start) in seen:
            continue
        seen.add(id(start))
        stack = [(start, iter(list(start.children.values())))]
        while stack:
            node, edges = stack[-1]
            for edge in edges:
                if id(edge.child) not in seen:
                    seen.add(id(edge.child))
                    stack.append((edge.child, iter(list(edge.child.children.values()))))
                    break
            else:
                stack.pop()
                post.append(node)
    return post[::-1]


def holders_above(*nodes: BlockNode) -> list[RootHolder]:
    """Every user reaching any of ``nodes`` through any path of edges."""
    return _above(nodes)[0]


def _above(nodes: tuple[BlockNode, ...]) -> tuple[list[RootHolder], list[BlockNode]]:
    """The users and the nodes above ``nodes`` (each once)."""
    holders: list[RootHolder] = []
    parents: list[BlockNode] = []
    seen = {id(node) for node in nodes}
    stack = list(nodes)
    while stack:
        for edge in stack.pop().parents:
            parent = edge.parent
            if id(parent) in seen:
                continue
            seen.add(id(parent))
            if isinstance(parent, RootHolder):
                holders.append(parent)
            else:
                parents.append(parent)
                stack.append(parent)
    return holders, parents


# -- permissions --------------------------------------------------------------------------

def cumulative_perms(node: BlockNode) -> tuple[Perm, Perm]:
    """What all parents of ``node`` hold, and what all of them share."""
    perm, shared = NONE, ALL
    for edge in node.parents:
        perm |= edge.perm
        shared &= edge.shared
    return perm, shared


def _check_parent_conflicts(node: BlockNode) -> None:
    """Every parent must share what every other parent takes (bdrv_a_allow_b)."""
    name = node.node_name
    for a in node.parents:
        for b in node.parents:
            if a is b or not b.perm & ~a.shared:
                continue
            raise QMPError(
                f"Permission conflict on node '{name}': permissions '{perm_text(b.perm & ~a.shared)}' are "
                f"both required by {b.parent.parent_desc()} (uses node '{name}' as '{b.name}' child) and "
                f"unshared by {a.parent.parent_desc()} (uses node '{name}' as '{a.name}' child).")


def _set_edge_perm(edge: Edge, perm: Perm, shared: Perm, tran: Transaction) -> None:
    old = edge.perm, edge.shared

    def undo() -> None:
        edge.perm, edge.shared = old
    edge.perm, edge.shared = perm, shared
    tran.on_abort(undo)


def refresh_perms(starts: Iterable[BlockNode], tran: Transaction,
                  becoming_read_only: Collection[BlockNode] = ()) -> None:
    """Recompute the permissions below ``starts``; raise QMPError on a conflict.

    Top down from ``starts``: each node's parent edges are checked against
    each other, the node is asked to take its cumulative permissions, and
    its child edges are set from them. A child is visited again only when
    one of its edges changed, so closing or extending a deep chain costs
    what changes, not the whole chain (QEMU walks all of it).
    ``becoming_read_only`` are the nodes a reopen is switching to
    read-only: a writer of one is refused with QEMU's reopen text.
    """
    starts = list(starts)
    # Several starts go parents first; one start needs no ordering.
    queue = deque(topological(starts) if len(starts) > 1 else starts)
    queued = {id(node) for node in queue}
    while queue:
        node = queue.popleft()
        queued.discard(id(node))
        _check_parent_conflicts(node)
        perm, shared = cumulative_perms(node)
        if perm & (Perm.WRITE | Perm.WRITE_UNCHANGED) and node.read_only:
            if any(node is other for other in becoming_read_only):
                raise QMPError(f"Read-only block node '{node.node_name}' cannot support read-write users")
            raise QMPError("Block node is read-only")
        node.check_perm(perm, shared)
        tran.on_abort(node.abort_perm)
        tran.on_commit(node.commit_perm)
        for edge in node.children.values():
            child_perm, child_shared = node.child_perm(edge, perm, shared)
            if edge.child.force_share:
                child_shared = ALL
            if (child_perm, child_shared) != (edge.perm, edge.shared):
                _set_edge_perm(edge, child_perm, child_shared, tran)
                if id(edge.child) not in queued:
                    queued.add(id(edge.child))
                    queue.append(edge.child)


# -- graph changes --------------------------------------------------------------------------

#: Counts the changes of the graph's shape: what is derived from it (the
#: nodes' file names) is cached against this count.
_shape_version = 0


def shape_version() -> int:
    return _shape_version


def shape_changed() -> None:
    """Invalidate what was derived from the graph (an edge moved, or a
    node's backing file name changed)."""
    global _shape_version
    _shape_version += 1


def _link(edge: Edge, tran: Transaction, *, at_head: bool = False) -> None:
    _relink(edge, at_head)

    def undo() -> None:
        _unlink(edge)
    tran.on_abort(undo)


def _relink(edge: Edge, at_head: bool = False) -> None:
    shape_changed()
    parent = edge.parent
    if _is_node(parent):
        parent.children[edge.name] = edge  # type: ignore[union-attr]
        if edge.child.opened_inline and edge.child.inherits_from is None:
            edge.child.inherits_from = parent  # type: ignore[assignment]
    if at_head:
        edge.child.parents.insert(0, edge)
    else:
        edge.child.parents.append(edge)


def remove_edge(edge: Edge, tran: Transaction) -> None:
    """Unlink ``edge`` as part of ``tran`` (permissions are refreshed by the caller)."""
    _unlink(edge)
    tran.on_abort(lambda: _relink(edge))


def _unlink(edge: Edge) -> None:
    shape_changed()
    parent = edge.parent
    if _is_node(parent) and parent.children.get(edge.name) is edge:  # type: ignore[union-attr]
        del parent.children[edge.name]  # type: ignore[union-attr]
    if edge in edge.child.parents:
        edge.child.parents.remove(edge)


def _set_child(edge: Edge, child: BlockNode, tran: Transaction) -> None:
    old = edge.child

    def undo() -> None:
        shape_changed()
        child.parents.remove(edge)
        edge.child = old
        old.parents.append(edge)
    shape_changed()
    old.parents.remove(edge)
    edge.child = child
    child.parents.append(edge)
    edge.linked = next(_links)
    tran.on_abort(undo)


def check_no_cycle(parent: BlockNode, child: BlockNode, name: str) -> None:
    """Refuse an edge that would make ``parent`` its own descendant."""
    if any(node is parent for node in descendants(child)):
        raise QMPError(f"Making '{child.node_name}' a {name} child of '{parent.node_name}' would create a cycle")


def add_edge(parent: BlockNode | RootHolder, child: BlockNode, name: str, role: Role, tran: Transaction,
             perm: Perm = NONE, shared: Perm = ALL, *, at_head: bool = False) -> Edge:
    """Link a new edge as part of ``tran`` (permissions are refreshed by the
    caller); ``at_head`` puts it first among the child's parents, where
    QEMU's bdrv_attach_child_noperm does (permission errors name parents
    in that order)."""
    if _is_node(parent):
        check_no_cycle(parent, child, name)  # type: ignore[arg-type]
    edge = Edge(parent, child, name, role, perm, shared)
    _link(edge, tran, at_head=at_head)
    return edge


def attach(parent: BlockNode | RootHolder, child: BlockNode, name: str, role: Role,
           perm: Perm = NONE, shared: Perm = ALL) -> Edge:
    """Add an edge and take its permissions, or raise and leave no trace.

    A node parent's edge gets what its driver derives for the role; a root
    holder's edge gets ``perm``/``shared`` as given.
    """
    with Transaction() as tran:
        edge = add_edge(parent, child, name, role, tran, perm, shared)
        refresh_perms([parent if _is_node(parent) else child], tran)  # type: ignore[list-item]
    return edge


def detach(edge: Edge) -> None:
    """Remove an edge; the child gives up what the edge held."""
    if edge.frozen:
        raise QMPError(f"Cannot change frozen '{edge.name}' link from '{_parent_name(edge)}' "
                       f"to '{edge.child.node_name}'")
    with Transaction() as tran:
        _unlink(edge)
        refresh_perms([edge.child], tran)


def _parent_name(edge: Edge) -> str:
    parent = edge.parent
    return parent.name if isinstance(parent, RootHolder) else parent.node_name


def set_root_perm(edge: Edge, perm: Perm, shared: Perm) -> None:
    """A root holder changes what it holds (blk_set_perm)."""
    with Transaction() as tran:
        _set_edge_perm(edge, perm, shared, tran)
        refresh_perms([edge.child], tran)


def replace_node(old: BlockNode, new: BlockNode, tran: Transaction) -> list[Edge]:
    """Move the parents of ``old`` to ``new`` (QEMU's bdrv_replace_node).

    Edges from ``new`` or from nodes below it stay (an overlay keeps its
    backing edge to ``old``); a frozen edge refuses. Returns the moved edges.
    """
    below_new = {id(node) for node in descendants(new)}
    moved = [edge for edge in old.parents if id(edge.parent) not in below_new]
    for edge in moved:
        if edge.frozen:
            raise QMPError(f"Cannot change '{edge.name}' link to '{old.node_name}'")
    for edge in moved:
        _set_child(edge, new, tran)
    refresh_perms([new, old], tran)
    for edge in moved:
        if isinstance(edge.parent, RootHolder):
            tran.on_commit(lambda edge=edge: edge.parent.child_changed(edge))  # type: ignore[union-attr,misc]
    return moved


def chain_edges(top: BlockNode, base: BlockNode | None) -> list[Edge]:
    """The filter and backing edges from ``top`` down to ``base`` (to the
    bottom of the chain when None)."""
    edges: list[Edge] = []
    node = top
    while node is not base:
        edge = next((edge for edge in node.children.values() if edge.role & (Role.FILTERED | Role.COW)), None)
        if edge is None:
            if base is not None:
                raise QMPError(f"'{base.node_name}' is not in the backing chain of '{top.node_name}'")
            break
        edges.append(edge)
        node = edge.child
    return edges


def freeze_chain(top: BlockNode, base: BlockNode | None) -> list[Edge]:
    """Freeze the chain between ``top`` and ``base`` for a job (QEMU's
    bdrv_freeze_backing_chain): its edges can be neither moved nor dropped
    until ``unfreeze``. All or nothing; returns the frozen edges."""
    edges = check_freezable(top, base)
    for edge in edges:
        edge.frozen = True
    return edges


def check_freezable(top: BlockNode, base: BlockNode | None) -> list[Edge]:
    """The edges ``freeze_chain`` would freeze; raises QEMU's error if a
    job froze one already or one leads to a node never to be frozen."""
    edges = chain_edges(top, base)
    for edge in edges:
        if edge.frozen:
            raise QMPError(f"Cannot change '{edge.name}' link from '{_parent_name(edge)}' "
                           f"to '{edge.child.node_name}'")
    for edge in edges:
        if edge.child.never_freeze:
            raise QMPError(f"Cannot freeze '{edge.name}' link to '{edge.child.node_name}'")
    return edges


def unfreeze(edges: list[Edge]) -> None:
    """Thaw what ``freeze_chain`` froze (bdrv_unfreeze_backing_chain)."""
    for edge in edges:
        edge.frozen = False


@contextlib.asynccontextmanager
async def drained(*nodes: BlockNode) -> AsyncIterator[None]:
    """A drained section over ``nodes`` (bdrv_drained_begin/end).

    Every user above them stops starting requests, then the section waits
    until the requests they had in flight have finished. The nodes and
    those above them learn of the section (``drain_begin``/``drain_end``),
    so that one holding requests back (a throttle filter) lets them go.
    """
    holders, parents = _above(nodes)
    for node in nodes:
        node.quiesce_counter += 1
    for node in (*nodes, *parents):
        node.drain_begin()
    for holder in holders:
        holder.quiesce_begin()
    try:
        for holder in holders:
            await holder.wait_idle()
        yield
    finally:
        for node in nodes:
            node.quiesce_counter -= 1
        for node in (*nodes, *parents):
            node.drain_end()
        for holder in holders:
            holder.quiesce_end()
