"""Hostile sizes and inputs, sent to vmd and to QEMU 7.2 alike.

Each case is a fault an outside probe found (issue 14): the reply must be
QEMU's (or better where QEMU misbehaves), nothing may be allocated for a
refused size, images stay clean for ``qemu-img check``, and the daemon keeps
serving without printing a traceback.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import QEMU, RawQMP, VmdProcess, rss_kib, running_qemu, start_vmd

pytestmark = pytest.mark.qemu

HUGE = 2**63 - 512
MAX_LENGTH = 2**63 - 2**30


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VmdProcess, Path, Path]]:
    """vmd (stderr captured) and QEMU, and a directory for their images."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    vmd_dir = tmp_path_factory.mktemp("vmd")
    stderr = vmd_dir / "stderr.log"
    with stderr.open("wb") as sink:
        vmd = start_vmd(vmd_dir, stderr=sink)
    try:
        with running_qemu(tmp_path_factory.mktemp("qemu")) as qemu:
            yield vmd, qemu, tmp_path_factory.mktemp("images")
    finally:
        vmd.stop()
    assert "Traceback" not in stderr.read_text(), stderr.read_text()


def both(pair: tuple[VmdProcess, Path, Path], requests: list[dict[str, Any]]
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    vmd, qemu, _ = pair
    replies = []
    for path in (vmd.qmp_path, qemu):
        with RawQMP(path) as qmp:
            qmp.negotiate()
            replies.append([qmp.command(json.dumps(request)) for request in requests])
    return replies[0], replies[1]


def qcow2(path: Path, size: str = "1M") -> None:
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), size], check=True, capture_output=True)


def check_clean(path: Path) -> None:
    result = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_block_resize_qcow2_beyond_the_limits(pair: tuple[VmdProcess, Path, Path]) -> None:
    images = pair[2]
    for name in ("vmd", "qemu"):
        qcow2(images / f"resize-{name}.qcow2")
    requests = [
        {"execute": "block_resize", "arguments": {"node-name": "r", "size": HUGE}},
        {"execute": "block_resize", "arguments": {"node-name": "r", "size": MAX_LENGTH}},
        {"execute": "block_resize", "arguments": {"node-name": "r", "size": 2**56}},
        {"execute": "block_resize", "arguments": {"node-name": "r", "size": 2 << 20}},
        {"execute": "blockdev-del", "arguments": {"node-name": "r"}},
    ]
    replies = []
    for name, path in (("vmd", pair[0].qmp_path), ("qemu", pair[1])):
        add = {"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "r",
            "file": {"driver": "file", "filename": str(images / f"resize-{name}.qcow2")}}}
        with RawQMP(path) as qmp:
            qmp.negotiate()
            assert qmp.command(add) == {"return": {}}
            replies.append([qmp.command(request) for request in requests])
    assert replies[0] == replies[1]
    assert replies[0][0]["error"]["desc"] == f"offset({HUGE}) exceeds maximum({MAX_LENGTH})"
    assert replies[0][1]["error"]["desc"] == "Failed to grow the L1 table: File too large"
    image = images / "resize-vmd.qcow2"
    check_clean(image)
    assert image.stat().st_size < 1 << 20  # nothing was allocated for the refused sizes


def wait_jobs(path: Path, count: int) -> list[dict[str, Any]]:
    with RawQMP(path) as qmp:
        qmp.negotiate()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            jobs: list[dict[str, Any]] = qmp.command({"execute": "query-jobs"})["return"]
            if len(jobs) >= count and all(job["status"] == "concluded" for job in jobs):
                return sorted(jobs, key=lambda job: job["id"])
            qmp.sock.settimeout(0.05)
            try:  # wait for the next event, if any comes
                qmp.read()
            except (TimeoutError, OSError):
                pass
            qmp.sock.settimeout(10)
    raise AssertionError("jobs did not conclude")


def test_blockdev_create_refuses_sizes_beyond_the_limits(pair: tuple[VmdProcess, Path, Path]) -> None:
    images = pair[2]
    replies = []
    for name, path in (("vmd", pair[0].qmp_path), ("qemu", pair[1])):
        target = images / f"create-{name}.qcow2"
        target.write_bytes(b"")
        requests = [
            {"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "cf",
                                                      "filename": str(target)}},
            {"execute": "blockdev-create", "arguments": {"job-id": "c1", "options": {
                "driver": "qcow2", "file": "cf", "size": 2**56}}},
            {"execute": "blockdev-create", "arguments": {"job-id": "c2", "options": {
                "driver": "file", "filename": str(images / f"f-{name}.raw"), "size": HUGE}}},
        ]
        with RawQMP(path) as qmp:
            qmp.negotiate()
            replies.append([qmp.command(request) for request in requests])
        jobs = wait_jobs(path, 2)
        replies.append([(job["id"], job["error"]) for job in jobs])
        with RawQMP(path) as qmp:
            qmp.negotiate()
            for request in ({"execute": "job-dismiss", "arguments": {"id": "c1"}},
                            {"execute": "job-dismiss", "arguments": {"id": "c2"}},
                            {"execute": "blockdev-del", "arguments": {"node-name": "cf"}}):
                assert qmp.command(request) == {"return": {}}
    assert replies[0] == replies[2]
    assert replies[1] == replies[3] == [
        ("c1", "Could not resize image: Failed to grow the L1 table: File too large"),
        ("c2", "Could not resize file: File too large")]
    assert (images / "create-vmd.qcow2").stat().st_size == 0  # refused before writing


def test_null_co_sizes(pair: tuple[VmdProcess, Path, Path]) -> None:
    requests = [{"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": f"z{i}", "size": size}}
                for i, size in enumerate((2**63 - 1, MAX_LENGTH + 512, MAX_LENGTH, 2**62))]
    requests += [{"execute": "blockdev-del", "arguments": {"node-name": f"z{i}"}} for i in (2, 3)]
    vmd_replies, qemu_replies = both(pair, requests)
    assert vmd_replies == qemu_replies
    assert vmd_replies[0]["error"]["desc"] == "Could not refresh total sector count: File too large"
    # QEMU aborts on size -1; vmd refuses it like any other size out of range.
    negative = {"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "neg", "size": -1}}
    with RawQMP(pair[0].qmp_path) as qmp:
        qmp.negotiate()
        assert qmp.command(negative)["error"]["desc"] == "Could not refresh total sector count: File too large"


def test_nbd_server_add_takes_its_boxed_arguments(pair: tuple[VmdProcess, Path, Path]) -> None:
    images = pair[2]
    replies = []
    for name, path in (("vmd", pair[0].qmp_path), ("qemu", pair[1])):
        socket_path = images / f"nbd-{name}.sock"
        requests = [
            {"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n0", "size": 1 << 20}},
            {"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix",
                                                                    "data": {"path": str(socket_path)}}}},
            {"execute": "nbd-server-add", "arguments": {"device": "n0"}},
            {"execute": "nbd-server-add", "arguments": {"device": "n0", "name": "two", "writable": True,
                                                        "description": "d"}},
            {"execute": "nbd-server-add", "arguments": {"device": "nope"}},
            {"execute": "query-block-exports"},
            {"execute": "nbd-server-stop"},
            {"execute": "blockdev-del", "arguments": {"node-name": "n0"}},
        ]
        with RawQMP(path) as qmp:
            qmp.negotiate()
            replies.append([qmp.command(request) for request in requests])
    assert replies[0][2] == {"return": {}}
    assert replies[0] == replies[1]


def test_integer_literal_over_4300_digits(pair: tuple[VmdProcess, Path, Path]) -> None:
    digits = "9" * 5000
    request = '{"execute":"block_resize","arguments":{"node-name":"x","size":' + digits + "}}"
    replies = []
    for path in (pair[0].qmp_path, pair[1]):
        with RawQMP(path) as qmp:
            qmp.negotiate()
            replies.append(qmp.command(request))
            # QEMU echoes such an id as a bare (invalid JSON) inf; vmd as null.
            qmp.send('{"execute":"query-name","id":-' + digits + "}")
            line = qmp.read_line()
            assert b'"return"' in line and b'"id"' in line
            assert qmp.command({"execute": "query-name"}) == {"return": {}}
    assert replies[0] == replies[1] == {
        "error": {"class": "GenericError", "desc": "Invalid parameter type for 'size', expected: integer"}}


def test_unfinished_string_is_bounded(pair: tuple[VmdProcess, Path, Path]) -> None:
    """A string that never ends: one error at QEMU's 64 MiB limit, bounded memory."""
    vmd = pair[0]
    chunk = b"x" * (1 << 20)
    with RawQMP(vmd.qmp_path, timeout=30) as qmp:
        qmp.negotiate()
        before = rss_kib(vmd.process.pid)
        qmp.send(b'{"execute":"query-name","id":"')
        for _ in range(96):
            qmp.send(chunk)
        assert qmp.read() == {"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}
        grown = rss_kib(vmd.process.pid) - before
        qmp.send(b'"}')
        assert qmp.read()["error"]["desc"] == "JSON parse error, expecting value"
        assert qmp.command({"execute": "query-name", "id": 1}) == {"return": {}, "id": 1}
    assert grown < 200 << 10, f"RSS grew by {grown} KiB"


# Header fields that would make an opener allocate huge tables: (offset, width, value).
CRAFTED_HEADERS = {
    "l1-too-large": (36, 4, (32 << 20) // 8 + 1),
    "reftable-too-large": (56, 4, ((8 << 20) >> 16) + 1),
    "too-many-snapshots": (60, 4, 65537),
    "too-big": (24, 8, 2**63 + 2**62),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_HEADERS))
def test_crafted_header_sizes_are_refused_as_qemu_does(pair: tuple[VmdProcess, Path, Path], case: str) -> None:
    offset, width, value = CRAFTED_HEADERS[case]
    image = pair[2] / f"{case}.qcow2"
    qcow2(image)
    data = bytearray(image.read_bytes())
    data[offset:offset + width] = value.to_bytes(width, "big")
    image.write_bytes(bytes(data))
    add = {"execute": "blockdev-add", "arguments": {
        "driver": "qcow2", "node-name": "crafted", "read-only": True,
        "file": {"driver": "file", "filename": str(image)}}}
    vmd_replies, qemu_replies = both(pair, [add])
    assert vmd_replies == qemu_replies
    assert "error" in vmd_replies[0]
