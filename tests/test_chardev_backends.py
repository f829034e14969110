"""Chardev backends: null, ringbuf/memory, file, pipe, pty, stdio, mux stub.

The first half opens backends in-process on a uvloop loop with a recording
front end and real files, FIFOs and ptys; the second half drives a real vmd
over QMP. Nothing sleeps for a fixed time: waits poll a condition against a
deadline.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.harness import RawQMP, VmdProcess, until, vmd_command
from vmd._generated.types import DataFormat, visit_ChardevBackend
from vmd.chardev.base import OUTPUT_LIMIT, Chardev
from vmd.chardev.pty import PtyChardev
from vmd.chardev.registry import ChardevRegistry
from vmd.chardev.ringbuf import RingbufChardev, decode_input, encode_output
from vmd.chardev.stdio import StdioChardev
from vmd.qmp.errors import QMPError

DEADLINE = 5.0


def on_uvloop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on uvloop, the daemon's loop (epoll rules included)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        uvloop.run(test(*args, **kwargs))
    return run


class Recorder:
    """A front end that records everything; ``room`` limits its input."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.data = bytearray()
        self.opened = 0
        self.closed = 0
        self.writable_calls = 0
        self.breaks = 0

    def chr_open(self) -> None:
        self.opened += 1

    def chr_close(self) -> None:
        self.closed += 1

    def chr_can_receive(self) -> int:
        return self.room

    def chr_receive(self, data: bytes) -> None:
        assert len(data) <= self.room
        self.room -= len(data)
        self.data += data

    def chr_writable(self) -> None:
        self.writable_calls += 1

    def chr_break(self) -> None:
        self.breaks += 1


async def add(registry: ChardevRegistry, chardev_id: str, kind: str, **data: Any) -> Chardev:
    return await registry.add(chardev_id, visit_ChardevBackend({"type": kind, "data": data}, None, ""))


async def attach(registry: ChardevRegistry, chardev_id: str, kind: str, room: int = 1 << 30,
                 **data: Any) -> tuple[Chardev, Recorder]:
    chardev = await add(registry, chardev_id, kind, **data)
    frontend = Recorder(room)
    chardev.attach(frontend)
    return chardev, frontend


def read_nonblocking(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


async def read_exactly(fd: int, size: int) -> bytes:
    got = bytearray()

    def more() -> bool:
        got.extend(read_nonblocking(fd))
        return len(got) >= size
    await until(more)
    return bytes(got)


# -- null, mux ----------------------------------------------------------------


@on_uvloop
async def test_null_takes_everything() -> None:
    registry = ChardevRegistry()
    chardev, frontend = await attach(registry, "n0", "null")
    assert chardev.connected and frontend.opened == 1
    assert chardev.write(b"x" * 100000) == 100000
    assert chardev.filename() == "null"
    assert chardev.frontend_open
    await registry.close_all()


@on_uvloop
async def test_mux_needs_its_base() -> None:
    # The mux itself is tested in test_hmp_monitor.py.
    with pytest.raises(QMPError, match="Failed to add chardev 'm0': mux: base chardev x not found"):
        await add(ChardevRegistry(), "m0", "mux", chardev="x")


# -- ringbuf --------------------------------------------------------------------


@on_uvloop
async def test_ringbuf_keeps_frontend_output_in_order() -> None:
    registry = ChardevRegistry()
    chardev, frontend = await attach(registry, "r0", "ringbuf", size=8)
    assert isinstance(chardev, RingbufChardev)
    assert chardev.filename() == "ringbuf" and chardev.connected
    assert chardev.write(b"abc") == 3
    assert chardev.read_data(2) == b"ab"
    assert chardev.write(b"defghi") == 6  # wraps around the end of the ring
    assert chardev.read_data(100) == b"cdefghi"
    assert chardev.read_data(100) == b""
    assert frontend.data == b""  # a ringbuf never sends input


@on_uvloop
async def test_ringbuf_overflow_drops_the_oldest() -> None:
    registry = ChardevRegistry()
    chardev = await add(registry, "r4", "ringbuf", size=4)
    assert isinstance(chardev, RingbufChardev)
    chardev.write_data(b"abcdefgh")
    assert chardev.read_data(100) == b"efgh"
    chardev.write_data(b"ab")
    chardev.write_data(b"cde")
    assert chardev.read_data(2) == b"bc"
    chardev.write_data(b"123456789")
    assert chardev.read_data(100) == b"6789"
    default = await add(registry, "r64", "memory")
    assert isinstance(default, RingbufChardev) and default.filename() == "memory"
    default.write_data(bytes(range(256)) * 300)
    assert default.read_data(1 << 20) == (bytes(range(256)) * 300)[-65536:]


@on_uvloop
async def test_ringbuf_size_checks() -> None:
    registry = ChardevRegistry()
    for size in (3, 100, -4):
        with pytest.raises(QMPError, match="size of ringbuf chardev must be power of two"):
            await add(registry, "bad", "ringbuf", size=size)
    empty = await add(registry, "r0", "ringbuf", size=0)  # QEMU accepts it too
    assert isinstance(empty, RingbufChardev)
    empty.write_data(b"abc")
    assert empty.read_data(10) == b""
    with pytest.raises(QMPError, match="Chardev with id 'r0' already exists"):
        await add(registry, "r0", "null")


def test_ringbuf_data_formats() -> None:
    assert decode_input("h\u00e9\u0000", None) == b"h\xc3\xa9\xc0\x80"  # QEMU's modified UTF-8
    assert decode_input("aGVsbG8=", DataFormat.BASE64) == b"hello"
    # g_base64_decode's leniency, as observed with QEMU 7.2
    assert decode_input("Y\nWJj", DataFormat.BASE64) == b"abc"
    assert decode_input("YW=Jj", DataFormat.BASE64) == b"a\t"
    assert decode_input("YWJ", DataFormat.BASE64) == b""
    assert decode_input("/w==", DataFormat.BASE64) == b"\xff"
    for bad in ("YW*", "YW Jj", "YWJj\r\n"):
        with pytest.raises(QMPError, match="Base64 data contains invalid characters"):
            decode_input(bad, DataFormat.BASE64)
    assert encode_output(b"\xff", DataFormat.UTF8) == "\ufffd"
    assert encode_output(b"\xc3\xa9\xc0\x80x", None) == "\u00e9\u0000x"
    assert encode_output(b"a\x00b", DataFormat.UTF8) == "a"  # a C string, as QEMU returns it
    assert encode_output(b"a\x00b", DataFormat.BASE64) == "YQBi"
    assert encode_output(b" worldhello", DataFormat.BASE64) == "IHdvcmxkaGVsbG8="


# -- file -------------------------------------------------------------------------


@on_uvloop
async def test_file_output_truncate_and_append(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"old")
    registry = ChardevRegistry()
    chardev, _ = await attach(registry, "f0", "file", out=str(out))
    assert chardev.filename() == "file" and chardev.connected
    assert chardev.write(b"new") == 3
    assert out.read_bytes() == b"new"
    chardev.detach()
    await registry.remove("f0")
    chardev, _ = await attach(registry, "f1", "file", out=str(out), append=True)
    assert chardev.write(b"+more") == 5
    assert out.read_bytes() == b"new+more"
    await registry.close_all()


@on_uvloop
async def test_file_input_honours_flow_control(tmp_path: Path) -> None:
    source = tmp_path / "in"
    payload = os.urandom(50000)
    source.write_bytes(payload)
    registry = ChardevRegistry()
    chardev, frontend = await attach(registry, "f0", "file", room=1000, out=str(tmp_path / "out"),
                                     **{"in": str(source)})
    await until(lambda: len(frontend.data) == 1000)
    while len(frontend.data) < len(payload):
        size = len(frontend.data)
        frontend.room = 7000
        chardev.accept_input()
        await until(lambda size=size: len(frontend.data) == min(len(payload), size + 7000))
    assert frontend.data == payload
    assert chardev.connected  # EOF ends input only; output still goes to the file
    assert chardev.write(b"x") == 1
    await registry.close_all()


@on_uvloop
async def test_file_open_errors(tmp_path: Path) -> None:
    registry = ChardevRegistry()
    with pytest.raises(QMPError) as error:
        await add(registry, "f0", "file", out="/nonexistent/x")
    assert str(error.value) == "Failed to add chardev 'f0': Could not open '/nonexistent/x': No such file or directory"
    with pytest.raises(QMPError) as error:
        await add(registry, "f1", "file", out=str(tmp_path / "o"), **{"in": "/nonexistent/in"})
    assert str(error.value) == ("Failed to add chardev 'f1': Could not open '/nonexistent/in': "
                                "No such file or directory")
    assert registry.get("f0") is None and registry.get("f1") is None


# -- pipe -------------------------------------------------------------------------


@pytest.fixture
def fifos(tmp_path: Path) -> Path:
    base = tmp_path / "pipe"
    os.mkfifo(f"{base}.in")
    os.mkfifo(f"{base}.out")
    return base


@on_uvloop
async def test_pipe_in_and_out_fifos(fifos: Path) -> None:
    registry = ChardevRegistry()
    chardev, frontend = await attach(registry, "p0", "pipe", device=str(fifos))
    assert chardev.filename() == "pipe" and chardev.connected
    writer = os.open(f"{fifos}.in", os.O_WRONLY | os.O_NONBLOCK)
    reader = os.open(f"{fifos}.out", os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.write(writer, b"to the guest")
        await until(lambda: frontend.data == b"to the guest")
        assert chardev.write(b"to the host") == 11
        assert await read_exactly(reader, 11) == b"to the host"
    finally:
        os.close(writer)
        os.close(reader)
    await registry.close_all()


@on_uvloop
async def test_pipe_flow_control_holds_input_without_loss(fifos: Path) -> None:
    registry = ChardevRegistry()
    chardev, frontend = await attach(registry, "p0", "pipe", room=0, device=str(fifos))
    writer = os.open(f"{fifos}.in", os.O_WRONLY | os.O_NONBLOCK)
    try:
        payload = os.urandom(30000)
        assert os.write(writer, payload) == len(payload)
        # Held in the kernel: the front end has no room.
        await asyncio.sleep(0)
        assert frontend.data == b""
        while len(frontend.data) < len(payload):
            size = len(frontend.data)
            frontend.room = 4321
            chardev.accept_input()
            await until(lambda size=size: len(frontend.data) == min(len(payload), size + 4321))
        assert frontend.data == payload
    finally:
        os.close(writer)
    await registry.close_all()


@on_uvloop
async def test_pipe_output_is_bounded(fifos: Path) -> None:
    registry = ChardevRegistry()
    chardev, frontend = await attach(registry, "p0", "pipe", device=str(fifos))
    payload = os.urandom(1 << 20)
    taken = chardev.write(payload)
    # The kernel's FIFO buffer plus OUTPUT_LIMIT, not the whole megabyte.
    assert OUTPUT_LIMIT <= taken < len(payload)
    assert chardev.write(b"more") == 0
    reader = os.open(f"{fifos}.out", os.O_RDONLY | os.O_NONBLOCK)
    try:
        got = bytearray(await read_exactly(reader, taken))
        await until(lambda: frontend.writable_calls == 1)
        assert got == payload[:taken]
        rest = payload[taken:]
        sent = bytearray()
        while len(sent) < len(rest):
            calls = frontend.writable_calls
            n = chardev.write(rest[len(sent):])
            sent += rest[len(sent):len(sent) + n]
            if len(sent) < len(rest):
                await until(lambda calls=calls: frontend.writable_calls > calls
                            or bool(got.extend(read_nonblocking(reader))))
        got += await read_exactly(reader, len(payload) - len(got))
        assert got == payload
    finally:
        os.close(reader)
    await registry.close_all()


@on_uvloop
async def test_pipe_single_path_and_errors(tmp_path: Path) -> None:
    registry = ChardevRegistry()
    path = tmp_path / "one"
    os.mkfifo(path)
    chardev, frontend = await attach(registry, "p0", "pipe", device=str(path))
    assert chardev.write(b"loop") == 4  # one FIFO both ways: output comes back
    await until(lambda: frontend.data == b"loop")
    with pytest.raises(QMPError) as error:
        await add(registry, "p1", "pipe", device="/nonexistent/p")
    assert str(error.value) == "Failed to add chardev 'p1': Could not open '/nonexistent/p': No such file or directory"
    await registry.close_all()


# -- pty --------------------------------------------------------------------------


@pytest.fixture
def fast_pty_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PtyChardev, "POLL_INTERVAL", 0.01)


@pytest.mark.usefixtures("fast_pty_poll")
@on_uvloop
async def test_pty_both_ways_and_reconnect() -> None:
    registry = ChardevRegistry()
    chardev, frontend = await attach(registry, "t0", "pty")
    path = chardev.extra_return()["pty"]
    assert path.startswith("/dev/pts/") and chardev.filename() == f"pty:{path}"
    assert not chardev.connected  # nobody has the slave open yet
    assert chardev.write(b"dropped") == 7
    slave = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        await until(lambda: chardev.connected)
        assert frontend.opened == 1
        assert chardev.write(b"raw\nbytes") == 9
        assert await read_exactly(slave, 9) == b"raw\nbytes"  # raw mode: no echo, no CR
        os.write(slave, b"typed\x03")
        await until(lambda: frontend.data == b"typed\x03")
    finally:
        os.close(slave)
    await until(lambda: not chardev.connected)
    assert frontend.closed == 1
    slave = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        await until(lambda: chardev.connected)
        os.write(slave, b"again")
        await until(lambda: frontend.data == b"typed\x03again")
    finally:
        os.close(slave)
    await registry.close_all()


@pytest.mark.usefixtures("fast_pty_poll")
@on_uvloop
async def test_pty_flow_control_and_bounded_output() -> None:
    registry = ChardevRegistry()
    chardev, frontend = await attach(registry, "t0", "pty", room=0)
    slave = os.open(chardev.extra_return()["pty"], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        await until(lambda: chardev.connected)
        os.write(slave, b"0123456789")
        await asyncio.sleep(0)
        assert frontend.data == b""
        frontend.room = 4
        chardev.accept_input()
        await until(lambda: frontend.data == b"0123")
        frontend.room = 100
        chardev.accept_input()
        await until(lambda: frontend.data == b"0123456789")
        payload = os.urandom(1 << 20)
        taken = chardev.write(payload)
        assert 0 < taken < len(payload)
        got = await read_exactly(slave, taken)
        assert got == payload[:taken]
        await until(lambda: frontend.writable_calls == 1)
    finally:
        os.close(slave)
    await registry.close_all()


# -- stdio -------------------------------------------------------------------------


@pytest.fixture
def fake_stdio(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    """Point the stdio backend at two pipes; yields (to its stdin, from its stdout)."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    os.set_blocking(stdout_r, False)
    monkeypatch.setattr(StdioChardev, "STDIN_FD", stdin_r)
    monkeypatch.setattr(StdioChardev, "STDOUT_FD", stdout_w)
    yield stdin_w, stdout_r
    for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
        os.close(fd)


@on_uvloop
async def test_stdio(fake_stdio: tuple[int, int]) -> None:
    to_stdin, from_stdout = fake_stdio
    registry = ChardevRegistry()
    chardev, frontend = await attach(registry, "s0", "stdio", signal=False)
    assert chardev.filename() == "stdio" and chardev.connected
    with pytest.raises(QMPError, match="Failed to add chardev 's1': cannot use stdio by multiple character devices"):
        await add(registry, "s1", "stdio")
    os.write(to_stdin, b"keys")
    await until(lambda: frontend.data == b"keys")
    assert chardev.write(b"screen") == 6
    assert await read_exactly(from_stdout, 6) == b"screen"
    chardev.detach()
    await registry.remove("s0")
    # vmd closed only its own copies: stdio can be used again
    chardev, frontend = await attach(registry, "s2", "stdio")
    os.write(to_stdin, b"more")
    await until(lambda: frontend.data == b"more")
    await registry.close_all()


# -- over QMP ----------------------------------------------------------------------


def qmp(vmd: VmdProcess) -> RawQMP:
    client = RawQMP(vmd.qmp_path)
    client.negotiate()
    return client


def call(client: RawQMP, command: str, **arguments: Any) -> Any:
    reply = client.command({"execute": command, "arguments": arguments})
    if "error" in reply:
        return reply["error"]["desc"]
    return reply["return"]


def chardev_add(client: RawQMP, chardev_id: str, kind: str, **data: Any) -> Any:
    return call(client, "chardev-add", id=chardev_id, backend={"type": kind, "data": data})


def test_qmp_add_query_remove_each_backend(vmd: VmdProcess, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with qmp(vmd) as client:
        assert chardev_add(client, "n0", "null") == {}
        assert chardev_add(client, "r0", "ringbuf", size=1024) == {}
        assert chardev_add(client, "m0", "memory") == {}
        assert chardev_add(client, "f0", "file", out=str(tmp_path / "out")) == {}
        assert chardev_add(client, "p0", "pipe", device=str(tmp_path / "fifo")) == {}
        assert chardev_add(client, "s0", "stdio") == {}
        reply = chardev_add(client, "t0", "pty")
        assert set(reply) == {"pty"}
        os.close(os.open(reply["pty"], os.O_RDWR | os.O_NOCTTY))
        assert (tmp_path / "out").exists()
        filenames = {info["label"]: info["filename"] for info in call(client, "query-chardev")}
        expected = {"n0": "null", "r0": "ringbuf", "m0": "memory", "f0": "file", "p0": "pipe",
                    "s0": "stdio", "t0": f"pty:{reply['pty']}"}
        assert {k: filenames.get(k) for k in expected} == expected
        for chardev_id in expected:
            assert call(client, "chardev-remove", id=chardev_id) == {}
        labels = {info["label"] for info in call(client, "query-chardev")}
        assert not labels & set(expected)
        assert call(client, "chardev-remove", id="n0") == "Chardev 'n0' not found"


def test_qmp_ringbuf_round_trips(vmd: VmdProcess) -> None:
    with qmp(vmd) as client:
        assert chardev_add(client, "rb", "ringbuf", size=16) == {}
        assert call(client, "ringbuf-write", device="rb", data="h\u00e9\u0000llo") == {}
        assert call(client, "ringbuf-read", device="rb", size=3) == "h\u00e9"
        assert call(client, "ringbuf-read", device="rb", size=100) == "\u0000llo"
        assert call(client, "ringbuf-write", device="rb", data="YQBi", format="base64") == {}
        assert call(client, "ringbuf-read", device="rb", size=100) == "a"  # cut at the NUL byte, as QEMU
        assert call(client, "ringbuf-read", device="rb", size=100) == ""
        assert call(client, "ringbuf-write", device="rb", data="IHdvcmxk", format="base64") == {}
        assert call(client, "ringbuf-write", device="rb", data="hello") == {}
        assert call(client, "ringbuf-read", device="rb", size=100, format="base64") == "IHdvcmxkaGVsbG8="
        assert call(client, "ringbuf-write", device="rb", data="/w==", format="base64") == {}
        assert call(client, "ringbuf-read", device="rb", size=100) == "\ufffd"
        assert call(client, "ringbuf-write", device="rb", data="0123456789abcdefXYZ") == {}
        assert call(client, "ringbuf-read", device="rb", size=100) == "3456789abcdefXYZ"


def test_qmp_errors(vmd: VmdProcess) -> None:
    with qmp(vmd) as client:
        assert chardev_add(client, "rb", "ringbuf") == {}
        assert chardev_add(client, "nul", "null") == {}
        assert call(client, "ringbuf-read", device="rb", size=0) == "size must be greater than zero"
        assert call(client, "ringbuf-read", device="rb", size=-1) == "size must be greater than zero"
        assert call(client, "ringbuf-read", device="nul", size=1) == "nul is not a ringbuf device"
        assert call(client, "ringbuf-write", device="nul", data="x") == "nul is not a ringbuf device"
        assert call(client, "ringbuf-read", device="nosuch", size=1) == "Device 'nosuch' not found"
        assert call(client, "ringbuf-write", device="nosuch", data="x") == "Device 'nosuch' not found"
        assert (call(client, "ringbuf-write", device="rb", data="YW*", format="base64")
                == "Base64 data contains invalid characters")
        assert (chardev_add(client, "r3", "ringbuf", size=3)
                == "Failed to add chardev 'r3': size of ringbuf chardev must be power of two")
        assert chardev_add(client, "rb", "null") == "Chardev with id 'rb' already exists"
        assert (chardev_add(client, "f0", "file", out="/nonexistent/x")
                == "Failed to add chardev 'f0': Could not open '/nonexistent/x': No such file or directory")
        assert (chardev_add(client, "p0", "pipe", device="/nonexistent/p")
                == "Failed to add chardev 'p0': Could not open '/nonexistent/p': No such file or directory")
        assert chardev_add(client, "s0", "stdio") == {}
        assert (chardev_add(client, "s1", "stdio")
                == "Failed to add chardev 's1': cannot use stdio by multiple character devices")
        labels = {info["label"] for info in call(client, "query-chardev")}
        assert {"rb", "nul", "s0"} <= labels and not labels & {"r3", "f0", "p0", "s1"}
        # Give stdin's terminal settings back before the daemon is killed.
        assert call(client, "chardev-remove", id="s0") == {}


def test_qmp_pty_path_is_usable(vmd: VmdProcess) -> None:
    with qmp(vmd) as client:
        path = chardev_add(client, "t0", "pty")["pty"]
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            with pytest.raises(OSError) as error:
                os.read(fd, 10)  # nothing written: would block
            assert error.value.errno == errno.EAGAIN
        finally:
            os.close(fd)
        assert call(client, "chardev-remove", id="t0") == {}


@on_uvloop
async def test_change_swaps_the_backend_under_a_live_front_end(tmp_path: Path) -> None:
    """chardev-change: the same front end now writes to the new backend."""
    registry = ChardevRegistry()
    old, frontend = await attach(registry, "c0", "ringbuf", size=64)
    assert old.write(b"before") == 6
    new = await registry.change("c0", visit_ChardevBackend(
        {"type": "file", "data": {"out": str(tmp_path / "after.log")}}, None, ""))
    assert registry.get("c0") is new and new.frontend is frontend
    assert (frontend.closed, frontend.opened) == (1, 2)  # the old peer left, the new one came
    assert new.write(b"after") == 5
    await registry.close_all()
    assert (tmp_path / "after.log").read_bytes() == b"after"


@on_uvloop
async def test_a_chardev_in_use_cannot_be_removed() -> None:
    registry = ChardevRegistry()
    await attach(registry, "busy", "null")
    with pytest.raises(QMPError, match="Chardev 'busy' is busy"):
        await registry.remove("busy")
    await registry.close_all()


def test_stdio_appends_to_a_file_its_parent_already_wrote(tmp_path: Path) -> None:
    """stdout redirected to a regular file keeps the parent's offset: what
    was written before vmd started stays (a reopen would overwrite it)."""
    out = tmp_path / "out.txt"
    with out.open("wb") as stdout:
        stdout.write(b"written before vmd\n")
        stdout.flush()
        subprocess.run(vmd_command("-M", "none", "-monitor", "stdio"), input=b"quit\n",
                       stdout=stdout, timeout=30, check=True)
    text = out.read_bytes()
    assert text.startswith(b"written before vmd\n")
    assert b"QEMU 7.2.0 monitor" in text
