"""What the benchmarks in this folder share: errors, result rows, process and /proc helpers,
and the vmd-vs-qemu table / JSON output.

Every script compares vmd with a QEMU program side by side and reports the
median per server plus the ratio vmd/qemu, so the reduction, the table layout
and the run-order alternation live here once and cannot drift apart between
scripts.  Server start-up and the QMP clients stay in the scripts: they differ
on purpose (qmp_rtt times raw round trips and the greeting with a bytes client;
nbd_io only configures its servers, waiting for vmd's READY=1).

The scripts import this as ``common`` (their own folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
OUTPUT_FLAGS = ("json", "quiet", "verbose")  # options that change only the output, not the numbers


class BenchError(Exception):
    """A server or client could not be started or misbehaved; the message says which.

    The scripts catch only this (plus Ctrl-C) in ``main``, print the message and
    exit 1, so anything the user should see as a plain error must be one.
    """


@dataclass
class Metric:
    """One table row: per-server samples reduced by the median.

    The median rather than the mean, because a single run disturbed by other
    load on the machine should not move the reported value.
    """

    name: str
    unit: str
    fmt: str
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, label: str, value: float) -> None:
        self.samples.setdefault(label, []).append(value)

    def value(self, label: str) -> float | None:
        values = self.samples.get(label)
        return statistics.median(values) if values else None

    def spread(self, label: str) -> float | None:
        """(max - min) / median: a quick variance indicator."""
        values = self.samples.get(label)
        if not values or len(values) < 2 or not statistics.median(values):
            return None
        return (max(values) - min(values)) / statistics.median(values)


def ratio(metric: Metric) -> float | None:
    """vmd / qemu, or None when either side has no value (or qemu's is 0)."""
    vmd, qemu = metric.value("vmd"), metric.value("qemu")
    return vmd / qemu if vmd is not None and qemu else None


def interleaved(labels: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, label) pairs, alternating which server goes first each round so slow
    drift (thermal, other load) does not systematically favour one side."""
    for i in range(rounds):
        for label in labels if i % 2 == 0 else labels[::-1]:
            yield i, label


# --- processes ---------------------------------------------------------------


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill a server and reap it; safe to call twice (registered as an ExitStack callback)."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def log_tail(log: Path) -> str:
    """The end of a server's log, for error messages (the log dies with the temp dir)."""
    return log.read_text(errors="replace")[-2000:].strip()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), from /proc/PID/stat.

    /proc rather than getrusage, because the servers are still running when
    we sample them; fields are counted after the last ')' since the command
    name may contain spaces or parentheses.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- driver and output -------------------------------------------------------


def progress_printer(quiet: bool) -> Callable[[str], None]:
    """A progress callback: stderr (so stdout stays the table or JSON), or nothing."""
    if quiet:
        return lambda _msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def add_output_options(parser: argparse.ArgumentParser, verbose_help: str | None = None) -> None:
    """Add --json, --verbose (only if ``verbose_help`` says what it prints) and --quiet.

    These are the options :data:`OUTPUT_FLAGS` leaves out of the JSON params,
    since they change what is printed, not what is measured.
    """
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable JSON instead of the table")
    if verbose_help is not None:
        parser.add_argument("--verbose", action="store_true", help=verbose_help)
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr")


def main(prog: str, args: argparse.Namespace,
         run: Callable[[argparse.Namespace, list[str]], list[Metric]], *, name_width: int,
         legend: str, more_notes: Callable[[list[Metric]], list[str]] | None = None) -> int:
    """Call ``run(args, notes)`` and print its metrics; returns the exit status.

    SIGTERM becomes SystemExit so the same cleanup as for Ctrl-C runs (the
    scripts kill their servers from ExitStack callbacks and a temp dir).  A
    BenchError or Ctrl-C prints one line on stderr instead of a traceback.
    ``more_notes`` derives notes from the results (e.g. which server is CPU-bound).
    """
    notes: list[str] = []
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    try:
        metrics = run(args, notes)
    except BenchError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # servers, sockets and the temp dir are already gone
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if more_notes is not None:
        notes += more_notes(metrics)
    if args.json:
        json.dump({
            "params": {k: v for k, v in vars(args).items() if k not in OUTPUT_FLAGS},
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "metrics": [{"name": m.name, "unit": m.unit, "vmd": m.value("vmd"),
                         "qemu": m.value("qemu"), "ratio": ratio(m), "samples": m.samples}
                        for m in metrics],
            "notes": notes,
        }, sys.stdout, indent=2)
        print()
    else:
        print_table(metrics, notes, name_width, legend)
    return 0


def print_table(metrics: list[Metric], notes: list[str], name_width: int, legend: str) -> None:
    """One row per metric: vmd, qemu, ratio and spread; then ``legend`` and the notes.

    ``name_width`` is per script so each keeps the column width its metric
    names need (the layout is what people compare between runs).
    """
    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.0f}%"

    header = (f"{'metric':<{name_width}} {'vmd':>10} {'qemu':>10} {'ratio (vmd/qemu)':>17}"
              f"  spread vmd/qemu")
    print(header)
    print("-" * len(header))
    for m in metrics:
        r = ratio(m)
        print(f"{m.name + ' (' + m.unit + ')':<{name_width}} {cell(m.value('vmd'), m.fmt):>10} "
              f"{cell(m.value('qemu'), m.fmt):>10} {cell(r, '.2f') + ('x' if r else ''):>17}"
              f"  {pct(m.spread('vmd'))}/{pct(m.spread('qemu'))}")
    print(f"\n{legend}")
    for note in notes:
        print(f"note: {note}")
