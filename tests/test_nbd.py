"""The NBD server: the protocol byte by byte, then real clients against it.

The second half starts ``NBDServer`` in the test's own event loop and runs
qemu-img, qemu-io and (if installed) nbdinfo as asyncio subprocesses, so
the loop keeps serving while they run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vmd.block.drivers.file import FileNode
from vmd.block.nbd import protocol as p
from vmd.block.nbd.commands import (
    NBDExports,
    nbd_state,
    qmp_block_export_add,
    qmp_block_export_del,
    qmp_nbd_server_add,
    qmp_nbd_server_remove,
    qmp_nbd_server_start,
    qmp_nbd_server_stop,
    qmp_query_block_exports,
)
from vmd.block.nbd.server import Export, NBDServer
from vmd.block.node import Extent, Status
from vmd.qapi_runtime import to_wire
from vmd.qmp.errors import QMPError

SIZE = 4 << 20
MiB = 1 << 20


# -- client-side encoding, for driving the server -------------------------------

def opt(option: int, payload: bytes = b"", magic: int = p.IHAVEOPT) -> bytes:
    return struct.pack(">QII", magic, option, len(payload)) + payload


def name_payload(name: str, *infos: int) -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + struct.pack(">H", len(infos)) + \
        b"".join(struct.pack(">H", info) for info in infos)


def meta_payload(name: str, *queries: str) -> bytes:
    raw = name.encode()
    out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
    for query in queries:
        out += struct.pack(">I", len(query)) + query.encode()
    return out


def req(command: int, offset: int = 0, length: int = 0, cookie: int = 1, flags: int = 0,
        magic: int = p.REQUEST_MAGIC) -> bytes:
    return struct.pack(">IHHQQI", magic, flags, command, cookie, offset, length)


def rep(option: int, rep_type: int, payload: bytes = b"") -> bytes:
    return struct.pack(">QIII", p.OPTION_REPLY_MAGIC, option, rep_type, len(payload)) + payload


class Catalog:
    def __init__(self, *exports: p.ExportInfo) -> None:
        self.exports = {export.name: export for export in exports}

    def find_export(self, name: str) -> p.ExportInfo | None:
        return self.exports.get(name)

    def list_exports(self) -> list[p.ExportInfo]:
        return list(self.exports.values())


RW = p.ExportInfo("disk", 1 << 20, read_only=False, description="the disk")
RO = p.ExportInfo("ro", 1 << 20, read_only=True)


def feed(conn: p.ServerConnection, data: bytes, bytewise: bool = False) -> list[Any]:
    """Feed ``data`` (one byte at a time if asked); collect the events."""
    events: list[Any] = []
    pieces = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not p.NEED_DATA:
            events.append(event)
            if isinstance(event, p.Closed):
                return events
    return events


def negotiated(export: str = "disk", structured: bool = True, meta: bool = True,
               catalog: Catalog | None = None) -> p.ServerConnection:
    conn = p.ServerConnection(catalog or Catalog(RW, RO))
    data = struct.pack(">I", 3)
    if structured:
        data += opt(p.Opt.STRUCTURED_REPLY)
        if meta:
            data += opt(p.Opt.SET_META_CONTEXT, meta_payload(export, p.BASE_ALLOCATION))
    data += opt(p.Opt.GO, name_payload(export))
    events = feed(conn, data)
    assert isinstance(events[-1], p.Ready)
    conn.data_to_send()
    return conn


# -- handshake -------------------------------------------------------------------------

def test_greeting_is_fixed_newstyle_with_no_zeroes() -> None:
    conn = p.ServerConnection(Catalog())
    assert conn.data_to_send() == b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x03"
    assert conn.data_to_send() == b""
    assert conn.next_event() is p.NEED_DATA


def test_unknown_client_flags_end_the_connection() -> None:
    conn = p.ServerConnection(Catalog())
    events = feed(conn, struct.pack(">I", 0x13))
    assert events == [p.Closed("Unknown client flags 0x10 received")]
    assert conn.next_event() == events[0]


@pytest.mark.parametrize("bytewise", [False, True])
def test_go_handshake_byte_by_byte(bytewise: bool) -> None:
    conn = p.ServerConnection(Catalog(RW))
    conn.data_to_send()
    data = struct.pack(">I", 3) + opt(p.Opt.GO, name_payload("disk", p.Info.NAME, p.Info.BLOCK_SIZE))
    events = feed(conn, data, bytewise)
    assert events == [p.Ready(RW)]
    flags = (p.FLAG_HAS_FLAGS | p.FLAG_SEND_FLUSH | p.FLAG_SEND_FUA | p.FLAG_SEND_CACHE | p.FLAG_SEND_TRIM
             | p.FLAG_SEND_WRITE_ZEROES | p.FLAG_SEND_FAST_ZERO)
    assert conn.data_to_send() == (
        rep(7, 3, b"\x00\x01disk")
        + rep(7, 3, b"\x00\x02the disk")
        + rep(7, 3, struct.pack(">HIII", 3, 1, 4096, 32 * MiB))
        + rep(7, 3, struct.pack(">HQH", 0, 1 << 20, flags))
        + rep(7, 1))
    assert conn.state is p.State.TRANSMISSION


def test_info_does_not_end_the_handshake_and_read_only_flags() -> None:
    conn = p.ServerConnection(Catalog(RO))
    conn.data_to_send()
    assert feed(conn, struct.pack(">I", 1) + opt(p.Opt.STRUCTURED_REPLY) + opt(p.Opt.INFO, name_payload("ro"))) == []
    flags = (p.FLAG_HAS_FLAGS | p.FLAG_SEND_FLUSH | p.FLAG_SEND_FUA | p.FLAG_SEND_CACHE | p.FLAG_READ_ONLY
             | p.FLAG_CAN_MULTI_CONN | p.FLAG_SEND_DF)
    assert conn.data_to_send() == (
        rep(8, 1)
        + rep(6, 3, struct.pack(">HIII", 3, 1, 4096, 32 * MiB))
        + rep(6, 3, struct.pack(">HQH", 0, 1 << 20, flags))
        + rep(6, 1))
    assert conn.state is p.State.OPTIONS


def test_info_insists_on_block_size_when_alignment_matters() -> None:
    aligned = p.ExportInfo("a", 8192, min_block=512)
    conn = p.ServerConnection(Catalog(aligned))
    conn.data_to_send()
    feed(conn, struct.pack(">I", 1) + opt(p.Opt.INFO, name_payload("a")))
    out = conn.data_to_send()
    assert out.endswith(rep(6, p.Rep.ERR_BLOCK_SIZE_REQD, b"request NBD_INFO_BLOCK_SIZE to use this export"))
    assert struct.pack(">HIII", 3, 512, 4096, 32 * MiB) in out


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name(no_zeroes: bool) -> None:
    conn = p.ServerConnection(Catalog(RO))
    conn.data_to_send()
    events = feed(conn, struct.pack(">I", 1 | (2 if no_zeroes else 0)) + opt(p.Opt.EXPORT_NAME, b"ro"))
    assert events == [p.Ready(RO)]
    reply = struct.pack(">QH", 1 << 20, 0x50F)  # as QEMU 7.2 (without DF)
    assert conn.data_to_send() == (reply if no_zeroes else reply + bytes(124))


def test_export_name_of_unknown_export_hangs_up() -> None:
    conn = p.ServerConnection(Catalog(RO))
    conn.data_to_send()
    assert feed(conn, struct.pack(">I", 1) + opt(p.Opt.EXPORT_NAME, b"nope")) == [p.Closed("export not found")]
    assert conn.data_to_send() == b""


def test_list_and_abort() -> None:
    conn = p.ServerConnection(Catalog(RW, RO))
    conn.data_to_send()
    events = feed(conn, struct.pack(">I", 1) + opt(p.Opt.LIST) + opt(p.Opt.LIST, b"x") + opt(p.Opt.ABORT))
    assert events == [p.Closed("client sent NBD_OPT_ABORT", clean=True)]
    assert conn.data_to_send() == (
        rep(3, 2, b"\x00\x00\x00\x04diskthe disk") + rep(3, 2, b"\x00\x00\x00\x02ro") + rep(3, 1)
        + rep(3, p.Rep.ERR_INVALID, b"option 'list' has unexpected length")
        + rep(2, 1))


def test_option_errors_keep_the_haggling_going() -> None:
    conn = p.ServerConnection(Catalog(RW))
    conn.data_to_send()
    events = feed(conn, struct.pack(">I", 1)
                  + opt(p.Opt.GO, name_payload("nope"))
                  + opt(p.Opt.STRUCTURED_REPLY)
                  + opt(p.Opt.STRUCTURED_REPLY)
                  + opt(p.Opt.STARTTLS)
                  + opt(p.Opt.EXTENDED_HEADERS)
                  + opt(p.Opt.PEEK_EXPORT, b"xyz")
                  + opt(p.Opt.GO, b"\x00\x00\x00\x10dis")
                  + opt(p.Opt.GO, b"\x00\x00\x00\x02d\x00\x00\x00")
                  + opt(p.Opt.GO, b"\x00\x00\x20\x00")
                  + opt(p.Opt.GO, name_payload("disk") + b"!"))
    assert events == []
    assert conn.data_to_send() == (
        rep(7, p.Rep.ERR_UNKNOWN, b"export 'nope' not present")
        + rep(8, 1)
        + rep(8, p.Rep.ERR_INVALID, b"structured reply already negotiated")
        + rep(5, p.Rep.ERR_POLICY, b"TLS not configured")
        + rep(11, p.Rep.ERR_UNSUP, b"Unsupported option 11 (<unknown>)")
        + rep(4, p.Rep.ERR_UNSUP, b"Unsupported option 4 (<unknown>)")
        + rep(7, p.Rep.ERR_INVALID, b"Inconsistent lengths in option go")
        + rep(7, p.Rep.ERR_INVALID, b"Unexpected embedded NUL in option go")
        + rep(7, p.Rep.ERR_INVALID, b"Invalid name length: 8192")
        + rep(7, p.Rep.ERR_INVALID, b"option 'go' has unexpected length"))


def test_long_names_are_shortened_in_errors() -> None:
    conn = p.ServerConnection(Catalog())
    conn.data_to_send()
    feed(conn, struct.pack(">I", 1) + opt(p.Opt.INFO, name_payload("x" * 100)))
    assert conn.data_to_send() == rep(6, p.Rep.ERR_UNKNOWN, b"export '" + b"x" * 80 + b"...' not present")


@pytest.mark.parametrize("data, reason", [
    (opt(p.Opt.LIST, magic=0x1234), "Bad magic received"),
    (struct.pack(">QII", p.IHAVEOPT, p.Opt.LIST, 32 * MiB + 1), "len (33554433) is larger than max len (33554432)"),
    (struct.pack(">QII", p.IHAVEOPT, p.Opt.EXPORT_NAME, 4097), "Bad length received"),
])
def test_fatal_option_errors(data: bytes, reason: str) -> None:
    conn = p.ServerConnection(Catalog(RW))
    assert feed(conn, struct.pack(">I", 1) + data) == [p.Closed(reason)]


def test_without_fixed_newstyle_only_export_name_is_allowed() -> None:
    conn = p.ServerConnection(Catalog(RW))
    assert feed(conn, struct.pack(">I", 0) + opt(p.Opt.LIST)) == [p.Closed("Unsupported option 3 (list)")]
    conn = p.ServerConnection(Catalog(RW))
    assert feed(conn, struct.pack(">I", 0) + opt(p.Opt.EXPORT_NAME, b"disk")) == [p.Ready(RW)]


def test_meta_contexts() -> None:
    conn = p.ServerConnection(Catalog(RW, RO))
    conn.data_to_send()
    context = struct.pack(">I", 0) + b"base:allocation"
    feed(conn, struct.pack(">I", 1)
         + opt(p.Opt.SET_META_CONTEXT, meta_payload("disk", "base:allocation"))
         + opt(p.Opt.LIST_META_CONTEXT, meta_payload("disk"))
         + opt(p.Opt.LIST_META_CONTEXT, meta_payload("disk", "base:", "qemu:dirty-bitmap:x"))
         + opt(p.Opt.LIST_META_CONTEXT, meta_payload("nope"))
         + opt(p.Opt.STRUCTURED_REPLY)
         + opt(p.Opt.SET_META_CONTEXT, meta_payload("disk", "base:", "other:thing"))
         + opt(p.Opt.SET_META_CONTEXT, meta_payload("disk", "base:allocation")))
    assert conn.data_to_send() == (
        rep(10, p.Rep.ERR_INVALID, b"request option 'set meta context' when structured reply is not negotiated")
        + rep(9, 4, context) + rep(9, 1)
        + rep(9, 4, context) + rep(9, 1)
        + rep(9, p.Rep.ERR_UNKNOWN, b"export 'nope' not present")
        + rep(8, 1)
        + rep(10, 1)
        + rep(10, 4, context) + rep(10, 1))
    assert conn.contexts == (p.BASE_ALLOCATION_ID,)
    # Going to another export than the one the contexts were set for drops them.
    feed(conn, opt(p.Opt.GO, name_payload("ro")))
    assert not conn.contexts


def test_dirty_bitmap_contexts_as_qemu() -> None:
    """The ``qemu:`` namespace as QEMU 7.2 answers it: empty leaves list
    a namespace but select nothing on SET; ids count from 2 for bitmaps."""
    disk = p.ExportInfo("disk", 1 << 20, read_only=False, bitmaps=("b1", "b2"))
    conn = p.ServerConnection(Catalog(disk))
    conn.data_to_send()

    def ctx(context_id: int, name: str) -> bytes:
        return struct.pack(">I", context_id) + name.encode()
    feed(conn, struct.pack(">I", 1) + opt(p.Opt.STRUCTURED_REPLY)
         + opt(p.Opt.LIST_META_CONTEXT, meta_payload("disk"))
         + opt(p.Opt.LIST_META_CONTEXT, meta_payload("disk", "qemu:"))
         + opt(p.Opt.LIST_META_CONTEXT, meta_payload("disk", "qemu:dirty-bitmap:", "qemu:allocation-depth"))
         + opt(p.Opt.SET_META_CONTEXT, meta_payload("disk", "qemu:", "qemu:dirty-bitmap:"))
         + opt(p.Opt.SET_META_CONTEXT, meta_payload("disk", "qemu:dirty-bitmap:b2", "qemu:dirty-bitmap:b3",
                                                    "base:allocation")))
    assert conn.data_to_send() == (
        rep(8, 1)
        + rep(9, 4, ctx(0, "base:allocation")) + rep(9, 4, ctx(0, "qemu:dirty-bitmap:b1"))
        + rep(9, 4, ctx(0, "qemu:dirty-bitmap:b2")) + rep(9, 1)
        + rep(9, 4, ctx(0, "qemu:dirty-bitmap:b1")) + rep(9, 4, ctx(0, "qemu:dirty-bitmap:b2")) + rep(9, 1)
        + rep(9, 4, ctx(0, "qemu:dirty-bitmap:b1")) + rep(9, 4, ctx(0, "qemu:dirty-bitmap:b2")) + rep(9, 1)
        + rep(10, 1)
        + rep(10, 4, ctx(0, "base:allocation")) + rep(10, 4, ctx(3, "qemu:dirty-bitmap:b2")) + rep(10, 1))
    assert conn.contexts == (0, 3)


def test_end_of_file_during_handshake_is_unclean() -> None:
    conn = p.ServerConnection(Catalog(RW))
    conn.receive_data(struct.pack(">I", 1) + opt(p.Opt.LIST)[:5])
    assert conn.next_event() is p.NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == p.Closed("Unexpected end-of-file before all bytes were read")


# -- transmission ------------------------------------------------------------------------

@pytest.mark.parametrize("bytewise", [False, True])
def test_requests_byte_by_byte(bytewise: bool) -> None:
    conn = negotiated()
    data = (req(p.Cmd.READ, 4096, 512, cookie=7, flags=p.CMD_FLAG_DF)
            + req(p.Cmd.WRITE, 512, 3, cookie=8, flags=p.CMD_FLAG_FUA) + b"abc"
            + req(p.Cmd.WRITE_ZEROES, 0, 4096, cookie=9, flags=p.CMD_FLAG_NO_HOLE)
            + req(p.Cmd.TRIM, 0, 4096, cookie=10)
            + req(p.Cmd.FLUSH, cookie=11)
            + req(p.Cmd.BLOCK_STATUS, 0, 1 << 20, cookie=0xFFFFFFFFFFFFFFFF, flags=p.CMD_FLAG_REQ_ONE)
            + req(p.Cmd.DISC, cookie=12))
    assert feed(conn, data, bytewise) == [
        p.Request(7, p.Cmd.READ, p.CMD_FLAG_DF, 4096, 512),
        p.Request(8, p.Cmd.WRITE, p.CMD_FLAG_FUA, 512, 3, b"abc"),
        p.Request(9, p.Cmd.WRITE_ZEROES, p.CMD_FLAG_NO_HOLE, 0, 4096),
        p.Request(10, p.Cmd.TRIM, 0, 0, 4096),
        p.Request(11, p.Cmd.FLUSH, 0, 0, 0),
        p.Request(0xFFFFFFFFFFFFFFFF, p.Cmd.BLOCK_STATUS, p.CMD_FLAG_REQ_ONE, 0, 1 << 20),
        p.Closed("client sent NBD_CMD_DISC", clean=True),
    ]
    assert conn.data_to_send() == b""


def error_reply(cookie: int, error: int, message: str) -> bytes:
    text = message.encode()
    return (struct.pack(">IHHQI", p.STRUCTURED_REPLY_MAGIC, 1, p.ReplyType.ERROR, cookie, 6 + len(text))
            + struct.pack(">IH", error, len(text)) + text)


@pytest.mark.parametrize("export, data, error, message", [
    ("ro", req(p.Cmd.WRITE, 0, 2) + b"xy", p.EPERM, "Export is read-only"),
    ("ro", req(p.Cmd.TRIM, 0, 512), p.EPERM, "Export is read-only"),
    ("ro", req(p.Cmd.WRITE_ZEROES, 0, 512), p.EPERM, "Export is read-only"),
    ("disk", req(p.Cmd.WRITE, MiB - 1, 2) + b"xy", p.ENOSPC,
     "operation past EOF; From: 1048575, Len: 2, Size: 1048576"),
    ("disk", req(p.Cmd.WRITE_ZEROES, MiB, 1), p.ENOSPC, "operation past EOF; From: 1048576, Len: 1, Size: 1048576"),
    ("disk", req(p.Cmd.READ, 2 * MiB, 0), p.EINVAL, "operation past EOF; From: 2097152, Len: 0, Size: 1048576"),
    ("disk", req(p.Cmd.TRIM, 0xFFFFFFFFFFFFFFFF, 2), p.EINVAL,
     "operation past EOF; From: 18446744073709551615, Len: 2, Size: 1048576"),
    ("disk", req(p.Cmd.READ, 0, 33 * MiB), p.EINVAL, "len (34603008 ) is larger than max len (33554432)"),
    ("disk", req(p.Cmd.READ, 0, 512, flags=p.CMD_FLAG_REQ_ONE), p.EINVAL,
     "unsupported flags for command read (got 0x8)"),
    ("disk", req(p.Cmd.WRITE_ZEROES, 0, 512, flags=0x40), p.EINVAL,
     "unsupported flags for command write zeroes (got 0x40)"),
    ("disk", req(p.Cmd.BLOCK_STATUS, 0, 0), p.EINVAL, "need non-zero length"),
    ("disk", req(p.Cmd.CACHE, 0, MiB + 1), p.EINVAL, "operation past EOF; From: 0, Len: 1048577, Size: 1048576"),
    ("disk", req(8, 0, 0), p.EINVAL, "invalid request type (8) received"),
    ("disk", req(42, 0, 0), p.EINVAL, "invalid request type (42) received"),
])
def test_bad_requests_get_error_replies(export: str, data: bytes, error: int, message: str) -> None:
    conn = negotiated(export)
    assert feed(conn, data + req(p.Cmd.FLUSH, cookie=2)) == [p.Request(2, p.Cmd.FLUSH, 0, 0, 0)]
    assert conn.data_to_send() == error_reply(1, error, message)


def test_simple_replies_carry_the_error_number_only() -> None:
    conn = negotiated("ro", structured=False)
    feed(conn, req(p.Cmd.WRITE, 0, 1, cookie=5) + b"x" + req(p.Cmd.BLOCK_STATUS, 0, 512, cookie=6)
         + req(p.Cmd.READ, 0, 512, cookie=7, flags=p.CMD_FLAG_DF))
    assert conn.data_to_send() == (struct.pack(">IIQ", p.SIMPLE_REPLY_MAGIC, p.EPERM, 5)
                                   + struct.pack(">IIQ", p.SIMPLE_REPLY_MAGIC, p.EINVAL, 6)
                                   + struct.pack(">IIQ", p.SIMPLE_REPLY_MAGIC, p.EINVAL, 7))


def test_oversized_write_is_refused_and_hangs_up() -> None:
    conn = negotiated()
    events = feed(conn, req(p.Cmd.WRITE, 0, 32 * MiB + 1))
    assert events == [p.Closed("Request handling failed in intermediate state")]
    assert conn.data_to_send() == error_reply(1, p.EINVAL, "len (33554433 ) is larger than max len (33554432)")


def test_block_status_needs_the_context() -> None:
    conn = negotiated(meta=False)
    feed(conn, req(p.Cmd.BLOCK_STATUS, 0, 512))
    assert conn.data_to_send() == error_reply(1, p.EINVAL, "CMD_BLOCK_STATUS not negotiated")


def test_bad_request_magic_and_eof() -> None:
    conn = negotiated()
    assert feed(conn, req(p.Cmd.READ, magic=0xDEADBEEF)) == [p.Closed("invalid magic (got 0xdeadbeef)")]
    conn = negotiated()
    conn.receive_data(req(p.Cmd.WRITE, 0, 10) + b"abc")
    assert conn.next_event() is p.NEED_DATA
    conn.receive_data(b"")
    assert not conn.next_event().clean  # type: ignore[union-attr]
    conn = negotiated()
    conn.receive_data(b"")
    assert conn.next_event() == p.Closed("client closed the connection", clean=True)


def test_reply_encoders() -> None:
    assert p.simple_reply(0x0102030405060708, 0) == bytes.fromhex("67446698 00000000 0102030405060708")
    assert p.none_chunk(3) == bytes.fromhex("668e33ef 0001 0000 0000000000000003 00000000")
    assert b"".join(p.offset_data_chunk(3, 4096, b"xy", False)) == (
        bytes.fromhex("668e33ef 0000 0001 0000000000000003 0000000a 0000000000001000") + b"xy")
    assert p.offset_hole_chunk(3, 512, 1024, True) == bytes.fromhex(
        "668e33ef 0001 0002 0000000000000003 0000000c 0000000000000200 00000400")
    assert p.block_status_chunk(3, 0, [(4096, 0), (8192, 3)], True) == bytes.fromhex(
        "668e33ef 0001 0005 0000000000000003 00000014 00000000 00001000 00000000 00002000 00000003")
    assert p.error_chunk(3, p.EIO, "oops") == bytes.fromhex(
        "668e33ef 0001 8001 0000000000000003 0000000a 00000005 0004") + b"oops"
    assert p.nbd_error(30) == p.EPERM and p.nbd_error(122) == p.ENOSPC and p.nbd_error(2) == p.EINVAL


# -- against real clients ---------------------------------------------------------------

needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                reason="qemu-utils is not installed")


class SparseFileNode(FileNode):
    """A FileNode that reports holes as zeroes (SEEK_DATA/SEEK_HOLE), to test block status."""

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        try:
            data = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError:
            return Extent(length, Status.ZERO)
        if data > offset:
            return Extent(min(length, data - offset), Status.ZERO)
        hole = os.lseek(self.fd, offset, os.SEEK_HOLE)
        return Extent(min(length, hole - offset), Status.DATA | Status.ALLOCATED, offset)

    async def _co_discard(self, offset: int, length: int) -> None:
        # Discarded blocks read as zeroes here, so tests can check them.
        await self._co_write_zeroes(offset, length, True)


async def run(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode()


class Setup(SimpleNamespace):
    server: NBDServer
    sock: str
    image: Path
    node: FileNode

    def uri(self, name: str = "exp") -> str:
        return f"nbd+unix:///{name}?socket={self.sock}"


@pytest.fixture
async def nbd(tmp_path: Path) -> AsyncIterator[Setup]:
    image = tmp_path / "image.raw"
    with open(image, "wb") as f:
        f.truncate(SIZE)
        f.seek(MiB)
        f.write(bytes(range(256)) * 256)
    node = SparseFileNode("disk0", str(image))
    await node.open()
    server = NBDServer()
    sock = str(tmp_path / "nbd.sock")
    await server.start(sock)
    server.add_export(Export.of("exp", node, writable=True, description="test disk"))
    yield Setup(server=server, sock=sock, image=image, node=node)
    await server.stop()
    assert node.parents == []
    assert not os.path.exists(sock)
    await node.close()


@needs_qemu
async def test_qemu_img_info_and_compare(nbd: Setup) -> None:
    code, out = await run("qemu-img", "info", "--output=json", nbd.uri())
    assert code == 0, out
    assert json.loads(out)["virtual-size"] == SIZE
    code, out = await run("qemu-img", "compare", nbd.uri(), str(nbd.image))
    assert code == 0, out


@needs_qemu
async def test_qemu_io_writes_and_reads(nbd: Setup) -> None:
    code, out = await run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 65536",
                          "-c", "read -P 0x5a 4096 65536", "-c", "write -f -P 0x11 0 512",
                          "-c", "flush", nbd.uri())
    assert code == 0 and "Pattern verification failed" not in out, out
    data = nbd.image.read_bytes()
    assert data[4096:4096 + 65536] == b"\x5a" * 65536 and data[:512] == b"\x11" * 512
    code, out = await run("qemu-img", "compare", nbd.uri(), str(nbd.image))
    assert code == 0, out


@needs_qemu
async def test_block_status_and_sparse_reads(nbd: Setup) -> None:
    code, out = await run("qemu-img", "map", "--output=json", nbd.uri())
    assert code == 0, out
    extents = [(e["start"], e["length"], e["data"], e["zero"]) for e in json.loads(out)]
    assert extents == [(0, MiB, False, True), (MiB, 65536, True, False),
                       (MiB + 65536, SIZE - MiB - 65536, False, True)]
    # A read across data and holes comes back as data and hole chunks.
    code, out = await run("qemu-io", "-f", "raw", "-c", f"read -P 0 0 {MiB}",
                          "-c", f"read -P 0 {MiB + 65536} 65536", "-c", f"read 0 {4 * MiB}", nbd.uri())
    assert code == 0 and "verification failed" not in out, out


@needs_qemu
async def test_discard_and_write_zeroes(nbd: Setup) -> None:
    code, out = await run("qemu-io", "-f", "raw", "-c", f"discard {MiB} 4096",
                          "-c", f"write -z {MiB + 8192} 8192", "-c", f"write -z -u {MiB + 32768} 4096",
                          "-c", f"read -P 0 {MiB} 4096", "-c", f"read -P 0 {MiB + 8192} 8192", nbd.uri())
    assert code == 0 and "verification failed" not in out, out
    data = nbd.image.read_bytes()
    assert data[MiB:MiB + 4096] == bytes(4096)
    assert data[MiB + 8192:MiB + 16384] == bytes(8192)
    assert data[MiB + 32768:MiB + 32768 + 4096] == bytes(4096)
    assert data[MiB + 4096:MiB + 8192] == (bytes(range(256)) * 16)


@needs_qemu
async def test_read_only_export_refuses_writes(nbd: Setup, tmp_path: Path) -> None:
    nbd.server.add_export(Export.of("ro", nbd.node, writable=False))
    before = nbd.image.read_bytes()
    code, out = await run("qemu-io", "-f", "raw", "-c", "write -P 1 0 512", nbd.uri("ro"))
    assert code != 0 or "failed" in out, out
    assert nbd.image.read_bytes() == before
    code, out = await run("qemu-io", "-r", "-f", "raw", "-c", f"read -P 0 0 {MiB}", nbd.uri("ro"))
    assert code == 0 and "verification failed" not in out, out
    # Each export holds its own root edge; removing one drops only its edge.
    assert [edge.name for edge in nbd.node.parents] == ["root", "root"]
    await nbd.server.remove_export("ro")
    assert [edge.parent for edge in nbd.node.parents] == [nbd.server.exports["exp"].backend]


@needs_qemu
async def test_several_exports(nbd: Setup, tmp_path: Path) -> None:
    other = tmp_path / "other.raw"
    other.write_bytes(b"\xee" * 65536)
    node = FileNode("disk1", str(other), read_only=True)
    await node.open()
    nbd.server.add_export(Export.of("other", node))
    with pytest.raises(QMPError, match="NBD server already has export named 'other'"):
        nbd.server.add_export(Export.of("other", node))
    results = await asyncio.gather(run("qemu-img", "compare", nbd.uri(), str(nbd.image)),
                                   run("qemu-img", "compare", nbd.uri("other"), str(other)))
    assert all(code == 0 for code, _ in results), results
    code, out = await run("qemu-img", "info", nbd.uri("missing"))
    assert code != 0 and "not present" in out, out
    await nbd.server.remove_export("other")
    await node.close()


# -- a raw client, for what the tools do not do ------------------------------------------------

async def raw_client(sock: str, export: str = "exp") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(sock)
    assert await reader.readexactly(18) == b"NBDMAGICIHAVEOPT\x00\x03"
    writer.write(struct.pack(">I", 3) + opt(p.Opt.STRUCTURED_REPLY) + opt(p.Opt.GO, name_payload(export)))
    while True:
        _, option, rep_type, length = struct.unpack(">QIII", await reader.readexactly(20))
        await reader.readexactly(length)
        assert rep_type < 1 << 31
        if option == p.Opt.GO and rep_type == p.Rep.ACK:
            return reader, writer


async def read_chunk(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    """One structured chunk, or a simple reply as (error, -1, cookie, b"")."""
    head = await reader.readexactly(16)
    if head[:4] == struct.pack(">I", p.SIMPLE_REPLY_MAGIC):
        _, error, cookie = struct.unpack(">IIQ", head)
        return error, -1, cookie, b""
    magic, flags, kind, cookie, length = struct.unpack(">IHHQI", head + await reader.readexactly(4))
    assert magic == p.STRUCTURED_REPLY_MAGIC
    return flags, kind, cookie, await reader.readexactly(length)


async def wait_for_no_clients(server: NBDServer) -> None:
    for client in list(server._clients):
        await asyncio.wait_for(client.finished.wait(), 10)


async def test_many_requests_in_flight_are_all_answered(nbd: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmd.block.nbd import server as server_module
    admit = server_module._Client._admit
    most = 0

    def counting_admit(self: Any, request: p.Request) -> None:
        nonlocal most
        admit(self, request)
        most = max(most, self._requests)

    monkeypatch.setattr(server_module._Client, "_admit", counting_admit)
    read = nbd.node._co_read

    async def waiting_read(offset: int, buf: memoryview) -> None:
        await asyncio.sleep(0)  # as a disk read would: the request must wait
        await read(offset, buf)

    monkeypatch.setattr(nbd.node, "_co_read", waiting_read)
    reader, writer = await raw_client(nbd.sock)
    count = 50
    writer.write(b"".join(req(p.Cmd.READ, MiB, 4096, cookie=i) for i in range(count))
                 + req(p.Cmd.FLUSH, cookie=1000))
    seen: dict[int, bytes] = {}
    flush_seen = False
    while len(seen) < count or not flush_seen:
        flags, kind, cookie, payload = await read_chunk(reader)
        if cookie == 1000:
            assert (flags, kind) == (0, -1)   # a simple reply, as QEMU sends
            flush_seen = True
            continue
        assert kind == p.ReplyType.OFFSET_DATA and flags & p.REPLY_FLAG_DONE
        seen[cookie] = payload[8:]
    assert set(seen) == set(range(count))
    assert 1 < most <= server_module.MAX_REQUESTS
    assert all(data == bytes(range(256)) * 16 for data in seen.values())
    writer.write(req(p.Cmd.DISC))
    assert await reader.read() == b""
    writer.close()


async def test_requests_needing_no_wait_are_served_without_a_task(
        nbd: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads the page cache serves are answered in the receive loop; a
    request that has to wait goes on in a task and is answered too."""
    from vmd.block.nbd import server as server_module
    tasks = 0
    go_on = server_module._go_on

    def counting_go_on(*args: Any) -> Any:
        nonlocal tasks
        tasks += 1
        return go_on(*args)

    monkeypatch.setattr(server_module, "_go_on", counting_go_on)
    reader, writer = await raw_client(nbd.sock)
    for cookie in range(3):   # the data is in the page cache: no wait
        writer.write(req(p.Cmd.READ, MiB, 4096, cookie=cookie))
        assert (await read_chunk(reader))[2] == cookie
    assert tasks == 0
    writer.write(req(p.Cmd.FLUSH, cookie=7))  # fdatasync waits for a worker
    assert (await read_chunk(reader))[:3] == (0, -1, 7)
    assert tasks == 1
    writer.write(req(p.Cmd.DISC))
    assert await reader.read() == b""
    writer.close()


async def test_client_vanishing_mid_request_costs_nothing(nbd: Setup) -> None:
    # Many large reads, never read back; then a write whose payload never comes.
    reader, writer = await raw_client(nbd.sock)
    writer.write(b"".join(req(p.Cmd.READ, 0, SIZE, cookie=i) for i in range(40)))
    writer.write(req(p.Cmd.WRITE, 0, 65536, cookie=99) + b"x" * 100)
    await writer.drain()
    writer.transport.abort()
    await wait_for_no_clients(nbd.server)
    assert nbd.image.read_bytes()[:100] == bytes(100)
    # A client hanging up during the handshake too.
    reader, writer = await asyncio.open_unix_connection(nbd.sock)
    await reader.readexactly(18)
    writer.write(struct.pack(">I", 3) + opt(p.Opt.GO)[:10])
    writer.close()
    await wait_for_no_clients(nbd.server)
    assert nbd.server._clients == set()
    # The server still serves.
    reader, writer = await raw_client(nbd.sock)
    writer.write(req(p.Cmd.READ, MiB, 256, cookie=5))
    flags, kind, cookie, payload = await read_chunk(reader)
    assert (cookie, kind, payload[8:]) == (5, p.ReplyType.OFFSET_DATA, bytes(range(256)))
    writer.close()


async def test_removing_an_export_disconnects_its_clients(nbd: Setup) -> None:
    reader, writer = await raw_client(nbd.sock)
    assert len(nbd.server.exports["exp"].clients) == 1
    await nbd.server.remove_export("exp")
    assert await reader.read() == b""
    assert nbd.node.parents == []
    writer.close()


needs_nbdinfo = pytest.mark.skipif(shutil.which("nbdinfo") is None, reason="nbdinfo (libnbd-bin) is not installed")


@needs_nbdinfo
async def test_nbdinfo(nbd: Setup) -> None:
    code, out = await run("nbdinfo", "--json", nbd.uri())
    assert code == 0, out
    info = json.loads(out)
    export = info["exports"][0]
    assert info["protocol"] == "newstyle-fixed" and export["export-size"] == SIZE
    assert export["description"] == "test disk"
    assert export["is_read_only"] is False and export["can_multi_conn"] is False
    assert export["can_trim"] and export["can_zero"] and export["can_fua"] and export["can_df"]
    assert export["can_fast_zero"] and export["can_cache"]
    assert "base:allocation" in export["contexts"]
    assert export["block_size_maximum"] == 32 * MiB
    code, out = await run("nbdinfo", "--map", nbd.uri())
    assert code == 0, out
    assert [line.split()[:3] for line in out.splitlines()] == [
        ["0", str(MiB), "3"], [str(MiB), "65536", "0"], [str(MiB + 65536), str(SIZE - MiB - 65536), "3"]]
    nbd.server.add_export(Export.of("ro", nbd.node))
    code, out = await run("nbdinfo", "--list", "--json", f"nbd+unix://?socket={nbd.sock}")
    assert code == 0, out
    exports = {e["export-name"]: e for e in json.loads(out)["exports"]}
    assert set(exports) == {"exp", "ro"}
    assert exports["ro"]["is_read_only"] and exports["ro"]["can_multi_conn"]


# -- QMP commands ---------------------------------------------------------------------------------

class Events:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def emit(self, name: str, data: Any) -> None:
        self.sent.append((name, data))


class Graph:
    def __init__(self, *nodes: FileNode) -> None:
        self.nodes = {node.node_name: node for node in nodes}
        self.backends: list[Any] = []

    def get(self, name: str) -> FileNode | None:
        return self.nodes.get(name)

    def find(self, name: str) -> FileNode:
        if name not in self.nodes:
            raise QMPError(f"Cannot find device='' nor node-name='{name}'")
        return self.nodes[name]


def nbd_server_add(ctx: Any, **arguments: Any) -> None:
    """``nbd-server-add`` through its generated marshaller (its arguments are boxed)."""
    from vmd._generated.commands import COMMANDS
    wire = {key.replace("_", "-"): value for key, value in arguments.items()}
    COMMANDS["nbd-server-add"].marshal(qmp_nbd_server_add, ctx, wire)


def unix(path: str) -> Any:
    return SimpleNamespace(type="unix", u=SimpleNamespace(data=SimpleNamespace(path=path)))


def export_options(id: str, node: str, writable: bool = False, name: str | None = None,
                   description: str | None = None) -> Any:
    return SimpleNamespace(type="nbd", id=id, node_name=node, writable=writable,
                           u=SimpleNamespace(name=name, description=description, bitmaps=None,
                                             allocation_depth=None))


@needs_qemu
async def test_qmp_commands(tmp_path: Path) -> None:
    image = tmp_path / "a.raw"
    image.write_bytes(bytes(65536))
    (tmp_path / "b.raw").write_bytes(bytes(65536))
    rw = FileNode("f", str(image))
    ro = FileNode("ro", str(tmp_path / "b.raw"), read_only=True)
    await rw.open()
    await ro.open()
    ctx = SimpleNamespace(daemon=SimpleNamespace(block=Graph(rw, ro), events=Events(), nbd=NBDExports()))
    sock = str(tmp_path / "nbd.sock")

    async def fails(text: str, call: Any) -> None:
        with pytest.raises(QMPError) as info:
            result = call()
            if asyncio.iscoroutine(result):
                await result
        assert info.value.desc == text

    await fails("NBD server not running", lambda: qmp_nbd_server_stop(ctx))
    await fails("NBD server not running", lambda: qmp_block_export_add(ctx, export_options("e1", "f")))
    await fails("NBD server not running", lambda: nbd_server_add(ctx, device="f"))
    await fails("Export 'x' is not found", lambda: qmp_nbd_server_remove(ctx, "x"))
    await qmp_nbd_server_start(ctx, unix(sock))
    await fails("NBD server already running", lambda: qmp_nbd_server_start(ctx, unix(sock + "2")))
    qmp_block_export_add(ctx, export_options("e1", "f"))
    await fails("Block export id 'e1' is already in use", lambda: qmp_block_export_add(ctx, export_options("e1", "f")))
    await fails("NBD server already has export named 'f'",
                lambda: qmp_block_export_add(ctx, export_options("e2", "f")))
    await fails("Cannot export read-only node as writable",
                lambda: qmp_block_export_add(ctx, export_options("e5", "ro", writable=True, name="rw")))
    await fails("Cannot find device='' nor node-name='nope'",
                lambda: qmp_block_export_add(ctx, export_options("e6", "nope")))
    await fails("Invalid block export id", lambda: qmp_block_export_add(ctx, export_options("bad id!", "f")))
    await fails("Cannot find device='nope' nor node-name='nope'", lambda: nbd_server_add(ctx, device="nope"))
    await fails(f"export name '{'x' * 5000}' too long",
                lambda: qmp_block_export_add(ctx, export_options("e7", "f", name="x" * 5000)))
    nbd_server_add(ctx, device="ro", name="ro1", writable=True)   # quietly read-only
    await fails("Block export id 'ro1' is already in use", lambda: nbd_server_add(ctx, device="ro", name="ro1"))
    assert to_wire(qmp_query_block_exports(ctx)) == [
        {"type": "nbd", "id": "ro1", "node-name": "ro", "shutting-down": False},
        {"type": "nbd", "id": "e1", "node-name": "f", "shutting-down": False}]
    assert nbd_state(ctx.daemon).exports["ro1"].writable is False

    code, out = await run("qemu-img", "compare", f"nbd+unix:///f?socket={sock}", str(image))
    assert code == 0, out
    # A client still connected: 'safe' removal is refused, 'hard' goes ahead.
    reader, writer = await raw_client(sock, "ro1")
    await fails("export 'ro1' still in use", lambda: qmp_nbd_server_remove(ctx, "ro1"))
    await qmp_nbd_server_remove(ctx, "ro1", "hard")
    assert await reader.read() == b""
    writer.close()
    await qmp_block_export_del(ctx, "e1")
    await fails("Export 'e1' is not found", lambda: qmp_block_export_del(ctx, "e1"))
    qmp_block_export_add(ctx, export_options("e3", "f", writable=True, name="w"))
    await qmp_nbd_server_stop(ctx)
    assert to_wire(qmp_query_block_exports(ctx)) == []
    assert ctx.daemon.events.sent == [("BLOCK_EXPORT_DELETED", {"id": i}) for i in ("ro1", "e1", "e3")]
    assert rw.parents == [] and ro.parents == [] and ctx.daemon.block.backends == []
    await fails(f"Failed to bind socket to {tmp_path}/no/such.sock: No such file or directory",
                lambda: qmp_nbd_server_start(ctx, unix(str(tmp_path / "no/such.sock"))))
    inet = SimpleNamespace(type="inet", u=SimpleNamespace(data=SimpleNamespace(host="127.0.0.1", port="0")))
    await qmp_nbd_server_start(ctx, inet)
    server = nbd_state(ctx.daemon).server
    assert server is not None
    qmp_block_export_add(ctx, export_options("t", "ro", name="tcp"))
    port = server.sockets()[0].getsockname()[1]
    code, out = await run("qemu-img", "compare", f"nbd://127.0.0.1:{port}/tcp", str(tmp_path / "b.raw"))
    assert code == 0, out
    await qmp_nbd_server_stop(ctx)
    await rw.close()
    await ro.close()
