#!/usr/bin/env python3
"""Load: many QMP clients at once on one vmd, with events and NBD I/O.

    .venv/bin/python bench/load.py [--clients 64] [--commands 2000] [--toggles 200] [--nbd 4]

Every client sends its commands one after another with its own ids while a
driver toggles stop/cont (STOP/RESUME events to every client) and qemu-io
processes write and verify data over NBD. Prints the reply latency
percentiles; fails if a reply went to the wrong client or an event was
lost. vmd only: a QEMU socket monitor serves one client at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import RawQMP, running_vmd  # noqa: E402
from tests.load_driver import run_load  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--toggles", type=int, default=200)
    parser.add_argument("--nbd", type=int, default=4, help="qemu-io clients doing NBD I/O")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmd-load-") as tmp:
        work = Path(tmp)
        image = work / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "256M"], check=True, capture_output=True)
        nbd_path = work / "nbd.sock"
        with running_vmd(work) as vmd:
            with RawQMP(vmd.qmp_path) as qmp:
                qmp.negotiate()
                for request in ({"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "disk",
                                 "file": {"driver": "file", "filename": str(image)}}},
                                {"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {
                                    "path": str(nbd_path)}}}},
                                {"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e",
                                                                              "node-name": "disk", "writable": True}}):
                    assert qmp.command(request) == {"return": {}}
            started = time.perf_counter()
            result = asyncio.run(run_load(vmd.qmp_path, f"nbd+unix:///disk?socket={nbd_path}", args.clients,
                                          args.commands, args.toggles, args.nbd, max(1, args.commands // 20)))
            elapsed = time.perf_counter() - started
        check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    print(f"{args.clients} clients x {args.commands} commands = {result.replies} replies, {result.events} events "
          f"delivered, {result.nbd_ops} NBD ops, in {elapsed:.1f} s ({result.replies / elapsed:.0f} replies/s)")
    print(f"latency: p50 {result.percentile(0.5) * 1e3:.2f} ms, p90 {result.percentile(0.9) * 1e3:.2f} ms, "
          f"p99 {result.percentile(0.99) * 1e3:.2f} ms, max {max(result.latencies) * 1e3:.2f} ms")
    print(f"qemu-img check: {'clean' if check.returncode == 0 else check.stdout}")
    for error in result.errors[:10]:
        print("ERROR:", error)
    return 1 if result.errors or check.returncode != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
