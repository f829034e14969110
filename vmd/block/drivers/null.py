"""The ``null-co`` (and ``null-aio``) protocol: a disk that stores nothing.

As in QEMU 7.2: 1 GiB unless ``size`` says otherwise; writes are dropped;
reads leave the caller's buffer untouched unless ``read-zeroes`` is on (off
by default), so they cost nothing; ``latency-ns`` delays every request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vmd.block import limits
from vmd.block.drivers.file import check_force_share
from vmd.block.filename import NamesOf
from vmd.block.graph import BlockGraph, driver, node_name_of
from vmd.block.node import BlockNode, Extent, Status
from vmd.errors import QMPError

DEFAULT_SIZE = 1 << 30
_ZEROES = memoryview(bytes(1 << 20))


class NullNode(BlockNode):
    driver = "null-co"
    is_protocol = True
    strong_options = ("size", "read-zeroes")

    def __init__(self, node_name: str, *, size: int = DEFAULT_SIZE,
                 read_zeroes: bool = False, latency_ns: int = 0,
                 read_only: bool = False, driver_name: str = "null-co") -> None:
        super().__init__(node_name, read_only=read_only)
        if latency_ns < 0:
            raise QMPError("latency-ns is invalid")
        self.driver = driver_name
        self.total_size = size
        self.read_zeroes = read_zeroes
        self.latency = latency_ns / 1e9

    def exact_filename(self, options: dict[str, Any], names_of: NamesOf) -> str:
        """null_refresh_filename: ``null-co://`` unless a strong option was given."""
        return "" if set(options) - {"driver", "filename"} else f"{self.driver}://"

    def allocated_file_size(self) -> int | None:
        """Nothing is stored (QEMU's null driver reports 0 bytes too)."""
        return 0

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.read_zeroes:
            flat = buf.cast("B")
            for start in range(0, len(flat), len(_ZEROES)):
                chunk = flat[start:start + len(_ZEROES)]
                chunk[:] = _ZEROES[:len(chunk)]

    async def _co_write(self, offset: int, data: memoryview) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)

    async def _co_flush(self) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        if self.read_zeroes:
            return Extent(length, Status.ZERO | Status.ALLOCATED, offset)
        return Extent(length, 0, offset)


@driver("null-co", "null-aio")
async def open_null(options: Any, graph: BlockGraph) -> BlockNode:
    check_force_share(options)
    branch = options.u
    size = getattr(branch, "size", None)
    limits.check_length(DEFAULT_SIZE if size is None else int(size))
    read_zeroes = getattr(branch, "read_zeroes", None)
    node = NullNode(node_name_of(options),
                    size=DEFAULT_SIZE if size is None else int(size),
                    read_zeroes=bool(read_zeroes),
                    latency_ns=int(getattr(branch, "latency_ns", None) or 0),
                    read_only=bool(getattr(options, "read_only", False)),
                    driver_name=str(options.driver))
    return node
