#!/usr/bin/env python3
"""Compare block job throughput: vmd vs qemu-system-x86_64 -M none.

Each round builds, for each server, the same qcow2 chain in its own
directory (``base`` <- ``mid`` <- ``top``, every layer holding ``--size``
MiB of data written by qemu-io), opens it with the same ``blockdev-add``
commands and runs, one after the other on fresh copies:

* intermediate commit (``mid`` into ``base``),
* active commit (``top`` into ``mid``; ready, then ``job-complete``),
* stream (``base`` and ``mid`` into ``top``),
* mirror (``sync: full`` of ``top`` into a new qcow2 target; ready, then
  ``job-complete``).

The time runs from the command to the job's BLOCK_JOB_COMPLETED event; the
rate is the job's ``len`` (bytes it went over) per second. The client is
the same ``qemu.qmp`` code for both servers, so the ratio vmd/qemu reflects
the servers. Run from the repository root:

    .venv/bin/python bench/block_jobs.py [--size MiB] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from qemu.qmp import EventListener, QMPClient  # noqa: E402

JOBS = ("commit (intermediate)", "commit (active)", "stream", "mirror (full)")


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def qemu_io(path: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-c", command, str(path)], check=True, capture_output=True)


def make_chain(root: Path, size_mib: int) -> None:
    """Three layers of ``size_mib`` MiB each, overlapping by half."""
    total = 2 * size_mib
    qemu_img("create", "-f", "qcow2", root / "base.qcow2", f"{total}M")
    qemu_io(root / "base.qcow2", f"write -P 1 0 {size_mib}M")
    qemu_img("create", "-f", "qcow2", "-b", root / "base.qcow2", "-F", "qcow2", root / "mid.qcow2")
    qemu_io(root / "mid.qcow2", f"write -P 2 {size_mib // 2}M {size_mib}M")
    qemu_img("create", "-f", "qcow2", "-b", root / "mid.qcow2", "-F", "qcow2", root / "top.qcow2")
    qemu_io(root / "top.qcow2", f"write -P 3 {size_mib}M {size_mib}M")
    qemu_img("create", "-f", "qcow2", root / "tgt.qcow2", f"{total}M")


def open_chain(root: Path) -> list[tuple[str, dict[str, Any]]]:
    def qcow2(name: str, **extra: Any) -> tuple[str, dict[str, Any]]:
        return ("blockdev-add", {"driver": "qcow2", "node-name": name,
                                 "file": {"driver": "file", "filename": str(root / f"{name}.qcow2")}, **extra})
    return [qcow2("base", **{"read-only": True}), qcow2("mid", backing="base", **{"read-only": True}),
            qcow2("top", backing="mid"), qcow2("tgt")]


JOB_COMMANDS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "commit (intermediate)": ("block-commit", {"job-id": "j", "device": "top", "top-node": "mid",
                                               "base-node": "base"}, False),
    "commit (active)": ("block-commit", {"job-id": "j", "device": "top", "base-node": "mid"}, True),
    "stream": ("block-stream", {"job-id": "j", "device": "top"}, False),
    "mirror (full)": ("blockdev-mirror", {"job-id": "j", "device": "top", "target": "tgt", "sync": "full"}, True),
}


def start_server(label: str, root: Path) -> tuple[subprocess.Popen[bytes], Path]:
    socket = root / "qmp.sock"
    log = open(root / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    qmp = f"unix:{socket},server=on,wait=off"
    if label == "qemu":
        argv = ["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none", "-qmp", qmp]
    else:
        argv = [sys.executable, "-m", "vmd", "-qmp", qmp]
    proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=common.REPO)
    return proc, socket


async def connect(socket: Path, proc: subprocess.Popen[bytes]) -> QMPClient:
    client = QMPClient()
    deadline = time.monotonic() + 20
    while True:
        try:
            await client.connect(str(socket))
            return client
        except Exception as error:  # noqa: BLE001 - the server is still starting
            if proc.poll() is not None or time.monotonic() > deadline:
                raise common.BenchError(f"server did not start: {error}") from None
            await asyncio.sleep(0.05)


async def run_job(socket: Path, proc: subprocess.Popen[bytes], root: Path, job: str) -> tuple[int, float]:
    """Run one job on a fresh chain; returns (len, seconds)."""
    client = await connect(socket, proc)
    listener = EventListener()
    client.register_listener(listener)
    try:
        for name, args in open_chain(root):
            await client.execute(name, args)
        command, args, completes = JOB_COMMANDS[job]
        start = time.monotonic()
        await client.execute(command, args)
        while True:
            event = await asyncio.wait_for(listener.get(), 600)
            if event["event"] == "BLOCK_JOB_READY" and completes:
                await client.execute("job-complete", {"id": "j"})
            elif event["event"] == "BLOCK_JOB_COMPLETED":
                elapsed = time.monotonic() - start
                data = cast("dict[str, Any]", event["data"])
                if data.get("error"):
                    raise common.BenchError(f"{job} failed: {data['error']}")
                return int(data["len"]), elapsed
    finally:
        with contextlib.suppress(Exception):
            await client.execute("quit")
        with contextlib.suppress(Exception):
            await client.disconnect()


def run(args: argparse.Namespace, notes: list[str]) -> list[common.Metric]:
    progress = common.progress_printer(args.quiet)
    labels = ["vmd", "qemu"] if shutil.which("qemu-system-x86_64") else ["vmd"]
    jobs = [job for job in JOBS if not args.only or any(word in job for word in args.only)]
    metrics = {job: common.Metric(job, "MiB/s", ".0f") for job in jobs}
    with tempfile.TemporaryDirectory(prefix="vmd-bench-jobs-") as tmp:
        template = Path(tmp) / "template"
        template.mkdir()
        make_chain(template, args.size)
        for round_no, label in common.interleaved(labels, args.rounds):
            for job in jobs:
                root = Path(tmp) / f"{label}-{round_no}-{job.split()[0]}-{len(job)}"
                shutil.copytree(template, root)
                proc, socket = start_server(label, root)
                try:
                    length, seconds = asyncio.run(run_job(socket, proc, root, job))
                finally:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10)
                    common.stop(proc)
                metrics[job].add(label, length / seconds / (1 << 20))
                progress(f"round {round_no + 1} {label}: {job}: {length >> 20} MiB in {seconds:.2f} s")
                shutil.rmtree(root)
    notes.append(f"each layer holds {args.size} MiB of data; images on {tmp.rsplit('/', 1)[0]}")
    return list(metrics.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="MiB of data per layer (default 128)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per server and job (default 1)")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the jobs whose name contains this word (repeatable)")
    common.add_output_options(parser)
    args = parser.parse_args()
    return common.main("block_jobs", args, run, name_width=32,
                       legend="Rates are better when higher; each is the median over the rounds.")


if __name__ == "__main__":
    sys.exit(main())
