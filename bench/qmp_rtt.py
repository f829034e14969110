#!/usr/bin/env python3
"""Compare QMP latency, throughput, start-up time and memory of vmd and QEMU.

Both daemons are driven by the same tiny blocking client over a raw Unix
socket, so the client's own cost is identical on both sides and the ratio
vmd/QEMU reflects the servers.  QEMU runs as
``qemu-system-x86_64 -M none -nodefaults -display none``: no guest, only the
monitor, which is the closest thing to what vmd does without a machine.

Run from the repository root:  python bench/qmp_rtt.py [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also for python -m bench.qmp_rtt
import common
from common import REPO, BenchError, Metric, cpu_seconds, interleaved, log_tail, progress_printer, stop

QUERY = b'{"execute":"query-status"}'  # no newline, as qmp-shell/QMPClient send it
CONNECT_POLL_S = 0.0005


@dataclass
class Server:
    """How to launch one daemon with its QMP monitor on a given socket path."""

    label: str
    argv_prefix: list[str]
    env: dict[str, str] | None = None

    def argv(self, sock: Path) -> list[str]:
        return [*self.argv_prefix, "-qmp", f"unix:{sock},server=on,wait=off"]


class QmpClient:
    """Minimal line-buffered QMP client, shared by both servers so its cost cancels out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise BenchError("server closed the QMP connection")
        self.buf += chunk

    def readline(self) -> bytes:
        """Return one complete reply line (QMP servers end every message with a newline)."""
        while (end := self.buf.find(b"\n")) < 0:
            self._fill()
        line = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        return line

    def read_lines(self, count: int) -> bytes:
        """Return exactly ``count`` lines, counting newlines as data arrives (no per-line parsing)."""
        seen = self.buf.count(b"\n")
        while seen < count:
            before = len(self.buf)
            self._fill()
            seen += self.buf.count(b"\n", before)
        end = -1
        for _ in range(count):
            end = self.buf.index(b"\n", end + 1)
        data = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        return data

    def command(self, request: bytes) -> dict[str, object]:
        """Send one request and insist on a successful reply (setup only, not timed)."""
        self.sock.sendall(request)
        reply: dict[str, object] = json.loads(self.readline())
        if "return" not in reply:
            raise BenchError(f"unexpected reply to {request!r}: {reply}")
        return reply


@dataclass
class Daemon:
    """A running daemon with a negotiated QMP connection."""

    server: Server
    proc: subprocess.Popen[bytes]
    client: QmpClient
    started: float  # perf_counter() just before spawning
    greeting_s: float


# --- process handling ------------------------------------------------------


def spawn(server: Server, sock: Path, log: Path, timeout: float,
          cleanup: contextlib.ExitStack) -> Daemon:
    """Start a daemon and time spawn -> complete greeting line.

    The client polls connect() because neither daemon signals readiness in
    another way we could use identically for both.
    """
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    with open(log, "ab") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(server.argv(sock), env=server.env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    cleanup.callback(stop, proc)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cleanup.callback(conn.close)
    while True:
        try:
            conn.connect(str(sock))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if proc.poll() is not None:
                raise BenchError(f"{server.label} exited with status {proc.returncode} "
                                 f"before listening on {sock}:\n{log_tail(log)}") from None
            if time.perf_counter() - start > timeout:
                raise BenchError(f"{server.label} did not listen on {sock} "
                                 f"within {timeout:.0f} s") from None
            time.sleep(CONNECT_POLL_S)
    conn.settimeout(timeout)
    client = QmpClient(conn)
    greeting = client.readline()
    elapsed = time.perf_counter() - start
    if b'"QMP"' not in greeting:
        raise BenchError(f"{server.label}: not a QMP greeting: {greeting!r}")
    return Daemon(server, proc, client, start, elapsed)


def rss_mib(pid: int) -> float:
    """Resident set size from /proc/PID/status (VmRSS, in kB) as MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


# --- metrics ---------------------------------------------------------------


def start_up(server: Server, tmp: Path, timeout: float) -> tuple[float, float, float]:
    """Seconds from spawn to the greeting, to the capabilities reply, to a query-status reply.

    This is the cost a test suite or management tool pays every time it
    launches a daemon.  The later numbers matter because a server may greet
    before it can execute commands (vmd greets from an early thread while the
    rest of it is still importing); a client needs all three before doing any
    work, and ``query-status`` is the first command that is not negotiation.
    """
    with contextlib.ExitStack() as cleanup:
        daemon = spawn(server, tmp / "start.sock", tmp / f"{server.label}-start.log",
                       timeout, cleanup)
        daemon.client.command(b'{"execute":"qmp_capabilities"}')
        ready_s = time.perf_counter() - daemon.started
        daemon.client.command(QUERY)
        return daemon.greeting_s, ready_s, time.perf_counter() - daemon.started


def round_trips(daemon: Daemon, duration: float) -> tuple[float, float, float]:
    """Sequential query-status round trips per second.

    One request in flight at a time, like an interactive client: this measures
    per-request latency (wakeup, parse, dispatch, reply), not batching.
    Also returns server and client CPU use as a fraction of wall time, to see
    which side is the bottleneck.
    """
    client, sock = daemon.client, daemon.client.sock
    server_cpu0, client_cpu0 = cpu_seconds(daemon.proc.pid), time.process_time()
    count = 0
    start = time.perf_counter()
    deadline = start + duration
    while True:
        sock.sendall(QUERY)
        client.readline()
        count += 1
        if count % 64 == 0 and time.perf_counter() >= deadline:
            break
    wall = time.perf_counter() - start
    server_cpu = (cpu_seconds(daemon.proc.pid) - server_cpu0) / wall
    client_cpu = (time.process_time() - client_cpu0) / wall
    return count / wall, server_cpu, client_cpu


def burst(daemon: Daemon, requests: int) -> float:
    """Requests per second when M requests are pipelined in one write.

    Shows how well the server drains a full input buffer (parsing several
    objects per read, coalescing writes).  A second thread writes so that
    neither side can deadlock on full socket buffers while we read.
    """
    payload = b"".join(b'{"execute":"query-status","id":%d}' % i for i in range(requests))
    client = daemon.client
    errors: list[OSError] = []

    def write() -> None:
        try:
            client.sock.sendall(payload)
        except OSError as error:  # reported by the main thread
            errors.append(error)

    start = time.perf_counter()
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    data = client.read_lines(requests)
    elapsed = time.perf_counter() - start
    writer.join()
    if errors:
        raise BenchError(f"{daemon.server.label}: write failed: {errors[0]}")
    last = json.loads(data[data.rindex(b"\n", 0, len(data) - 1) + 1:])
    if data.count(b'"return"') != requests or last.get("id") != requests - 1:
        raise BenchError(f"{daemon.server.label}: burst replies incomplete or out of order")
    return requests / elapsed


# --- driver ----------------------------------------------------------------


def find_servers(args: argparse.Namespace) -> tuple[Server, Server | None, Server | None, Server]:
    """The vmd module launcher, the vmd console script (if installed), QEMU (if found),
    and the floor: a minimal uvloop server (``qmp_floor.py``) started the same way as vmd."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # The warm-up start writes vmd's .pyc files, as any user's first start
    # (or pip install) does; an environment that forbids it would time the
    # compiler on every start instead of vmd.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    vmd = Server("vmd", [sys.executable, "-m", "vmd"], env)
    script_path = shutil.which("vmd") or str(REPO / ".venv" / "bin" / "vmd")
    script = Server("vmd-script", [script_path], env) if os.access(script_path, os.X_OK) else None
    qemu_path = shutil.which(args.qemu)
    qemu = (Server("qemu", [qemu_path, "-M", "none", "-nodefaults", "-display", "none"])
            if qemu_path else None)
    floor = Server("floor", [sys.executable, str(Path(__file__).resolve().parent / "qmp_floor.py")])
    return vmd, script, qemu, floor


def run(args: argparse.Namespace, notes: list[str]) -> list[Metric]:
    vmd, script, qemu, floor = find_servers(args)
    if qemu is None:
        notes.append(f"{args.qemu} not found: running vmd alone")
        print(f"warning: {args.qemu} not found; running vmd alone", file=sys.stderr)
    if script is None:
        notes.append("no installed 'vmd' console script found; skipped its start-up time")
    servers = {s.label: s for s in (vmd, script, qemu, floor) if s is not None}
    main_labels = [s.label for s in (vmd, qemu) if s is not None]
    progress = progress_printer(args.quiet)

    greet = {"vmd": Metric("start-to-greeting", "ms", ".1f"),
             "vmd-script": Metric("start-to-greeting (vmd script)", "ms", ".1f")}
    ready = {"vmd": Metric("start-to-capabilities reply", "ms", ".1f"),
             "vmd-script": Metric("start-to-caps reply (vmd script)", "ms", ".1f")}
    first = {"vmd": Metric("start-to-first query-status reply", "ms", ".1f"),
             "vmd-script": Metric("start-to-query-status (vmd script)", "ms", ".1f"),
             "floor": Metric("start-to-query-status (uvloop floor)", "ms", ".1f")}
    rtt = Metric("query-status round trips/s", "1/s", ".0f")
    server_cpu = Metric("server CPU during RTT", "%", ".0f")
    client_cpu = Metric("client CPU during RTT", "%", ".0f")
    rss = Metric("RSS after RTT run", "MiB", ".1f")
    burst_rate = Metric(f"burst of {args.burst} requests/s", "1/s", ".0f")

    with tempfile.TemporaryDirectory(prefix="qmp-rtt-") as tmpdir, \
            contextlib.ExitStack() as cleanup:
        tmp = Path(tmpdir)
        progress(f"start-to-greeting: {args.starts} runs each (+1 warm-up)")
        for server in servers.values():  # warm-up: page cache, .pyc files
            start_up(server, tmp, args.timeout)
        for _, label in interleaved(list(servers), args.starts):
            greeting_s, ready_s, first_s = start_up(servers[label], tmp, args.timeout)
            # QEMU's samples go to the "vmd" rows; the script and floor rows share them below.
            row, column = ("vmd", "qemu") if label == "qemu" else (label, "vmd")
            first[row].add(column, first_s * 1000)
            if label != "floor":
                greet[row].add(column, greeting_s * 1000)
                ready[row].add(column, ready_s * 1000)
        for metric in (greet, ready, first):
            for row in metric:
                if row != "vmd" and "qemu" in metric["vmd"].samples:
                    metric[row].samples["qemu"] = metric["vmd"].samples["qemu"]

        daemons = {label: spawn(servers[label], tmp / f"{label}.sock", tmp / f"{label}.log",
                                args.timeout, cleanup) for label in main_labels}
        for daemon in daemons.values():
            daemon.client.command(b'{"execute":"qmp_capabilities"}')
            daemon.client.command(QUERY)  # warm-up: first dispatch of the command

        progress(f"round trips: {args.rounds} x {args.duration:g} s each")
        for _, label in interleaved(main_labels, args.rounds):
            rate, s_cpu, c_cpu = round_trips(daemons[label], args.duration)
            rtt.add(label, rate)
            server_cpu.add(label, s_cpu * 100)
            client_cpu.add(label, c_cpu * 100)
        for label, daemon in daemons.items():
            rss.samples[label] = [rss_mib(daemon.proc.pid)]

        progress(f"burst: {args.rounds} x {args.burst} pipelined requests")
        for _, label in interleaved(main_labels, args.rounds):
            burst_rate.add(label, burst(daemons[label], args.burst))

    metrics = [rtt, burst_rate, greet["vmd"], ready["vmd"], first["vmd"], first["floor"]]
    if script is not None:
        metrics += [greet["vmd-script"], ready["vmd-script"], first["vmd-script"]]
    return [*metrics, rss, server_cpu, client_cpu]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark vmd against 'qemu-system-x86_64 -M none' over raw QMP: "
                    "sequential round trips, pipelined bursts, start-to-greeting time, RSS.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs per server of the RTT and burst tests; median is reported "
                             "(default: %(default)s)")
    parser.add_argument("--duration", type=float, default=3.0,
                        help="seconds per round-trip run (default: %(default)s)")
    parser.add_argument("--burst", type=int, default=1000, metavar="M",
                        help="requests pipelined in one write (default: %(default)s)")
    parser.add_argument("--starts", type=int, default=15, metavar="K",
                        help="start-to-greeting runs per launcher (default: %(default)s)")
    parser.add_argument("--qemu", default="qemu-system-x86_64",
                        help="QEMU binary name or path (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for a daemon to start or answer "
                             "(default: %(default)s)")
    common.add_output_options(parser)
    args = parser.parse_args(argv)
    if min(args.rounds, args.burst, args.starts) < 1 or args.duration <= 0:
        parser.error("--rounds, --burst, --starts and --duration must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    legend = ("rates: higher is better; ms and MiB: lower is better; "
              "spread = (max-min)/median over the runs")
    return common.main("qmp_rtt", parse_args(argv), run, name_width=40, legend=legend)


if __name__ == "__main__":
    sys.exit(main())
