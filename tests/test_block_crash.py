"""Crash safety: SIGKILL vmd during writes over NBD, many times.

A qcow2 image (over a backing file, so partial clusters copy on write) is
exported writable over NBD; ``qemu-io`` writes batches of patterns, each
batch ending in a flush. A timer kills vmd with SIGKILL at a random moment.
Afterwards ``qemu-img check`` must accept the image (leaked clusters are
allowed, as in QEMU) and every batch that finished (its flush returned)
must read back exactly.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.harness import RawQMP, start_vmd

pytestmark = pytest.mark.qemu

ROUNDS = 12
WRITES_PER_BATCH = 6
REGION = 48 * 1024          # not cluster aligned: partial clusters
IMAGE_SIZE = 64 << 20


def pattern(index: int) -> int:
    return index % 250 + 1


def offset(index: int) -> int:
    return index * REGION + 512


def test_sigkill_during_writes_leaves_a_consistent_image(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(base), str(IMAGE_SIZE)], check=True,
                   capture_output=True)
    subprocess.run(["qemu-io", "-c", f"write -P 0xee 0 {IMAGE_SIZE}", str(base)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(image)], check=True,
                   capture_output=True)
    rng = random.Random(1234)
    durable: list[int] = []
    next_index = 0
    for round_ in range(ROUNDS):
        next_index = run_round(tmp_path / f"r{round_}", image, durable, next_index, rng.uniform(0.05, 0.6))
        check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
        assert check.returncode in (0, 3), f"round {round_}: {check.stdout}{check.stderr}"
    assert durable, "no batch ever completed; the test proved nothing"
    reads = [f"read -P {pattern(i)} {offset(i)} {REGION}" for i in durable]
    for start in range(0, len(reads), 200):
        args = [arg for command in reads[start:start + 200] for arg in ("-c", command)]
        result = subprocess.run(["qemu-io", "-r", *args, str(image)], capture_output=True, text=True)
        assert "Pattern verification failed" not in result.stdout, result.stdout
        assert result.returncode == 0, result.stderr


def run_round(workdir: Path, image: Path, durable: list[int], first: int, kill_after: float) -> int:
    """One daemon life: write batches until the kill; return the next index."""
    workdir.mkdir()
    vmd = start_vmd(workdir, "-blockdev",
                    f"driver=qcow2,node-name=disk,file.driver=file,file.filename={image}")
    nbd = workdir / "nbd.sock"
    killer = threading.Timer(kill_after, vmd.process.send_signal, (signal.SIGKILL,))
    index = first
    try:
        with RawQMP(vmd.qmp_path) as qmp:
            qmp.negotiate()
            assert qmp.command({"execute": "nbd-server-start", "arguments": {
                "addr": {"type": "unix", "data": {"path": str(nbd)}}}}) == {"return": {}}
            assert qmp.command({"execute": "block-export-add", "arguments": {
                "type": "nbd", "id": "e", "node-name": "disk", "writable": True}}) == {"return": {}}
        killer.start()
        while vmd.process.poll() is None and index < IMAGE_SIZE // REGION - WRITES_PER_BATCH:
            batch = list(range(index, index + WRITES_PER_BATCH))
            index += WRITES_PER_BATCH
            commands = [arg for i in batch for arg in ("-c", f"write -P {pattern(i)} {offset(i)} {REGION}")]
            result = subprocess.run(["qemu-io", "-f", "raw", *commands, "-c", "flush",
                                     f"nbd+unix:///disk?socket={nbd}"], capture_output=True, text=True)
            if result.returncode == 0 and "error" not in result.stdout.lower() and vmd.process.poll() is None:
                durable.extend(batch)
    finally:
        killer.cancel()
        vmd.process.kill()
        vmd.process.wait()
    return index
