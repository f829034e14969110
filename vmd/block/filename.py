"""Node file names as QEMU 7.2 builds them (block.c's bdrv_refresh_filename).

A node's ``filename`` is a plain name when opening that name alone would
give the same node: a protocol node's own name (a file's path, null-co's
``null-co://``), or a format node's file name when nothing the user gave
changes what the node reads. Otherwise it is ``json:`` and the node's full
open options: its driver, the *strong* options it was opened with (those
that change its data: raw's ``offset`` and ``size``, null-co's ``size``...,
each driver's ``strong_options``), and the full options of each child, the
backing child only where it is not the one the image header names (an
"overridden" backing file; ``"backing": null`` where the header names one
but the node has none). A job's filter added without a node name
(``implicit``) shows its child's names. The keys come in QEMU's QDict order
and the text is QEMU's JSON, so the name is byte for byte QEMU's: clients
pass it back (``block-commit``'s ``top`` and ``base``, iotest 224) and
overlays record it as their backing file name.

Names are computed when asked for, bottom up, with an explicit stack (a
chain may be thousands of images deep), and kept in the node until the
graph's shape changes (``vmd.block.edge.shape_version``). QEMU keeps them in
the node too and refreshes them at graph changes and queries.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmd.block.edge import shape_version
from vmd.qapi_runtime import to_wire
from vmd.qmp.json_writer import dumps, qdict_order

if TYPE_CHECKING:
    from vmd.block.node import BlockNode

#: bs->filename's size (PATH_MAX): longer json: names are cut, ending "...".
FILENAME_MAX = 4096


@dataclass(frozen=True)
class Names:
    """What bdrv_refresh_filename leaves in a node."""

    #: A name that opens this node by itself ("" when there is none).
    exact: str
    #: ``exact``, else ``json:`` and ``options``.
    filename: str
    #: The options that open this node (full_open_options).
    options: dict[str, Any]


#: A node's names, for a driver's rule (its children's are known by then).
NamesOf = Callable[["BlockNode"], Names]


def names(top: BlockNode) -> Names:
    """The names of ``top``, its children's computed first."""
    version = shape_version()
    done: dict[int, Names] = {}
    stack: list[tuple[BlockNode, bool]] = [(top, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in done:
            continue
        cached = node.names_cache
        if cached is not None and cached[0] == version:
            done[id(node)] = cached[1]
        elif children_done:
            done[id(node)] = _refresh(node, done)
            node.names_cache = version, done[id(node)]
        else:
            stack.append((node, True))
            stack.extend((edge.child, False) for edge in node.children.values() if id(edge.child) not in done)
    return done[id(top)]


def filename(node: BlockNode) -> str:
    return names(node).filename


def _refresh(node: BlockNode, done: dict[int, Names]) -> Names:
    """bdrv_refresh_filename of one node whose children are in ``done``."""
    edges = list(node.children.values())
    if node.implicit and edges:
        return done[id(edges[0].child)]
    backing = node.children.get("backing")
    overridden = _overridden(node, done[id(backing.child)].filename if backing is not None else None)
    options, strong = _strong(node)
    # QEMU's list of children is newest first.
    for edge in reversed(edges):
        if edge is not backing or overridden:
            options[edge.name] = done[id(edge.child)].options
    if overridden and backing is None:
        options["backing"] = None
    exact = node.exact_filename(options, lambda child: done[id(child)])
    if exact is None:
        exact = _generic_exact(node, done, strong or overridden)
    return Names(exact, exact or _json_name(options), options)


def _generic_exact(node: BlockNode, done: dict[int, Names], json_needed: bool) -> str:
    """A format node over a protocol node takes the protocol's name, unless
    it is a filter or its options or backing file make it differ."""
    primary = node.primary_child()
    if primary is None or node.is_filter or json_needed or not primary.is_protocol:
        return ""
    return done[id(primary)].exact


def _json_name(options: dict[str, Any]) -> str:
    name = "json:" + dumps(qdict_order(options))
    if len(name) >= FILENAME_MAX:
        name = name[:FILENAME_MAX - 4] + "..."
    return name


def _overridden(node: BlockNode, backing_filename: str | None) -> bool:
    """bdrv_backing_overridden: the backing node is not the one the image
    header names (or there is none though the header names one)."""
    if backing_filename is not None:
        return node.auto_backing_file != backing_filename
    return node.auto_backing_file != ""


def backing_overridden(node: BlockNode) -> bool:
    backing = node.backing
    return _overridden(node, filename(backing) if backing is not None else None)


def _strong(node: BlockNode) -> tuple[dict[str, Any], bool]:
    """append_strong_runtime_options: ``driver``, ``filename`` and the
    driver's strong options among those the node was opened with (flat
    dotted keys, as QEMU keeps them); and whether any besides the first
    two was given."""
    given = node.open_options
    out: dict[str, Any] = {}
    found = False
    for key in ("driver", "filename", *node.strong_options):
        if key.endswith("."):
            matches = flatten(given.get(key[:-1]), key[:-1])
        else:
            matches = {key: given[key]} if key in given and given[key] is not None else {}
        out.update(matches)
        found = found or (bool(matches) and key not in ("driver", "filename"))
    out.setdefault("driver", node.driver)
    return out, found


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """qdict_flatten of one option: nested members and list items become
    ``prefix.member`` and ``prefix.0`` keys."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any]] = [(prefix, value)]
    while stack:
        key, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((f"{key}.{name}", member) for name, member in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{key}.{index}", member) for index, member in reversed(list(enumerate(item))))
        elif item is not None:
            out[key] = item
    return out


def wire_options(options: Any) -> dict[str, Any]:
    """The options a node was opened with, as plain JSON data."""
    wire = to_wire(options)
    return wire if isinstance(wire, dict) else {}


# -- names the user passes back ---------------------------------------------------

def has_protocol(path: str) -> bool:
    """path_has_protocol: a colon before any slash."""
    head = path.split("/", 1)[0]
    return ":" in head


def directory_of(node: BlockNode) -> str | None:
    """bdrv_dirname: the directory of the file under ``node`` (with its
    slash), None where there is no plain file name."""
    while True:
        primary = node.primary_child()
        if primary is None:
            break
        node = primary
    exact = names(node).exact
    if not exact:
        return None
    # path_combine(exact, ""): up to the last slash, or past the protocol.
    start = exact.index(":") + 1 if has_protocol(exact) else 0
    return exact[:max(start, exact.rfind("/") + 1)]


def absolute(node: BlockNode, name: str) -> str | None:
    """bdrv_make_absolute_filename: ``name`` relative to ``node``'s file."""
    if not name:
        return None
    if has_protocol(name) or name.startswith("/"):
        return name
    directory = directory_of(node)
    return None if directory is None else directory + name


def find_backing_image(top: BlockNode, name: str) -> BlockNode | None:
    """bdrv_find_backing_image: the image below ``top`` (filters skipped)
    that ``name`` designates, as its overlay's header names it or, where
    the backing node was given otherwise, by the backing node's file name."""
    protocol = has_protocol(name)
    current = skip_filters(top)
    while not current.is_filter and current.backing is not None:
        below = skip_filters(current.backing)
        if backing_overridden(current):
            if name == filename(below):
                return below
        elif protocol or has_protocol(current.backing_file or ""):
            if name in (current.backing_file, absolute(current, current.backing_file or "")):
                return below
        elif _same_file(absolute(current, name), absolute(current, current.backing_file or "")):
            return below
        current = below
    return None


def _same_file(first: str | None, second: str | None) -> bool:
    """Both exist and resolve to the same path (QEMU compares realpath()s)."""
    if first is None or second is None or not os.path.exists(first) or not os.path.exists(second):
        return False
    return os.path.realpath(first) == os.path.realpath(second)


def skip_filters(node: BlockNode) -> BlockNode:
    while node.is_filter:
        child = node.filtered()
        if child is None:
            break
        node = child
    return node
