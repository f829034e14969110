#!/usr/bin/env python3
"""Compare block I/O throughput through an NBD export: vmd vs qemu-storage-daemon.

Both servers open the same kind of image (a fresh 1 GiB qcow2 file) as node
``disk`` and are set up over QMP with the same two commands,
``nbd-server-start`` on a Unix socket and ``block-export-add`` of type nbd.
The same client commands then run against each export:

* sequential 1 MiB reads and writes with ``qemu-img bench`` (queue depth 8);
* 4 KiB random reads and writes with fio's ``nbd`` engine (libnbd).

Because the client is identical on both sides, the ratio vmd/qemu reflects
the servers.  Server CPU time (all threads, /proc/PID/stat) is sampled
around every client run to show which side is the bottleneck.

Run from the repository root:  python bench/nbd_io.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also for python -m bench.nbd_io
import common
from common import REPO, BenchError, Metric, cpu_seconds, interleaved, log_tail, progress_printer, stop

MIB = 1 << 20
VIRTUAL_SIZE = "1G"
VIRTUAL_BYTES = 1 << 30
NODE = "disk"
EXPORT_ID = "e"
FILL_PATTERN = "0x5a"
CONNECT_POLL_S = 0.005
CPU_BOUND_SHARE = 0.85  # server CPU / wall above this: the server is the bottleneck


class Unsupported(BenchError):
    """The server does not (yet) implement a command the benchmark needs."""


@dataclass
class Tools:
    """Paths of the external programs; ``fio`` is None when it has no usable nbd engine."""

    qemu_img: str
    qemu_io: str
    qsd: str | None
    fio: str | None


class Runner:
    """Runs external commands, echoing them in --verbose, killing them on any exit."""

    def __init__(self, verbose: bool, timeout: float) -> None:
        self.verbose = verbose
        self.timeout = timeout

    def echo(self, text: str) -> None:
        if self.verbose:
            print(f"+ {text}", file=sys.stderr, flush=True)

    def run(self, argv: list[str], what: str) -> tuple[str, float, float]:
        """Run a client to completion; returns stdout, wall seconds and its CPU seconds."""
        self.echo(shlex.join(argv))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{what} did not finish within {self.timeout:.0f} s: "
                             f"{shlex.join(argv)}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            detail = (err or out).decode(errors="replace").strip()[-2000:]
            raise BenchError(f"{what} failed with status {proc.returncode}: "
                             f"{shlex.join(argv)}\n{detail}")
        return out.decode(errors="replace"), wall, cpu


# --- servers -----------------------------------------------------------------


class QmpClient:
    """Blocking line-based QMP client used only for setup (never timed)."""

    def __init__(self, path: Path, timeout: float, runner: Runner, label: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("rb")
        self.runner = runner
        self.label = label
        greeting = self._read()
        if "QMP" not in greeting:
            raise BenchError(f"{label}: not a QMP greeting: {greeting}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def _read(self) -> dict[str, Any]:
        line = self.reader.readline()
        if not line:
            raise BenchError(f"{self.label} closed the QMP connection")
        message: dict[str, Any] = json.loads(line)
        return message

    def command(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        request: dict[str, Any] = {"execute": name}
        if arguments is not None:
            request["arguments"] = arguments
        text = json.dumps(request)
        self.runner.echo(f"[{self.label} QMP] {text}")
        self.sock.sendall(text.encode() + b"\n")
        while "event" in (reply := self._read()):
            pass
        if "error" in reply:
            error = reply["error"]
            if error.get("class") == "CommandNotFound":
                raise Unsupported(f"{self.label}: {name}: {error.get('desc')}")
            raise BenchError(f"{self.label}: {name} failed: {error}")
        return reply["return"]


@dataclass
class Server:
    """A running NBD server: process, QMP connection and the export's URI."""

    label: str
    proc: subprocess.Popen[bytes]
    qmp: QmpClient
    uri: str


def blockdev_args(image: Path) -> str:
    return f"driver=qcow2,node-name={NODE},file.driver=file,file.filename={image}"


def server_argv(label: str, tools: Tools, image: Path, qmp_path: Path) -> list[str]:
    if label == "vmd":
        return [sys.executable, "-m", "vmd", "-qmp", f"unix:{qmp_path},server=on,wait=off",
                "-blockdev", blockdev_args(image)]
    assert tools.qsd is not None
    return [tools.qsd, "--chardev", f"socket,id=m,path={qmp_path},server=on,wait=off",
            "--monitor", "m", "--blockdev", blockdev_args(image)]


def wait_notify(notify: socket.socket, proc: subprocess.Popen[bytes], log: Path,
                timeout: float) -> None:
    """vmd reports readiness with sd_notify READY=1 once its monitors listen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            if b"READY=1" in notify.recv(4096).split(b"\n"):
                return
        if proc.poll() is not None:
            raise BenchError(f"vmd exited with status {proc.returncode}:\n{log_tail(log)}")
    raise BenchError(f"vmd did not send READY=1 within {timeout:.0f} s")


def wait_listening(path: Path, proc: subprocess.Popen[bytes], label: str, log: Path,
                   timeout: float) -> None:
    """qemu-storage-daemon has no readiness signal we can share; poll its QMP socket."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise BenchError(f"{label} exited with status {proc.returncode}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{label} did not listen on {path} within {timeout:.0f} s")
        time.sleep(CONNECT_POLL_S)


def start_server(label: str, tools: Tools, image: Path, tmp: Path, runner: Runner,
                 timeout: float, cleanup: contextlib.ExitStack) -> Server:
    """Start one server on ``image`` and export node ``disk`` over NBD via QMP.

    The QMP part is identical for both servers; only the way of noticing that
    the monitor is up differs.
    """
    qmp_path, nbd_path = tmp / f"{label}-qmp.sock", tmp / f"{label}-nbd.sock"
    log = tmp / f"{label}.log"
    for path in (qmp_path, nbd_path):
        path.unlink(missing_ok=True)
    argv = server_argv(label, tools, image, qmp_path)
    env = None
    notify: socket.socket | None = None
    if label == "vmd":
        notify_path = tmp / "notify.sock"
        notify_path.unlink(missing_ok=True)
        notify = cleanup.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        notify.bind(str(notify_path))
        notify.settimeout(0.2)
        env = dict(os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=str(notify_path))
        runner.echo(f"NOTIFY_SOCKET={notify_path} PYTHONPATH={REPO} {shlex.join(argv)}")
    else:
        runner.echo(shlex.join(argv))
    with open(log, "ab") as out:
        # A session of its own: Ctrl-C reaches only us, and we kill the server.
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    cleanup.callback(stop, proc)
    if notify is not None:
        wait_notify(notify, proc, log, timeout)
    else:
        wait_listening(qmp_path, proc, label, log, timeout)
    try:
        qmp = QmpClient(qmp_path, timeout, runner, label)
    except OSError as error:
        raise BenchError(f"{label}: cannot connect to QMP at {qmp_path}: {error}") from None
    cleanup.callback(qmp.close)
    qmp.command("qmp_capabilities")
    qmp.command("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(nbd_path)}}})
    qmp.command("block-export-add", {"type": "nbd", "id": EXPORT_ID, "node-name": NODE,
                                     "writable": True})
    return Server(label, proc, qmp, f"nbd+unix:///{NODE}?socket={nbd_path}")


# --- images ------------------------------------------------------------------


def create_image(path: Path, tools: Tools, runner: Runner) -> None:
    """A fresh, empty qcow2 image with default options (64 KiB clusters)."""
    runner.run([tools.qemu_img, "create", "-q", "-f", "qcow2", str(path), VIRTUAL_SIZE],
               "qemu-img create")


def create_filled_image(path: Path, size: int, tools: Tools, runner: Runner) -> None:
    """A qcow2 image whose first ``size`` bytes are allocated and hold 0x5a, so that
    reads hit allocated clusters (not the zero fast path)."""
    create_image(path, tools, runner)
    runner.run([tools.qemu_io, "-f", "qcow2", "-c", f"write -P {FILL_PATTERN} 0 {size}",
                str(path)], "qemu-io pre-fill")


# --- metrics -----------------------------------------------------------------


@dataclass
class Sample:
    """One client run: throughput plus who spent the CPU."""

    mib_s: float
    iops: float
    # CPU seconds of the whole client run divided by the I/O time the client reports
    # (start-up and NBD handshake excluded from the time, not from the CPU: a slight
    # overestimate, mostly on the client side), as a share of one CPU.
    server_cpu: float
    client_cpu: float


def measured(server: Server, run: Callable[[], tuple[str, float, float]]
             ) -> tuple[str, float, float]:
    """Run a client, returning its output and the CPU seconds the server and it used."""
    cpu0 = cpu_seconds(server.proc.pid)
    out, _wall, client_cpu = run()
    return out, cpu_seconds(server.proc.pid) - cpu0, client_cpu


RUN_COMPLETED = re.compile(r"Run completed in ([0-9.]+) seconds")


def sequential(server: Server, tools: Tools, runner: Runner, size: int, depth: int,
               write: bool) -> Sample:
    """MiB/s of ``qemu-img bench`` issuing size/1 MiB sequential requests, ``depth`` in flight.

    The time is the one qemu-img bench reports itself (first request to last
    completion), so process start-up and the NBD handshake are not counted.
    """
    count = size // MIB
    argv = [tools.qemu_img, "bench", "-f", "raw", *(["-w"] if write else []), "-t", "none",
            "-s", "1M", "-d", str(depth), "-c", str(count), server.uri]
    what = f"qemu-img bench ({'write' if write else 'read'}) against {server.label}"
    out, server_cpu, client_cpu = measured(server, lambda: runner.run(argv, what))
    match = RUN_COMPLETED.search(out)
    if match is None:
        raise BenchError(f"{what}: no 'Run completed' line in:\n{out}")
    seconds = max(float(match.group(1)), 0.001)  # printed with 3 decimals
    return Sample(count / seconds, count / seconds, server_cpu / seconds, client_cpu / seconds)


def random_4k(server: Server, tools: Tools, runner: Runner, size: int, depth: int,
              duration: float, write: bool) -> Sample:
    """IOPS and MiB/s of fio's nbd engine doing 4 KiB random requests over the first
    ``size`` bytes for ``duration`` seconds, ``depth`` in flight.

    fio's default fixed random seed gives both servers the same offsets.
    """
    assert tools.fio is not None
    rw = "randwrite" if write else "randread"
    argv = [tools.fio, "--name=rand4k", "--ioengine=nbd", f"--uri={server.uri}",
            f"--rw={rw}", "--bs=4k", f"--iodepth={depth}", f"--size={size}",
            "--time_based", f"--runtime={duration:g}", "--output-format=json"]
    what = f"fio {rw} against {server.label}"
    out, server_cpu, client_cpu = measured(server, lambda: runner.run(argv, what))
    try:
        job = json.loads(out[out.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError):
        raise BenchError(f"{what}: cannot parse fio's JSON output:\n{out[-2000:]}") from None
    stats = job["write" if write else "read"]
    if job.get("error"):
        raise BenchError(f"{what}: fio reports error {job['error']}")
    seconds = stats["runtime"] / 1000  # ms of I/O, without fio's start-up and handshake
    return Sample(stats["bw_bytes"] / MIB, stats["iops"], server_cpu / seconds,
                  client_cpu / seconds)


def warm_up(server: Server, tools: Tools, runner: Runner) -> None:
    """A few reads of never-written clusters at the end of the disk, unmeasured: the
    first requests pay for imports, caches and the first dispatch of each path."""
    runner.run([tools.qemu_img, "bench", "-f", "raw", "-t", "none", "-s", "1M", "-d", "4",
                "-c", "16", "-o", str(VIRTUAL_BYTES - 16 * MIB), server.uri],
               f"warm-up against {server.label}")


# --- driver ------------------------------------------------------------------


@dataclass
class Test:
    """One benchmark: its name, what image it needs, and its metric rows."""

    key: str
    title: str
    write: bool
    random: bool
    rows: list[Metric]


def make_tests(args: argparse.Namespace, with_fio: bool) -> list[Test]:
    def rows(title: str, random: bool) -> list[Metric]:
        result = [Metric(f"{title}", "MiB/s", ".1f")]
        if random:
            result.append(Metric(f"{title}", "IOPS", ".0f"))
        result += [Metric(f"{title}: server CPU", "%", ".0f"),
                   Metric(f"{title}: client CPU", "%", ".0f")]
        return result

    tests = [Test("seq-read", "seq read 1M", False, False, rows("seq read 1M", False)),
             Test("seq-write", "seq write 1M", True, False, rows("seq write 1M", False))]
    if with_fio:
        tests += [Test("rand-read", "rand read 4k", False, True, rows("rand read 4k", True)),
                  Test("rand-write", "rand write 4k", True, True, rows("rand write 4k", True))]
    return tests


def record(test: Test, label: str, sample: Sample) -> None:
    values = [sample.mib_s, *([sample.iops] if test.random else []),
              sample.server_cpu * 100, sample.client_cpu * 100]
    for metric, value in zip(test.rows, values, strict=True):
        metric.add(label, value)


def run_test(test: Test, server: Server, tools: Tools, runner: Runner,
             args: argparse.Namespace) -> Sample:
    if test.random:
        return random_4k(server, tools, runner, args.size, args.depth, args.duration,
                         test.write)
    return sequential(server, tools, runner, args.size, args.depth, test.write)


def one_round(label: str, run_index: int, tests: list[Test], template: Path, tmp: Path,
              tools: Tools, runner: Runner, args: argparse.Namespace,
              progress: Callable[[str], None]) -> None:
    """All tests once against one server kind.

    Read tests share one server on a private copy of the pre-filled image;
    each write test gets a fresh empty image and a server of its own, so
    every write run allocates clusters from scratch.
    """
    read_tests = [t for t in tests if not t.write]
    write_tests = [t for t in tests if t.write]
    groups: list[tuple[str, list[Test]]] = []
    if read_tests:
        groups.append(("read", read_tests))
    groups += [(t.key, [t]) for t in write_tests]
    for group, group_tests in groups:
        image = tmp / f"{label}-{group}-{run_index}.qcow2"
        try:
            if group == "read":
                runner.echo(f"cp {template} {image}")
                shutil.copyfile(template, image)
            else:
                create_image(image, tools, runner)
            with contextlib.ExitStack() as cleanup:
                server = start_server(label, tools, image, tmp, runner, args.timeout, cleanup)
                try:
                    warm_up(server, tools, runner)
                    samples = [(test, run_test(test, server, tools, runner, args))
                               for test in group_tests]
                except BenchError as error:  # the server's log is about to be deleted
                    log = log_tail(tmp / f"{label}.log") or "(empty)"
                    raise BenchError(f"{error}\n--- end of the {label} server log:\n"
                                     f"{log}") from None
                for test, sample in samples:
                    record(test, label, sample)
                    rate = f"{sample.mib_s:.1f} MiB/s" + (
                        f", {sample.iops:.0f} IOPS" if test.random else "")
                    progress(f"  run {run_index + 1} {label:>4} {test.title}: {rate}, "
                             f"server CPU {sample.server_cpu * 100:.0f}%")
        finally:
            image.unlink(missing_ok=True)


def find_tools(args: argparse.Namespace, notes: list[str]) -> Tools:
    def need(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            raise BenchError(f"{name} not found on PATH")
        return path

    qsd = shutil.which(args.qsd)
    if qsd is None:
        notes.append(f"{args.qsd} not found: running vmd alone")
    fio = shutil.which(args.fio)
    if fio is not None:
        engines = subprocess.run([fio, "--enghelp"], capture_output=True, text=True).stdout
        if "nbd" not in engines.split():
            notes.append(f"{fio} has no nbd ioengine: 4k random tests skipped")
            fio = None
    else:
        notes.append(f"{args.fio} not found: 4k random tests skipped")
    return Tools(need("qemu-img"), need("qemu-io"), qsd, fio)


def vmd_has_nbd(tools: Tools, tmp: Path, runner: Runner, timeout: float) -> str | None:
    """None if vmd can serve the export, else the reason it cannot (e.g. CommandNotFound)."""
    image = tmp / "probe.qcow2"
    create_image(image, tools, runner)
    try:
        with contextlib.ExitStack() as cleanup:
            start_server("vmd", tools, image, tmp, runner, timeout, cleanup)
    except Unsupported as error:
        return str(error)
    except BenchError as error:  # e.g. vmd cannot open the image: say so, run qemu alone
        return f"probe failed: {error}"
    finally:
        image.unlink(missing_ok=True)
    return None


def run(args: argparse.Namespace, notes: list[str]) -> list[Metric]:
    runner = Runner(args.verbose, args.timeout)
    tools = find_tools(args, notes)
    tests = make_tests(args, tools.fio is not None)
    progress = progress_printer(args.quiet)
    with tempfile.TemporaryDirectory(prefix="nbd-io-") as tmpdir:
        tmp = Path(tmpdir)
        labels: list[str] = []
        reason = vmd_has_nbd(tools, tmp, runner, args.timeout)
        if reason is None:
            labels.append("vmd")
        else:
            notes.append(f"vmd cannot export over NBD yet ({reason}): running qemu alone")
            progress(f"warning: vmd skipped: {reason}")
        if tools.qsd is not None:
            labels.append("qemu")
        if not labels:
            raise BenchError("neither vmd nor qemu-storage-daemon can run the benchmark")
        template = tmp / "filled.qcow2"
        progress(f"pre-filling {args.size // MIB} MiB of a {VIRTUAL_SIZE} qcow2 image")
        create_filled_image(template, args.size, tools, runner)
        progress(f"{args.runs} run(s) of {', '.join(t.title for t in tests)}")
        for run_index, label in interleaved(labels, args.runs):
            one_round(label, run_index, tests, template, tmp, tools, runner, args, progress)
    return [metric for test in tests for metric in test.rows]


def bottleneck_notes(metrics: list[Metric]) -> list[str]:
    """Say where each server looks CPU-bound: a busy main loop shows as ~100% of one CPU."""
    busy: dict[str, list[str]] = {}
    for metric in metrics:
        if not metric.name.endswith(": server CPU"):
            continue
        for label in ("vmd", "qemu"):
            share = metric.value(label)
            if share is not None and share >= CPU_BOUND_SHARE * 100:
                busy.setdefault(label, []).append(
                    f"{metric.name.removesuffix(': server CPU')} ({share:.0f}%)")
    return [f"{label} server at >= {CPU_BOUND_SHARE * 100:.0f}% of one CPU, i.e. CPU-bound, "
            f"in: {', '.join(tests)}" for label, tests in busy.items()]


SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 512M, 1G)")
    return int(match.group(1)) * SIZE_SUFFIXES[match.group(2).upper()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark block I/O through an NBD export of a qcow2 image: vmd against "
                    "qemu-storage-daemon, same client commands (qemu-img bench, fio nbd).")
    parser.add_argument("--size", type=parse_size, default=None,
                        help="bytes per sequential test, and the region of the 1 GiB disk "
                             "the random tests use; a multiple of 1M, at most 1G "
                             "(default: 512M, --quick: 128M)")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per server of every test; the median is reported "
                             "(default: 3, --quick: 1)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per fio random run (default: 5, --quick: 2)")
    parser.add_argument("--depth", type=int, default=8,
                        help="requests in flight (qemu-img bench -d, fio --iodepth) "
                             "(default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller and fewer runs: --size 128M --runs 1 --duration 2 "
                             "unless given")
    parser.add_argument("--qsd", default="qemu-storage-daemon",
                        help="qemu-storage-daemon binary name or path (default: %(default)s)")
    parser.add_argument("--fio", default="fio",
                        help="fio binary name or path (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for a server to start or a client to finish "
                             "(default: %(default)s)")
    common.add_output_options(
        parser, verbose_help="print every command (servers, QMP, clients) on stderr")
    args = parser.parse_args(argv)
    defaults = {"size": (128 * MIB, 512 * MIB), "runs": (1, 3), "duration": (2.0, 5.0)}
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.size % MIB or not MIB <= args.size <= VIRTUAL_BYTES - 16 * MIB:
        parser.error("--size must be a multiple of 1M, from 1M to 1008M "
                     "(the last 16M of the disk are kept for the warm-up)")
    if min(args.runs, args.depth) < 1 or args.duration <= 0:
        parser.error("--runs, --depth and --duration must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    legend = ("MiB/s and IOPS: higher is better; CPU is % of one CPU over the I/O time; "
              "spread = (max-min)/median over the runs")
    return common.main("nbd_io", parse_args(argv), run, name_width=34, legend=legend,
                       more_notes=bottleneck_notes)


if __name__ == "__main__":
    sys.exit(main())
