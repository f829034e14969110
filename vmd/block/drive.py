"""``-drive`` at start-up: a named BlockBackend over a tree opened the legacy way.

QEMU's -drive goes through bdrv_open() with a file name and flat options,
not through blockdev-add: the file name may carry a protocol prefix
(``blkdebug:CONFIG:IMAGE``, ``null-co://``) or be ``json:{...}``, the
format is probed from the image's first bytes when none is given, and
``backing.*`` options apply to the backing file the image header names.
This module turns all that into one ``BlockdevOptions`` tree (probing and
reading headers on a worker thread), opens it with the graph's one open
path, and puts a BlockBackend named after the drive on top, with QEMU's
permissions for a drive: consistent reads, writes unless read-only,
everything shared (blk_new_open), and the drive's I/O limits
(``throttling.*``, ``vmd.block.io_limits``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from vmd.block import aio
from vmd.block.accounting import BlockAcctStats, Interval
from vmd.block.backend import BlockBackend
from vmd.block.drivers.blkdebug import split_filename
from vmd.block.graph import BlockGraph
from vmd.block.io_limits import drive_limits, set_limits
from vmd.block.perm import ALL, Perm
from vmd.cli.config import DriveConfig
from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import parse_bool
from vmd.errors import QMPError

#: Drivers that sit on the host (a file name, no ``file`` child).
_PROTOCOLS = ("file", "blkdebug", "null-co", "null-aio")
_QCOW2_MAGIC = b"QFI\xfb"
#: The most of an image read to find its backing file (cluster 0 at most).
_HEADER_BYTES = 2 << 20


async def open_drive(graph: BlockGraph, drive: DriveConfig) -> BlockBackend:
    """Open ``drive``'s tree and name a BlockBackend ``drive.id`` on it."""
    from vmd._generated.types import visit_BlockdevOptions
    from vmd.qapi_keyval import command_arguments
    if not drive.file and not drive.options:
        raise QMPError("vmd has no removable media: a drive needs a file")
    limits = drive_limits(drive.throttling)
    tree = crumple(drive.options)
    for key, value in (("read-only", "on" if drive.read_only else "off"), ("auto-read-only", "on"),
                       ("cache.direct", "off"), ("cache.no-flush", "off")):
        _set_default(tree, key, value)
    if drive.detect_zeroes is not None:
        tree["detect-zeroes"] = drive.detect_zeroes
    tree = await resolve(tree, drive.file or None, drive.aio)
    options = visit_BlockdevOptions(command_arguments("blockdev-add", tree), None, "")
    node = await graph.open(options)
    perm = Perm.CONSISTENT_READ if drive.read_only else Perm.CONSISTENT_READ | Perm.WRITE
    backend = graph.backend(perm, ALL, name=drive.id or "")
    backend.stats = acct_stats(drive.stats)
    backend.write_cache = drive.writeback
    backend.on_error = (drive.rerror or backend.on_error[0], drive.werror or backend.on_error[1])
    try:
        backend.attach(node)
    except BaseException:
        await graph.close_tree(node)
        raise
    await set_limits(backend, limits, drive.throttling.get("group"), backend.name)
    return backend


def acct_stats(options: dict[str, str]) -> BlockAcctStats:
    """The backend's accounting as ``stats-account-invalid``,
    ``stats-account-failed`` and ``stats-intervals.N`` (seconds) ask."""
    stats = BlockAcctStats()
    try:
        for name in ("invalid", "failed"):
            value = options.get(f"stats-account-{name}")
            if value is not None:
                setattr(stats, f"account_{name}", parse_bool(f"stats-account-{name}", value))
    except OptionError as error:
        raise QMPError(str(error)) from None
    intervals = sorted((int(key.rpartition(".")[2]), value) for key, value in options.items()
                       if key.startswith("stats-intervals.") and key.rpartition(".")[2].isdigit())
    for _index, value in intervals:
        if not value.isdigit() or not 0 < int(value) <= 0xFFFF_FFFF:
            raise QMPError(f"Invalid interval length: {value}")
        stats.intervals.append(Interval(int(value)))
    return stats


def crumple(flat: dict[str, str]) -> dict[str, Any]:
    """``{"file.driver": "x"}`` -> ``{"file": {"driver": "x"}}`` (qdict_crumple)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        _set(tree, key, value)
    return tree


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *path, leaf = key.split(".")
    for part in path:
        below = tree.setdefault(part, {})
        if not isinstance(below, dict):
            raise QMPError(f"Cannot mix '{part}' and '{part}.*' options")
        tree = below
    if isinstance(tree.get(leaf), dict):
        raise QMPError(f"Cannot mix '{leaf}' and '{leaf}.*' options")
    tree[leaf] = value


def _set_default(tree: dict[str, Any], key: str, value: str) -> None:
    *path, leaf = key.split(".")
    for part in path:
        tree = tree.setdefault(part, {})
    tree.setdefault(leaf, value)


async def resolve(tree: dict[str, Any], filename: str | None, aio_mode: str | None = None) -> dict[str, Any]:
    """The full ``BlockdevOptions`` tree for ``tree`` opened from ``filename``."""
    if filename is not None and filename.startswith("json:"):
        tree = {**_json_filename(filename), **tree}
        filename = None
    driver = tree.get("driver")
    if driver in _PROTOCOLS:
        return _merged(_protocol(filename, aio_mode) if filename else {}, tree)
    file = tree.get("file")
    if isinstance(file, str):
        if driver is None:
            raise QMPError("A block driver must be given with a file node reference")
        return tree
    if filename is None and not isinstance(file, dict):
        raise QMPError(f"The '{driver}' block driver requires a file name" if driver
                       else "Must specify either driver or file")
    child = dict(file or {})
    if child.get("driver", "file") in _PROTOCOLS:
        child = _merged({"driver": "file", **(_protocol(filename, aio_mode) if filename else {})}, child)
    else:   # a format over a format: the file name goes down to the lower one
        child = await resolve(child, filename, aio_mode)
    tree["file"] = child
    if driver is None:
        driver = tree["driver"] = await aio.run(_probe, _host_path(child))
    backing = tree.get("backing")
    if driver == "qcow2" and isinstance(backing, dict):
        tree["backing"] = await _resolve_backing(backing, _host_path(child))
    return tree


async def _resolve_backing(backing: dict[str, Any], overlay: str) -> dict[str, Any]:
    """``backing.*`` options: the image the header names (and its format),
    unless they name another file."""
    if "file" in backing:
        return await resolve(backing, None)
    name, fmt = await aio.run(_backing_of, overlay)
    if name is None:
        raise QMPError("backing options given for an image without a backing file")
    if fmt is not None:
        backing.setdefault("driver", fmt)
    return await resolve(backing, _relative_to(overlay, name))


def _merged(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` over what a file name implies, nested options merged
    (``file.image.read-zeroes`` over ``blkdebug:CONF:null-co://``)."""
    out = dict(base)
    for key, value in given.items():
        below = out.get(key)
        out[key] = _merged(below, value) if isinstance(value, dict) and isinstance(below, dict) else value
    return out


def _json_filename(filename: str) -> dict[str, Any]:
    """``json:{...}``: the options, flat or nested, as one tree."""
    try:
        value = json.loads(filename[len("json:"):])
    except ValueError:
        raise QMPError("Could not parse the JSON options") from None
    if not isinstance(value, dict):
        raise QMPError("Invalid JSON object given")
    tree: dict[str, Any] = {}
    for key, leaf in value.items():
        _set(tree, key, leaf if not isinstance(leaf, (bool, int, float)) else json.dumps(leaf))
    return tree


def _protocol(filename: str, aio_mode: str | None) -> dict[str, Any]:
    """The protocol node a file name stands for (bdrv_find_protocol and
    the driver's parse_filename)."""
    if filename.startswith("blkdebug:"):
        config, image = split_filename(filename)
        node: dict[str, Any] = {"driver": "blkdebug", "image": _protocol(image, aio_mode)}
        if config:
            node["config"] = config
        return node
    for null in ("null-co", "null-aio"):
        if filename.startswith(f"{null}://"):
            return {"driver": null}
    node = {"driver": "file", "filename": filename}
    if aio_mode is not None:
        node["aio"] = aio_mode
    return node


def _host_path(protocol: dict[str, Any]) -> str:
    """The host file below a protocol tree (blkdebug's ``image``)."""
    node: Any = protocol
    while isinstance(node, dict):
        if "filename" in node:
            return str(node["filename"])
        node = node.get("image", node.get("file"))
    raise QMPError("Cannot probe the format of an image without a file name")


def _probe(path: str) -> str:
    """QEMU's format probe, for the two formats vmd has."""
    try:
        with open(path, "rb") as image:
            head = image.read(8)
    except OSError as error:
        raise QMPError(f"Could not open '{path}': {os.strerror(error.errno or 5)}") from None
    if head[:4] == _QCOW2_MAGIC and int.from_bytes(head[4:8], "big") >= 2:
        return "qcow2"
    return "raw"


def _backing_of(path: str) -> tuple[str | None, str | None]:
    """The backing file name and format a qcow2 header records."""
    from vmd.block.drivers.qcow2.format import parse_header
    try:
        with open(path, "rb") as image:
            head = image.read(_HEADER_BYTES)
            size = os.fstat(image.fileno()).st_size
    except OSError as error:
        raise QMPError(f"Could not open '{path}': {os.strerror(error.errno or 5)}") from None
    header = parse_header(head, size)
    return header.backing_file, header.backing_format


def _relative_to(overlay: str, name: str) -> str:
    """A backing file name as QEMU resolves it: relative to the overlay's directory."""
    if os.path.isabs(name) or ":" in name.split("/")[0]:
        return name
    return os.path.join(os.path.dirname(overlay), name)
