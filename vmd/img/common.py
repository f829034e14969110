"""Helpers shared by the ``vmd-img`` subcommands.

Errors are :class:`ImgError` (printed as ``vmd-img: text``, exit 1); images
are opened read-only through the block node classes; JSON is laid out like
QEMU's (keys in the order of QEMU's ``QDict`` hash table, four-space indent).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from vmd.block.backend import BlockBackend
from vmd.block.node import BlockNode
from vmd.block.perm import Perm
from vmd.errors import QMPError
from vmd.qmp.json_writer import qdict_order

PROGRAM = "vmd-img"
T = TypeVar("T")

QCOW2_MAGIC = b"QFI\xfb"
PROBE_BYTES = 2048


class ImgError(Exception):
    """A fatal error; ``str()`` is the text after ``vmd-img: ``."""

    def __init__(self, message: str, *, status: int = 1, hint: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        #: Add "Try 'vmd-img --help' for more information".
        self.hint = hint

    def __str__(self) -> str:
        return self.message


def usage_error(message: str) -> ImgError:
    return ImgError(message, hint=True)


def run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on a fresh uvloop event loop (asyncio's as a fallback)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(_call(factory))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_call(factory))


async def _call(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


# -- sizes ------------------------------------------------------------------------

_SUFFIXES = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]?)\s*$")


def parse_size(text: str) -> int:
    """A size with an optional k/M/G/T/P/E suffix (powers of 1024), as qemu-img."""
    match = _SIZE_RE.match(text)
    if match is None or match.group(2).lower() not in _SUFFIXES:
        raise ValueError(text)
    number, suffix = match.groups()
    shift = _SUFFIXES[suffix.lower()]
    if "." in number:
        if not shift:
            raise ValueError(text)
        value = int(float(number) * (1 << shift))
    else:
        value = int(number) << shift
    if value >= 1 << 63:
        raise ValueError(text)
    return value


def size_to_str(value: int) -> str:
    """QEMU's size_to_str: ``1 GiB``, ``196 KiB``, ``1.5 MiB`` (next unit from 1000 on)."""
    suffixes = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
    exponent = math.frexp(value / (1000.0 / 1024.0))[1]
    index = min(max(int((exponent - 1) / 10), 0), len(suffixes) - 1)
    return f"{value / (1 << (10 * index)):0.3g} {suffixes[index]}B"


# -- JSON as QEMU writes it -------------------------------------------------------------


def qemu_json(obj: Any) -> str:
    """Pretty JSON like ``qobject_to_json_pretty`` (no trailing newline)."""
    return json.dumps(qdict_order(obj), indent=4, ensure_ascii=False)


# -- output format options --------------------------------------------------------


def output_format(value: str) -> str:
    if value not in ("human", "json"):
        raise ImgError("--output must be used with human or json as argument.")
    return value


# -- opening images ---------------------------------------------------------------


def _os_error(path: str, error: OSError) -> ImgError:
    reason = os.strerror(error.errno) if error.errno else str(error)
    return ImgError(f"Could not open '{path}': Could not open '{path}': {reason}")


def probe_format(path: str) -> str:
    """qcow2 when the file starts with the qcow2 magic and version >= 2, else raw."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(PROBE_BYTES)
    except OSError as error:
        raise _os_error(path, error) from None
    if len(head) >= 8 and head[:4] == QCOW2_MAGIC and struct.unpack(">I", head[4:8])[0] >= 2:
        return "qcow2"
    return "raw"


def check_format(fmt: str | None) -> None:
    if fmt is not None and fmt not in ("raw", "qcow2"):
        raise ImgError(f"Unknown file format '{fmt}'")


@dataclass
class Image:
    """An open image: its top node, format and (possibly) backing chain."""

    path: str
    fmt: str
    node: BlockNode
    file: BlockNode
    #: What qemu-img holds on an image it reads: read, sharing reads and
    #: unchanged writes (so a writer elsewhere is refused, both ways).
    user: BlockBackend

    async def close(self) -> None:
        from vmd.block.drivers.qcow2.node import close_image
        self.user.detach()
        await close_image(self.node)


async def _precheck_qcow2(path: str, file: BlockNode) -> None:
    """Short files: QEMU reads the header zero-padded and complains about it."""
    from vmd.block.drivers.qcow2 import format as qfmt
    size = file.total_size
    if size >= 104:
        return
    buf = bytearray(104)
    await file.read(0, memoryview(buf)[:size])
    if buf[:4] != QCOW2_MAGIC:
        return
    qfmt.parse_header(bytes(buf), size)


async def open_image(path: str, fmt: str | None, *, backing: bool) -> Image:
    """Open ``path`` read-only as ``fmt`` (probed when None), QEMU's error texts."""
    from vmd.block.drivers.file import FileNode
    from vmd.block.drivers.qcow2.node import Qcow2Node, close_image, open_chain
    from vmd.block.drivers.raw import RawNode

    check_format(fmt)
    name = fmt or probe_format(path)
    file = FileNode(path, path, read_only=True)
    try:
        await file.open()
    except OSError as error:
        raise _os_error(path, error) from None
    except QMPError as error:
        raise ImgError(f"Could not open '{path}': {error.desc}") from None
    node: BlockNode = file  # the top opened so far, closed on failure
    try:
        if name == "qcow2":
            await _precheck_qcow2(path, file)
            node = qnode = Qcow2Node(path, file, read_only=True)
            await qnode.open()
            if backing:
                await open_chain(qnode, path)
        else:
            node = RawNode(path, file, read_only=True)
            await node.open()
        user = BlockBackend(Perm.CONSISTENT_READ, Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED)
        user.attach(node)
    except QMPError as error:
        await close_image(node)
        raise ImgError(f"Could not open '{path}': {error.desc}") from None
    except OSError as error:
        await close_image(node)
        raise ImgError(f"Could not open '{path}': {os.strerror(error.errno or 5)}") from None
    return Image(path, name, node, file, user)


def allocated_file_size(path: str) -> int | None:
    """Bytes the file takes on disk (st_blocks), as QEMU's actual-size."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return None


# -- option parsing ---------------------------------------------------------------


@dataclass
class CommonOptions:
    """The options the subcommands share, in qemu-img's spelling."""

    help: bool = False
    fmt: str | None = None
    output: str = "human"
    quiet: bool = False
    progress: bool | None = None


def split_common(opts: list[tuple[str, str]]) -> tuple[CommonOptions, list[tuple[str, str]]]:
    """Take the shared options out of ``opts``; the rest is the subcommand's."""
    common = CommonOptions()
    rest = []
    for opt, value in opts:
        if opt in ("-h", "--help"):
            common.help = True
        elif opt == "-f":
            common.fmt = value
        elif opt == "--output":
            common.output = output_format(value)
        elif opt in ("-q", "--quiet"):
            common.quiet = True
        elif opt == "-p":
            common.progress = True
        elif opt not in ("-U", "--force-share"):  # locks are not taken by vmd-img
            rest.append((opt, value))
    return common, rest


def getopt(argv: list[str], short: str, long: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """GNU-style option parsing (options may follow file names), qemu-img's messages."""
    import getopt as _getopt
    try:
        return _getopt.gnu_getopt(argv, short, long)
    except _getopt.GetoptError as error:
        opt = error.opt
        msg = error.msg
        is_long = len(opt) > 1
        if "requires argument" in msg:
            text = f"option '--{opt}' requires an argument" if is_long else f"option requires an argument -- '{opt}'"
        elif "must not have an argument" in msg:
            text = f"option '--{opt}' doesn't allow an argument"
        elif "not a unique prefix" in msg:
            text = f"option '--{opt}' is ambiguous"
        else:
            text = f"unrecognized option '--{opt}'" if is_long else f"invalid option -- '{opt}'"
        raise usage_error(text) from None


def write_messages(lines: list[str]) -> None:
    import sys
    for line in lines:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
