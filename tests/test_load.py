"""Load and the daemon-wide memory cap.

64 QMP clients send commands at once while events flow and NBD clients
write and verify data: every reply reaches the client that asked, with its
id, every client sees every event, and nothing is lost (latency is printed,
not asserted; ``bench/load.py`` runs the big version). A client that makes
vmd hold more than the cap allows is disconnected with the reason logged,
and the others go on.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

from tests.harness import RawQMP, rss_kib, running_vmd, start_vmd
from tests.load_driver import run_load
from vmd.block.nbd import protocol as nbd


def export(qmp_path: Path, nbd_path: Path, node: dict[str, object]) -> None:
    with RawQMP(qmp_path) as qmp:
        qmp.negotiate()
        for request in ({"execute": "blockdev-add", "arguments": node},
                        {"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {
                            "path": str(nbd_path)}}}},
                        {"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e",
                                                                      "node-name": node["node-name"],
                                                                      "writable": True}}):
            assert qmp.command(request) == {"return": {}}


def test_64_clients_with_events_and_nbd_io(tmp_path: Path) -> None:
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True, capture_output=True)
    nbd_path = tmp_path / "nbd.sock"
    with running_vmd(tmp_path) as vmd:
        export(vmd.qmp_path, nbd_path, {"driver": "qcow2", "node-name": "disk",
                                        "file": {"driver": "file", "filename": str(image)}})
        started = time.perf_counter()
        result = asyncio.run(run_load(vmd.qmp_path, f"nbd+unix:///disk?socket={nbd_path}", clients=64,
                                      commands=25, toggles=10, nbd_clients=3, nbd_ops=12))
        elapsed = time.perf_counter() - started
    assert result.errors == []
    assert result.replies == 64 * 25
    assert result.events == 64 * 2 * 10
    assert result.nbd_ops == 3 * 2 * 12
    print(f"load: 64 clients x 25 commands, {result.events} events, {result.nbd_ops} NBD ops in {elapsed:.1f} s; "
          f"p50 {result.percentile(0.5) * 1e3:.1f} ms, p99 {result.percentile(0.99) * 1e3:.1f} ms")
    check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def nbd_reads_without_reading(path: Path, count: int, length: int) -> socket.socket:
    """An NBD client that negotiates, asks for ``count`` reads and reads nothing back."""
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    greeting = client.recv(18, socket.MSG_WAITALL)
    assert len(greeting) == 18
    name = b"e"
    go = struct.pack(">QII", nbd.IHAVEOPT, nbd.Opt.GO, 4 + len(name) + 2) + struct.pack(">I", len(name)) + \
        name + struct.pack(">H", 0)
    client.sendall(struct.pack(">I", 3) + go)
    while True:  # option replies until NBD_REP_ACK
        header = client.recv(20, socket.MSG_WAITALL)
        _magic, _option, reply, length_field = struct.unpack(">QIII", header)
        client.recv(length_field, socket.MSG_WAITALL) if length_field else b""
        if reply == nbd.Rep.ACK:
            break
    requests = b"".join(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.Cmd.READ, i, 0, length)
                        for i in range(count))
    client.sendall(requests)
    return client


def test_memory_cap_drops_the_client_that_holds_too_much(tmp_path: Path) -> None:
    nbd_path = tmp_path / "nbd.sock"
    log = tmp_path / "stderr.log"
    with log.open("wb") as sink:
        vmd = start_vmd(tmp_path, env={**os.environ, "VMD_MEMORY_CAP": "24M"}, stderr=sink)
    try:
        export(vmd.qmp_path, nbd_path, {"driver": "null-co", "node-name": "e", "size": 64 << 20,
                                        "read-zeroes": True})
        greedy = nbd_reads_without_reading(nbd_path, count=16, length=4 << 20)
        deadline = time.monotonic() + 20
        while "disconnected" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = log.read_text()
        assert "NBD client disconnected: it holds" in text and "memory cap of 25165824 bytes" in text, text
        greedy.close()
        out = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0 0 4M", f"nbd+unix:///e?socket={nbd_path}"],
                             capture_output=True, text=True, timeout=30)
        assert "failed" not in out.stdout + out.stderr
        with RawQMP(vmd.qmp_path) as qmp:
            qmp.negotiate()
            assert qmp.command({"execute": "query-name"}) == {"return": {}}
        assert rss_kib(vmd.process.pid) < 400_000
    finally:
        vmd.stop()
    assert "Traceback" not in log.read_text()
