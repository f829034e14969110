"""Reopening nodes with new options: QEMU's bdrv_reopen_multiple, for
``blockdev-reopen`` and qemu-io's ``reopen``.

A reopen is one transaction over a queue of nodes. Each node named gets
the options given; a child it opened inline (QEMU's ``inherits_from``) is
queued too, with the ``child.*`` options, or with its own old options when
the parent names it by its current node name. Options left out go back to
their defaults (``blockdev-reopen``) or keep their old values (qemu-io's
``keep_old``); children inherit ``read-only`` and the like as at open.

Then, in QEMU's order, for every node: the options every driver has
(``read-only``, ``detect-zeroes``, ``discard``, ``cache.*``) are taken
out; an explicit driver option left out must be one the driver can reset;
the driver takes its own (``BlockNode.reopen_prepare``); a node with a
backing file must say what ``backing`` is; ``backing``/``file`` naming
another node (or null) changes the child edge; every option still left
must equal the old value ("Cannot change the option 'x'"). The
permissions of all nodes are then refreshed at once with their new
read-only states (a file's lock bytes follow), and only then does any node
start writing. A failure anywhere puts the graph, the flags and the
permissions back as they were.

The read-only switches are the same driver hooks the block jobs use
(``prepare_read_only``, ``prepare_writable``): a node going read-only
writes back what it holds (qcow2 stores its bitmaps) before any flag
changes, parents before children; a node going read-write is made
writable after the permissions are taken, children before parents (a
file reopens its descriptor read-write and keeps its lock bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmd.block.edge import Edge, Transaction, add_edge, check_no_cycle, drained, refresh_perms, remove_edge
from vmd.block.node import BlockNode
from vmd.block.perm import Role
from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import parse_bool
from vmd.errors import QMPError
from vmd.qapi_runtime import to_wire
from vmd.qmp.json_writer import qdict_order

#: Options of every driver, handled by the reopen itself (bdrv_reopen_prepare).
_GENERIC = ("read-only", "auto-read-only", "detect-zeroes", "discard", "cache.direct", "cache.no-flush")
#: Options any node may leave out (bdrv_reset_options_allowed's common list).
_RESETTABLE = ("node-name", *_GENERIC)
#: What an inline child takes from its parent unless it sets it (as at open).
_INHERITED = ("read-only", "discard", "force-share", "auto-read-only", "cache.direct", "cache.no-flush")
_DISCARD = {"off": False, "ignore": False, "on": True, "unmap": True}
_DETECT_ZEROES = ("off", "on", "unmap")
_MISSING = object()


def flatten(options: Any) -> dict[str, Any]:
    """``BlockdevOptions`` (or wire data) as QEMU's flat QDict: ``file.filename``."""
    flat: dict[str, Any] = {}
    stack: list[tuple[str, Any]] = [("", to_wire(options))]
    while stack:
        prefix, value = stack.pop()
        if isinstance(value, dict):  # an empty one leaves no key, as qdict_flatten
            stack.extend((f"{prefix}{key}.", member) for key, member in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{prefix}{index}.", member) for index, member in reversed(list(enumerate(value))))
        else:
            flat[prefix[:-1]] = value
    return flat


def own_options(node: BlockNode, flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` without the children's options and references."""
    names = {"file", "backing", *node.children}
    return {key: value for key, value in flat.items() if key.split(".", 1)[0] not in names}


def record_options(node: BlockNode, options: dict[str, Any], explicit: dict[str, Any]) -> None:
    """What the node is now opened with (bs->options, bs->explicit_options)."""
    node.options = own_options(node, options)
    node.explicit_options = own_options(node, explicit)


@dataclass
class _Entry:
    """One queued node (QEMU's BDRVReopenState)."""

    node: BlockNode
    options: dict[str, Any]
    explicit: dict[str, Any]
    backing_missing: bool
    read_only: bool = False
    detect_zeroes: str = "off"
    unmap: bool = False
    direct: bool = False
    no_flush: bool = False
    #: The children the reopen replaced or dropped (closed if orphaned).
    old_children: list[BlockNode] = field(default_factory=list)
    commit: Callable[[], None] = lambda: None


class ReopenQueue:
    """The nodes of one reopen, parents before their children."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    def add(self, node: BlockNode, options: dict[str, Any], *, keep_old: bool,
            inherited: dict[str, Any] | None = None) -> None:
        """Queue ``node`` with ``options`` (flat) and the inline children
        they reach (bdrv_reopen_queue_child), in option precedence order:
        given, then (``keep_old``) the old explicit ones, inherited, old."""
        explicit = dict(options)
        merged = dict(options)
        if keep_old:
            _defaults(merged, node.explicit_options)
            _defaults(merged, {"read-only": node.read_only, "detect-zeroes": node.detect_zeroes})
        _defaults(merged, inherited or {})
        if keep_old:
            _defaults(merged, node.options)
        entry = next((e for e in self._entries if e.node is node), None)
        if entry is not None:
            _defaults(merged, entry.options)
            entry.options, entry.explicit = merged, explicit
        else:
            self._entries.append(_Entry(node, merged, explicit, backing_missing=not keep_old and not any(
                key == "backing" or key.startswith("backing.") for key in merged)))
        for name, edge in list(node.children.items()):
            if not _inherits(edge):
                continue
            child_keep = keep_old
            if name in merged:
                if merged[name] != edge.child.node_name:
                    continue
                child_options: dict[str, Any] = {}
                child_keep = True
            else:
                prefix = name + "."
                child_options = {key[len(prefix):]: merged.pop(key) for key in list(merged)
                                 if key.startswith(prefix)}
            self.add(edge.child, child_options, keep_old=child_keep, inherited=_inheritance(merged, edge.role))

    async def run(self, graph: Any) -> None:
        """Prepare every node, take the new permissions, commit; or undo all."""
        nodes = [entry.node for entry in self._entries]
        async with drained(*nodes):
            for node in nodes:
                await node.flush()
            await self._apply(graph)
        for entry in self._entries:
            for old in entry.old_children:
                if not old.parents and old not in graph.owned:
                    await graph.close_tree(old)

    async def _apply(self, graph: Any) -> None:
        entries = self._entries
        made_read_only: list[BlockNode] = []
        try:
            with Transaction() as tran:
                for entry in entries:
                    _prepare(entry, graph, tran)
                to_read_only = [e.node for e in entries if e.read_only and not e.node.read_only]
                to_writable = [e.node for e in entries if not e.read_only and e.node.read_only]
                for node in to_read_only:
                    await node.prepare_read_only()
                    made_read_only.append(node)
                for entry in entries:
                    _set_read_only(entry.node, entry.read_only, tran)
                starts = _perm_starts(entries)
                refresh_perms(starts, tran, becoming_read_only=to_read_only)
                for node in reversed(to_writable):
                    await node.prepare_writable()
                for entry in entries:
                    await entry.node.set_cache_mode(entry.direct, entry.no_flush)
                for entry in entries:
                    tran.on_commit(lambda entry=entry: _commit(entry))  # type: ignore[misc]
        except BaseException:
            for node in reversed(made_read_only):
                if not node.read_only:
                    await node.prepare_writable()
            raise


def _perm_starts(entries: list[_Entry]) -> list[BlockNode]:
    """Where the permissions change: the queued nodes and their old children."""
    nodes = [entry.node for entry in entries]
    nodes.extend(old for entry in entries for old in entry.old_children)
    return nodes


def _defaults(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        target.setdefault(key, value)


def _inherits(edge: Edge) -> bool:
    """Whether the child was opened inline for this edge's parent, or for
    an image between them that a job has since dropped (QEMU hands
    inherits_from down then: bdrv_inherits_from_recursive)."""
    return isinstance(edge.parent, BlockNode) and _inherits_recursively(edge.child, edge.parent)


def _inherits_recursively(child: BlockNode, parent: BlockNode) -> bool:
    node = child.inherits_from
    while node is not None and node is not parent:
        node = node.inherits_from
    return node is not None


def _inheritance(parent: dict[str, Any], role: Role) -> dict[str, Any]:
    """The options a child with ``role`` takes from its parent's."""
    inherited = {key: parent[key] for key in _INHERITED if key in parent}
    if role & Role.COW:
        inherited["read-only"] = True
    return inherited


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return parse_bool(key, str(value))
    except OptionError as error:
        raise QMPError(error.message) from None


def _prepare(entry: _Entry, graph: Any, tran: Transaction) -> None:
    """bdrv_reopen_prepare for one node: checks, and child changes in ``tran``."""
    node, options = entry.node, dict(entry.options)
    entry.read_only = _bool("read-only", options.pop("read-only", False))
    options.pop("auto-read-only", None)
    discard = str(options.pop("discard", "ignore"))
    if discard not in _DISCARD:
        raise QMPError("Invalid discard option")
    entry.unmap = _DISCARD[discard]
    detect_zeroes = str(options.pop("detect-zeroes", "off"))
    if detect_zeroes not in _DETECT_ZEROES:
        raise QMPError(f"Parameter 'detect-zeroes' does not accept value '{detect_zeroes}'")
    if detect_zeroes == "unmap" and not entry.unmap:
        raise QMPError("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
    entry.detect_zeroes = detect_zeroes
    entry.direct = _bool("cache.direct", options.pop("cache.direct", False))
    entry.no_flush = _bool("cache.no-flush", options.pop("cache.no-flush", False))
    if not node.supports_reopen:
        raise QMPError(f"Block format '{node.driver}' used by node '{node.node_name}' "
                          "does not support reopening files")
    for key in qdict_order(node.explicit_options):
        if key not in options and key not in _RESETTABLE and key not in node.mutable_options:
            raise QMPError(f"Option '{key}' cannot be reset to its default value")
    entry.commit = node.reopen_prepare(options)
    if entry.backing_missing and node.supports_backing and (node.backing is not None or node.backing_file):
        raise QMPError(f"backing is missing for '{node.node_name}'")
    for name in ("backing", "file"):
        if name in options and (options[name] is None or isinstance(options[name], str)):
            _change_child(entry, name, options.pop(name), graph, tran)
    for key, new in qdict_order(options).items():
        edge = node.children.get(key)
        if isinstance(new, str) and edge is not None and edge.child.node_name == new:
            continue
        old = node.options.get(key, _MISSING)
        if type(old) is not type(new) or old != new:
            raise QMPError(f"Cannot change the option '{key}'")


def _skip_implicit(node: BlockNode) -> BlockNode | None:
    below: BlockNode | None = node
    while below is not None and below.implicit and below.is_filter:
        below = below.filtered()
    return below


def _change_child(entry: _Entry, name: str, ref: str | None, graph: Any, tran: Transaction) -> None:
    """bdrv_reopen_parse_file_or_backing: ``backing``/``file`` now names
    ``ref`` (null: no backing child)."""
    node = entry.node
    new = None if ref is None else graph.lookup(None, ref)
    if new is not None:
        check_no_cycle(node, new, name)
    edge = node.children.get(name)
    old = edge.child if edge is not None else None
    if old is new:
        return
    if old is not None:
        if _skip_implicit(old) is new:
            return
        if old.implicit:
            raise QMPError(f"Cannot replace implicit {name} child of {node.node_name}")
    if node.is_filter and old is None:
        raise QMPError(f"'{node.node_name}' is a {node.driver} filter node that does not support a {name} child")
    if edge is not None and edge.frozen:
        raise QMPError(f"Cannot change frozen '{name}' link from '{node.node_name}' to '{edge.child.node_name}'")
    if name == "backing" and not node.is_filter and not node.supports_backing:
        raise QMPError(f"Driver '{node.driver}' of node '{node.node_name}' does not support backing files")
    if node.is_filter:
        role = Role.FILTERED | Role.PRIMARY
    elif name == "backing":
        role = Role.COW
    elif edge is not None:
        role = edge.role
    else:
        raise QMPError("Cannot set file child to format node without file child")
    if edge is not None:
        remove_edge(edge, tran)
        entry.old_children.append(edge.child)
        if edge.child.inherits_from is node:  # bdrv_unset_inherits_from
            _set_inherits_from(edge.child, None, tran)
    if new is not None:
        inherits = _inherits_recursively(new, node)
        add_edge(node, new, name, role, tran, at_head=True)
        if inherits:
            _set_inherits_from(new, node, tran)


def _set_inherits_from(child: BlockNode, parent: BlockNode | None, tran: Transaction) -> None:
    old = child.inherits_from
    child.inherits_from = parent

    def undo() -> None:
        child.inherits_from = old
    tran.on_abort(undo)


def _set_read_only(node: BlockNode, read_only: bool, tran: Transaction) -> None:
    old = node.read_only

    def undo() -> None:
        node.read_only = old
    node.read_only = read_only
    tran.on_abort(undo)


def _commit(entry: _Entry) -> None:
    """bdrv_reopen_commit: the new state and options become the node's."""
    node = entry.node
    node.detect_zeroes = entry.detect_zeroes
    if hasattr(node, "unmap"):
        node.unmap = entry.unmap
    entry.commit()
    record_options(node, entry.options, entry.explicit)


async def reopen(top: BlockNode, options: dict[str, str], graph: Any) -> None:
    """qemu-io's ``reopen``: ``options`` (flat, strings) over the old ones."""
    queue = ReopenQueue()
    queue.add(top, options, keep_old=True)
    await queue.run(graph)
