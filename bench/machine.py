#!/usr/bin/env python3
"""vmd vs QEMU running the same guest on KVM: port-I/O exit cost and memory overhead.

**Port-I/O exit** (``pio exit``, ns and TSC cycles). The test guest
``tests/guests/pio_bench.c`` writes port 0x80 200000 times (``--count``)
and measures itself with RDTSC, converting to nanoseconds with the TSC rate
it takes from one RTC second. Each write leaves ``KVM_RUN`` for the VMM,
which dispatches it to the bus and re-enters: this is the cost of one exit
round trip, in vmd a cffi ioctl plus Python dispatch under the BQL.

**Memory overhead** (``RSS - guest RAM``, MiB). The ``count`` guest runs
with ``-m 64``; once it has printed its first tick, the process's resident
memory minus the resident part of the guest-RAM mapping (from
``/proc/PID/smaps``) is what the VMM itself costs.

Both engines get the same command line (``-M pc -accel kvm -cpu qemu64
-nodefaults -display none``, serial to a file, ``isa-debug-exit``). QEMU
boots through SeaBIOS, which is not timed. Run from the repository root:

    .venv/bin/python bench/machine.py [--rounds 3] [--count 200000] [--json]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import BenchError, Metric

sys.path.insert(0, str(common.REPO))
from tests.guests.build import build_guest  # noqa: E402

QEMU = shutil.which("qemu-system-x86_64")
BASE = ["-M", "pc", "-accel", "kvm", "-cpu", "qemu64", "-nodefaults", "-display", "none",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
RAM_MIB = 64
TIMEOUT = 300.0


def command(engine: str) -> list[str]:
    program = [QEMU] if engine == "qemu" else [sys.executable, "-m", "vmd"]
    return [*program, *BASE]  # type: ignore[list-item]


def pio_exit(engine: str, work: Path, count: int) -> tuple[float, float]:
    """(ns, cycles) per exit, as the guest measured them."""
    serial = work / f"{engine}-pio.txt"
    serial.unlink(missing_ok=True)
    args = [*command(engine), "-m", "16", "-kernel", str(build_guest("pio_bench")),
            "-append", f"count={count}", "-serial", f"file:{serial}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    match = re.search(r"per_exit_cycles=(\d+) per_exit_ns=(\d+)", serial.read_text(errors="replace"))
    if match is None:
        raise BenchError(f"{engine}: no result from the guest (status {result.returncode}): {result.stderr[-500:]}")
    return float(match.group(2)), float(match.group(1))


def overhead_mib(engine: str, work: Path) -> float:
    """RSS minus the resident guest RAM, once the guest runs."""
    serial = work / f"{engine}-count.txt"
    serial.unlink(missing_ok=True)  # a tick from an earlier round must not count
    args = [*command(engine), "-m", str(RAM_MIB), "-kernel", str(build_guest("count")),
            "-serial", f"file:{serial}"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "tick 1" not in (serial.read_text(errors="replace") if serial.exists() else ""):
            if time.monotonic() > deadline or process.poll() is not None:
                raise BenchError(f"{engine}: the count guest did not start")
            time.sleep(0.2)
        return _rss_without_guest_ram(process.pid) / 1024
    finally:
        common.stop(process)


def _rss_without_guest_ram(pid: int) -> int:
    """KiB: VmRSS minus the Rss of the mapping that holds guest RAM."""
    total = 0
    guest = 0
    size = rss = 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
            total += rss
            if RAM_MIB * 1024 <= size <= (RAM_MIB + 4) * 1024:
                guest = max(guest, rss)
    return total - guest


def run(args: argparse.Namespace, notes: list[str]) -> list[Metric]:
    exit_ns = Metric("pio exit", "ns", ".0f")
    exit_cycles = Metric("pio exit", "cycles", ".0f")
    memory = Metric("RSS - guest RAM", "MiB", ".1f")
    engines = ["vmd"] + (["qemu"] if QEMU else [])
    if not QEMU:
        notes.append("qemu-system-x86_64 not found: vmd only")
    progress = common.progress_printer(args.quiet)
    with tempfile.TemporaryDirectory(prefix="vmd-bench-") as tmp:
        for round_index, engine in common.interleaved(engines, args.rounds):
            progress(f"round {round_index + 1}: {engine}")
            ns, cycles = pio_exit(engine, Path(tmp), args.count)
            exit_ns.add(engine, ns)
            exit_cycles.add(engine, cycles)
            memory.add(engine, overhead_mib(engine, Path(tmp)))
    notes.append(f"{args.count} port writes per run, {args.rounds} rounds, -m {RAM_MIB} for memory")
    return [exit_ns, exit_cycles, memory]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=200000)
    common.add_output_options(parser)
    args = parser.parse_args()
    return common.main("machine.py", args, run, name_width=28, legend="lower is better for every row")


if __name__ == "__main__":
    sys.exit(main())
