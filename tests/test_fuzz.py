"""Fuzzing from the schema, with a fixed small budget (``scripts/fuzz.py`` runs long).

Properties, each over generated hostile input:
* the JSON stream parser only ever yields messages (a value or QEMU's error
  text), the same however the bytes are cut;
* the generated marshallers, given mutated arguments of every command,
  raise only ``QMPError`` (the handler is a stub: nothing runs);
* keyval and QemuOpts parsing raise only ``OptionError``/``QMPError``;
* the NBD protocol machine, fed mutated client bytes, only yields events;
* a crafted qcow2 image gives a clear error or a working node, and an
  image ``qemu-img check`` accepted still passes after vmd wrote to it;
* a running daemon answers every mutated request with exactly one
  QEMU-shaped reply carrying its id, a watchdog client keeps getting
  answers, RSS stays bounded, and no traceback reaches stderr.

The budget is ``VMD_FUZZ_SCALE`` (default 1) times each test's examples.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import schema_fuzz
from tests.harness import RawQMP, VmdProcess, rss_kib, start_vmd
from vmd._generated.commands import COMMANDS
from vmd.block.nbd import protocol as nbd
from vmd.cli.errors import OptionError
from vmd.cli.keyval import keyval_parse
from vmd.cli.qemu_opts import OptsSpec, parse_opts
from vmd.errors import QMPError
from vmd.qapi_keyval import command_arguments
from vmd.qmp.json_stream import JSONStreamParser, Message

SCALE = int(os.environ.get("VMD_FUZZ_SCALE", "1"))
ERROR_CLASSES = {"GenericError", "CommandNotFound", "DeviceNotActive", "DeviceNotFound", "KVMMissingCap"}
#: Commands whose side effects reach outside the daemon or end the session.
UNSAFE = {"quit", "blockdev-create", "chardev-add", "chardev-change", "human-monitor-command", "nbd-server-start",
          "blockdev-snapshot-sync", "yank", "chardev-remove"}
SAFE_COMMANDS = sorted(name for name in COMMANDS if name not in UNSAFE)


def budget(examples: int) -> Any:
    return settings(max_examples=examples * SCALE, deadline=None, database=None, derandomize=SCALE == 1,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# -- the JSON stream parser -------------------------------------------------------------

_TOKENS = [b"{", b"}", b"[", b"]", b":", b",", b'"', b"'", b"\\", b"\\u", b"d83d", b"\xff", b"\xc0\x80",
           b"\x00", b"1", b"-", b"e", b".", b"true", b"nul", b'"execute"', b'"id"', b" ", b"\n", b"9" * 30]


@budget(300)
@given(st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=8)), max_size=40), st.data())
def test_json_stream_yields_only_messages_however_cut(pieces: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(pieces) + b'{"execute":"end"}'
    whole = JSONStreamParser().feed(stream)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    parser = JSONStreamParser()
    halves = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
    assert halves == whole
    for message in whole:
        assert isinstance(message, Message)
        assert (message.error is None) or message.error.startswith("JSON ")


@budget(200)
@given(schema_fuzz.json_values())
def test_json_values_round_trip(value: Any) -> None:
    encoded = json.dumps({"id": value}).encode()
    assert JSONStreamParser().feed(encoded) == [Message({"id": as_qemu_reads(json.loads(encoded)["id"])})]


def as_qemu_reads(value: Any) -> Any:
    """Integers beyond int64/uint64 become doubles in QEMU's parser."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(1 << 63) <= value < (1 << 64) else float(value)
    if isinstance(value, list):
        return [as_qemu_reads(item) for item in value]
    if isinstance(value, dict):
        return {key: as_qemu_reads(item) for key, item in value.items()}
    return value


# -- argument unmarshalling ------------------------------------------------------------------

class _Reached(Exception):
    """The stub handler was called: the arguments passed every check."""


def _stub(*args: Any, **kwargs: Any) -> Any:
    raise _Reached


async def _async_stub(*args: Any, **kwargs: Any) -> Any:
    raise _Reached


def unmarshal(name: str, arguments: Any) -> None:
    """Run ``name``'s marshaller on ``arguments``; only QMPError (or reaching the handler) is fine."""
    command = COMMANDS[name]
    try:
        result = command.marshal(_async_stub if command.coroutine else _stub, None, arguments)
        if asyncio.iscoroutine(result):
            result.send(None)
    except (QMPError, _Reached):
        return
    raise AssertionError(f"{name}: the marshaller returned without calling the handler")


@budget(250)
@given(st.data())
def test_unmarshalling_mutated_arguments_raises_only_qmp_errors(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(COMMANDS)))
    unmarshal(name, data.draw(st.one_of(schema_fuzz.arguments(name), schema_fuzz.mutated(name))))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_valid_arguments_reach_the_handler(name: str) -> None:
    """The generator itself is right: what it calls valid passes the marshaller."""
    @budget(5)
    @given(schema_fuzz.arguments(name))
    def check(arguments: dict[str, Any]) -> None:
        command = COMMANDS[name]
        with pytest.raises(_Reached):
            result = command.marshal(_async_stub if command.coroutine else _stub, None, arguments)
            if asyncio.iscoroutine(result):
                result.send(None)
    check()


# -- keyval and QemuOpts ----------------------------------------------------------------------

_KEYVAL_PIECES = st.sampled_from(["driver", "=", ",", ",,", ".", "file", "0", "1", "a.0", "a.b", "qcow2", "on",
                                  "node-name", "size", "=x", "__x_", "", "\x00", "é"])


@budget(300)
@given(st.lists(st.one_of(_KEYVAL_PIECES, st.text(max_size=4)), max_size=24), st.booleans())
def test_keyval_and_blockdev_conversion_raise_only_option_errors(pieces: list[str], implied: bool) -> None:
    text = "".join(pieces)
    try:
        tree = keyval_parse(text, "driver" if implied else None)
    except OptionError:
        return
    try:
        command_arguments("blockdev-add", tree)
    except (OptionError, QMPError):
        pass


_OPTS_SPEC = OptsSpec("fuzz", implied_key="backend",
                      desc={"backend": "string", "path": "string", "server": "bool", "size": "size",
                            "reconnect": "number"})


@budget(300)
@given(st.lists(st.one_of(_KEYVAL_PIECES, st.sampled_from(["path", "server", "id", "help", "?", "4k", "1e3",
                                                           "0x10", "-1", "18446744073709551616"]),
                          st.text(max_size=4)), max_size=24))
def test_qemu_opts_raise_only_option_errors(pieces: list[str]) -> None:
    try:
        parse_opts(_OPTS_SPEC, "".join(pieces), [])
    except OptionError:
        pass


# -- the NBD protocol machine -----------------------------------------------------------------

class _Catalog:
    def __init__(self) -> None:
        self.export = nbd.ExportInfo("e", 1 << 20, read_only=False)

    def find_export(self, name: str) -> nbd.ExportInfo | None:
        return self.export if name == "e" else None

    def list_exports(self) -> list[nbd.ExportInfo]:
        return [self.export]


def _option(option: int, payload: bytes) -> bytes:
    return struct.pack(">QII", nbd.IHAVEOPT, option, len(payload)) + payload


_GO = _option(nbd.Opt.GO, struct.pack(">I", 1) + b"e" + struct.pack(">H", 0))
_NBD_SESSION = [struct.pack(">I", 3), _option(nbd.Opt.STRUCTURED_REPLY, b""), _GO,
                struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.Cmd.READ, 1, 0, 4096),
                struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.Cmd.WRITE, 2, 4096, 8) + bytes(8),
                struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.Cmd.BLOCK_STATUS, 3, 0, 1 << 20),
                struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.Cmd.DISC, 4, 0, 0)]


@st.composite
def nbd_sessions(draw: st.DrawFn) -> list[bytes]:
    """A valid client session with some messages mutated (bytes flipped, cut, repeated)."""
    session = list(_NBD_SESSION)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        index = draw(st.integers(min_value=0, max_value=len(session) - 1))
        message = bytearray(session[index])
        how = draw(st.sampled_from(["flip", "cut", "repeat", "huge"]))
        if how == "flip" and message:
            at = draw(st.integers(min_value=0, max_value=len(message) - 1))
            message[at] = draw(st.integers(min_value=0, max_value=255))
        elif how == "cut":
            del message[draw(st.integers(min_value=0, max_value=len(message))):]
        elif how == "repeat":
            message *= 2
        elif len(message) >= 16:
            message[-4:] = struct.pack(">I", draw(st.sampled_from([0, 1 << 31, (1 << 32) - 1, 33 << 20])))
        session[index] = bytes(message)
    return session


def run_nbd_machine(session: list[bytes]) -> None:
    connection = nbd.ServerConnection(_Catalog())
    for piece in [*session, b""]:
        connection.receive_data(piece)
        for _ in range(10_000):
            event = connection.next_event()
            if isinstance(event, nbd.Request):
                connection.data_to_send()
                connection.reply_error(event, 5, "fuzz") if event.command == nbd.Cmd.WRITE \
                    else connection.reply_ok(event)
                continue
            if isinstance(event, nbd.Closed) or event is nbd.NEED_DATA:
                break
        else:
            raise AssertionError("the NBD machine made no progress")
        if isinstance(event, nbd.Closed):
            return


@budget(300)
@given(nbd_sessions())
def test_nbd_machine_takes_mutated_client_messages(session: list[bytes]) -> None:
    run_nbd_machine(session)


# -- crafted qcow2 images ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def qcow2_template(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("template") / "t.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=4k", str(path), "1M"], check=True,
                   capture_output=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x21 0 8k", "-c", "write -P 0x22 512k 4k", str(path)], check=True,
                   capture_output=True)
    return path.read_bytes()


def qemu_img_check(path: Path) -> int:
    return subprocess.run(["qemu-img", "check", str(path)], capture_output=True).returncode


async def exercise_image(path: Path) -> bool:
    """Open, read, write, close; True if the image opened."""
    from vmd.block.drivers.qcow2.node import close_image, open_image
    try:
        node = await open_image(str(path), backing=False)
    except (QMPError, OSError):
        return False
    try:
        size = min(node.total_size, 1 << 20)
        for offset in range(0, size, 64 << 10):
            await node.read(offset, memoryview(bytearray(min(64 << 10, size - offset))))
        if size >= 16 << 10:
            await node.write(4096, bytes([0x5A]) * 8192)
            await node.write_zeroes(0, 4096)
            await node.flush()
    except (QMPError, OSError):
        pass
    try:
        await close_image(node)
    except (QMPError, OSError):
        pass  # metadata the crafted image points nowhere cannot be written back
    return True


# Regions of the template (4 KiB clusters): header, refcount table, refcount
# block, L1 table, L2 table.
_REGIONS = [(0, 112), (4096, 4096 + 64), (8192, 8192 + 64), (12288, 12288 + 16), (16384, 16384 + 512)]


@budget(60)
@given(st.lists(st.tuples(st.sampled_from(_REGIONS), st.integers(min_value=0, max_value=511),
                          st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
def test_crafted_qcow2_images(tmp_path: Path, qcow2_template: bytes,
                              edits: list[tuple[tuple[int, int], int, bytes]]) -> None:
    image = bytearray(qcow2_template)
    for (start, end), at, data in edits:
        offset = start + at % (end - start)
        image[offset:offset + len(data)] = data
    path = tmp_path / "crafted.qcow2"
    path.write_bytes(bytes(image))
    clean_before = qemu_img_check(path) == 0
    tracemalloc.start()
    try:
        opened = asyncio.run(exercise_image(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"opening a crafted image took {peak} bytes"
    if opened and clean_before:
        assert qemu_img_check(path) in (0, 3), "vmd corrupted an image qemu-img had found clean"


# -- a running daemon --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VmdProcess, Path]]:
    """vmd with an empty working directory, its stderr kept for tracebacks."""
    work = tmp_path_factory.mktemp("fuzzd")
    stderr = work / "stderr.log"
    env = dict(os.environ)
    cwd = os.getcwd()
    os.chdir(work)  # relative file names in fuzzed arguments land here
    try:
        with stderr.open("wb") as sink:
            vmd = start_vmd(work, env=env, stderr=sink)
    finally:
        os.chdir(cwd)
    try:
        yield vmd, stderr
    finally:
        vmd.stop()
    text = stderr.read_text(errors="replace")
    assert "Traceback" not in text and "internal error" not in text, text[-4000:]


def check_reply(reply: dict[str, Any], request: dict[str, Any]) -> None:
    """Exactly QEMU's shape: return or error (class and desc), and the id echoed."""
    keys = set(reply) - {"id"}
    assert keys in ({"return"}, {"error"}), reply
    if "error" in reply:
        assert set(reply["error"]) == {"class", "desc"}, reply
        assert reply["error"]["class"] in ERROR_CLASSES, reply
        assert not reply["error"]["desc"].startswith("internal error"), (request, reply)
    if "id" not in request or reply.get("error", {}).get("desc", "").startswith("JSON parse error"):
        assert "id" not in reply, reply  # QEMU echoes no id on a parse error


def test_daemon_answers_mutated_requests(fuzz_daemon: tuple[VmdProcess, Path]) -> None:
    vmd, _stderr = fuzz_daemon
    with RawQMP(vmd.qmp_path) as fuzz, RawQMP(vmd.qmp_path) as watchdog:
        fuzz.negotiate()
        watchdog.negotiate()
        before = rss_kib(vmd.process.pid)
        sent = 0

        @budget(200)
        @given(schema_fuzz.requests(SAFE_COMMANDS))
        def one(request: dict[str, Any]) -> None:
            nonlocal sent
            request["id"] = ["fuzz", sent]  # a unique id: the reply must carry it
            sent += 1
            try:
                wire = json.dumps(request)
            except ValueError:  # an integer too long for Python's own str()
                return
            reply = fuzz.command(wire)
            check_reply(reply, request)
            if not reply.get("error", {}).get("desc", "").startswith("JSON parse error"):
                assert reply.get("id") == ["fuzz", sent - 1], (request, reply)
            if sent % 50 == 0:
                assert watchdog.command({"execute": "query-name", "id": sent}) == {"return": {}, "id": sent}

        one()
        grown = rss_kib(vmd.process.pid) - before
    assert grown < 100 << 10, f"RSS grew by {grown} KiB over {sent} requests"
    print(f"daemon fuzz: {sent} requests, RSS +{grown} KiB")


@budget(150)
@given(st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=16)), min_size=1, max_size=30))
def test_daemon_survives_raw_bytes(fuzz_daemon: tuple[VmdProcess, Path], pieces: list[bytes]) -> None:
    vmd, _stderr = fuzz_daemon
    with RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        # A control byte ends any string, number or keyword with an error (the
        # lexer recovers there); unbalanced closers end any open message.
        qmp.send(b"".join(pieces) + b"\x01" + b"]" * 40 + b"}" * 40 + b'{"execute":"query-name","id":"sync"}')
        while True:
            message = qmp.read()
            if message.get("id") == "sync" and "return" in message:
                break
            assert set(message) - {"id"} in ({"return"}, {"error"}), message


def test_daemon_nbd_server_takes_mutated_sessions(fuzz_daemon: tuple[VmdProcess, Path], tmp_path: Path) -> None:
    vmd, _stderr = fuzz_daemon
    nbd_path = tmp_path / "nbd.sock"
    with RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        for request in ({"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "e",
                                                                  "size": 1 << 20, "read-zeroes": True}},
                        {"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {
                            "path": str(nbd_path)}}}},
                        {"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e", "node-name": "e",
                                                                      "writable": True}}):
            assert qmp.command(request) == {"return": {}}
        sessions = 0

        @budget(60)
        @given(nbd_sessions())
        def one(session: list[bytes]) -> None:
            nonlocal sessions
            sessions += 1
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(5)
                client.connect(str(nbd_path))
                try:
                    for piece in session:
                        client.sendall(piece)
                    client.shutdown(socket.SHUT_WR)
                    while client.recv(65536):
                        pass
                except OSError:
                    pass  # the server may close first: that is its right
            assert qmp.command({"execute": "query-name"}) == {"return": {}}

        one()
        out = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0 0 64k", f"nbd+unix:///e?socket={nbd_path}"],
                             capture_output=True, text=True, timeout=30)
        assert "failed" not in out.stdout + out.stderr
        for request in ({"execute": "nbd-server-stop"}, {"execute": "blockdev-del", "arguments": {"node-name": "e"}}):
            assert qmp.command(request) == {"return": {}}
    print(f"NBD fuzz: {sessions} sessions")
