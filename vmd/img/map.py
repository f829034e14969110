"""``vmd-img map``: where the data of an image lies (``qemu-img map``).

Each range's status comes from ``block_status`` of the top node, then of
the backing nodes below while a range is neither data nor zero there, as
qemu-img does. A qcow2 image that looks metadata-preallocated (more clusters
in use than the file has allocated) also asks its file for holes, so data
clusters that are holes in the file read as zero, like QEMU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from vmd.block.drivers.qcow2.node import Qcow2Node
from vmd.block.node import BlockNode, Status
from vmd.img.common import ImgError, getopt, open_image, parse_size, run, split_common, usage_error

USAGE = "map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename"
HELP = f"""usage: vmd-img {USAGE}

Show which ranges of an image hold data, read as zeroes, or come from the
backing chain, and where the data lies in which file.

  -f fmt               image format (raw or qcow2); probed when omitted
  --output=ofmt        'human' (default) or 'json', as qemu-img map --output
  --start-offset=off   start at this guest offset (default 0)
  --max-length=len     map at most this many bytes
  -U, --force-share    accepted for compatibility (the image is opened read-only)
  -h, --help           display this help and exit

human lists only data extents ("Offset Length Mapped to File"); json lists
every extent with start, length, depth, present, zero, data and offset.
"""


@dataclass
class MapEntry:
    start: int
    length: int
    depth: int
    present: bool
    zero: bool
    data: bool
    offset: int | None = None
    filename: str | None = None

    def mergeable(self, nxt: MapEntry) -> bool:
        if self.length == 0:
            return False
        if (self.zero, self.data, self.depth, self.present) != (nxt.zero, nxt.data, nxt.depth, nxt.present):
            return False
        if (self.filename is None) != (nxt.filename is None) or (self.offset is None) != (nxt.offset is None):
            return False
        if self.filename is not None and self.filename != nxt.filename:
            return False
        if self.offset is not None and self.offset + self.length != nxt.offset:
            return False
        return True

    def json(self) -> str:
        text = (f'{{ "start": {self.start}, "length": {self.length}, "depth": {self.depth},'
                f' "present": {_b(self.present)}, "zero": {_b(self.zero)}, "data": {_b(self.data)}')
        if self.offset is not None:
            text += f', "offset": {self.offset}'
        return text + "}"


def _b(value: bool) -> str:
    return "true" if value else "false"


class Mapper:
    def __init__(self) -> None:
        self._prealloc: dict[int, bool] = {}

    async def _metadata_preallocated(self, node: Qcow2Node) -> bool:
        """QEMU's heuristic: more clusters referenced than the file really allocates."""
        cached = self._prealloc.get(id(node))
        if cached is not None:
            return cached
        file = node.file
        cs = node.cs
        try:
            real = os.stat(file.filename()).st_blocks * 512
        except OSError:
            real = file.total_size
        real_clusters = real // cs
        threshold = max(real_clusters * 10 // 9, real_clusters + 2)
        count = 0
        for cluster in range(-(-file.total_size // cs)):
            if count >= threshold:
                break
            if await node.refcounts.get(cluster):
                count += 1
        result = count >= threshold
        self._prealloc[id(node)] = result
        return result

    async def _status(self, node: BlockNode, offset: int, length: int) -> tuple[int, int, int | None]:
        ext = await node.block_status(offset, length)
        status, count, where = ext.status, ext.length, ext.file_offset
        if (isinstance(node, Qcow2Node) and where is not None and status & Status.DATA
                and not status & Status.ZERO and await self._metadata_preallocated(node)):
            file = node.file
            avail = file.total_size - where
            if avail <= 0:
                status |= Status.ZERO
            else:
                fext = await file.block_status(where, min(count, avail))
                at_eof = where + fext.length >= file.total_size
                if at_eof and fext.status & Status.ZERO:
                    status |= Status.ZERO
                else:
                    count = fext.length
                    if fext.status & Status.ZERO:
                        status |= Status.ZERO
        return status, count, where

    async def entry(self, top: BlockNode, offset: int, length: int) -> MapEntry:
        node = top
        depth = 0
        while True:
            length = min(length, node.total_size - offset)
            status, length, where = await self._status(node, offset, length)
            if status & (Status.DATA | Status.ZERO):
                break
            backing = node.backing
            if backing is None:
                break
            if offset >= backing.total_size:
                # Past the end of the backing file: reads as zeroes from here.
                status |= Status.ZERO
                break
            node = backing
            depth += 1
        filename = None
        if where is not None:
            file = node.child("file")
            filename = (file or node).filename()
        return MapEntry(offset, length, depth, bool(status & Status.ALLOCATED), bool(status & Status.ZERO),
                        bool(status & Status.DATA), where, filename)


async def build_map(path: str, fmt: str | None, start: int, max_length: int | None) -> list[MapEntry]:
    image = await open_image(path, fmt, backing=True)
    try:
        top = image.node
        end = top.total_size
        if max_length is not None:
            end = min(end, start + max_length)
        mapper = Mapper()
        entries: list[MapEntry] = []
        curr = MapEntry(start, 0, 0, False, False, False)
        while curr.start + curr.length < end:
            offset = curr.start + curr.length
            nxt = await mapper.entry(top, offset, end - offset)
            if curr.mergeable(nxt):
                curr.length += nxt.length
                continue
            if curr.length:
                entries.append(curr)
            curr = nxt
        if curr.length:
            entries.append(curr)
        return entries
    finally:
        await image.close()


def print_human(entries: list[MapEntry]) -> int:
    """qemu-img's human map: data extents only; fails on data without an offset."""
    print(f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File")
    for e in entries:
        if e.data and e.offset is None:
            sys.stdout.flush()
            raise ImgError("File contains external, encrypted or compressed clusters.")
        if e.data and not e.zero:
            print(f"{_hex(e.start):<16}{_hex(e.length):<16}{_hex(e.offset or 0):<16}{e.filename or ''}")
    return 0


def _hex(value: int) -> str:
    return f"{value:#x}" if value else "0"


def _size_option(value: str, what: str) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise ImgError(f"Invalid {what} specified! You may use k, M, G, T, P or E suffixes for "
                       "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.") from None


def main(argv: list[str]) -> int:
    opts, args = getopt(argv, "hf:U", ["help", "output=", "start-offset=", "max-length=", "force-share"])
    common, rest = split_common(opts)
    if common.help:
        print(HELP, end="")
        return 0
    fmt, out = common.fmt, common.output
    start = 0
    max_length: int | None = None
    for opt, value in rest:
        if opt == "--start-offset":
            start = _size_option(value, "start offset")
        elif opt == "--max-length":
            max_length = _size_option(value, "max length")
    if len(args) != 1:
        raise usage_error("Expecting one image file name")
    entries = run(lambda: build_map(args[0], fmt, start, max_length))
    if out == "json":
        print("[" + ",\n".join(e.json() for e in entries) + "]")
        return 0
    return print_human(entries)
