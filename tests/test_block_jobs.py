"""Block jobs against QEMU 7.2: commit (intermediate and active), stream, mirror.

Each scenario drives ``qemu-system-x86_64 -M none`` and vmd with the same
QMP through ``qemu.qmp``, each over its own copy of the same qcow2 chain,
and compares every reply (errors included), the full event sequence and
the ``query-block-jobs``/``query-jobs`` states. Jobs are held in the
running state by a speed limit and waited for by their events, never by
sleeping. Afterwards the images are compared across the two daemons with
``qemu-img compare`` and checked with ``qemu-img check``, and their backing
file names compared.

vmd-only tests write through an NBD export while active commit and mirror
run, then check that nothing was lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from qemu.qmp import EventListener, QMPClient
from qemu.qmp.qmp_client import ExecuteError

from tests.harness import QEMU, running_qemu, running_vmd

pytestmark = pytest.mark.qemu
if QEMU is None:  # pragma: no cover - QEMU is installed by scripts/setup.sh
    pytestmark = pytest.mark.skip("qemu-system-x86_64 is not installed")

Step = tuple[str, dict[str, Any]]
#: ``("wait", {"event": NAME, ...data members to match})`` waits for an event.
WAIT = "wait"
EVENT_TIMEOUT = 10.0


def qimg(*args: str | Path) -> str:
    return subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True, text=True).stdout


def qio(path: str | Path, *commands: str, fmt: str | None = None) -> str:
    args: list[str] = [] if fmt is None else ["-f", fmt]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(["qemu-io", *args, str(path)], check=True, capture_output=True, text=True).stdout


def make_chain(root: Path) -> None:
    """base <- mid <- top, 4 MiB, each with its own data."""
    qimg("create", "-f", "qcow2", root / "base.qcow2", "4M")
    qio(root / "base.qcow2", "write -P 1 0 1M")
    qimg("create", "-f", "qcow2", "-b", root / "base.qcow2", "-F", "qcow2", root / "mid.qcow2")
    qio(root / "mid.qcow2", "write -P 2 512k 1M")
    qimg("create", "-f", "qcow2", "-b", root / "mid.qcow2", "-F", "qcow2", root / "top.qcow2")
    qio(root / "top.qcow2", "write -P 3 2M 512k")
    qimg("create", "-f", "qcow2", root / "tgt.qcow2", "4M")


def open_chain(root: Path) -> list[Step]:
    """The chain as named nodes, the lower images read-only."""
    def qcow2(name: str, **extra: Any) -> Step:
        return ("blockdev-add", {"driver": "qcow2", "node-name": name,
                                 "file": {"driver": "file", "filename": str(root / f"{name}.qcow2")}, **extra})
    return [qcow2("base", **{"read-only": True}), qcow2("mid", backing="base", **{"read-only": True}),
            qcow2("top", backing="mid")]


def wait(event: str, **data: Any) -> Step:
    return (WAIT, {"event": event, **data})


async def drive(socket: Path, steps: list[Step | Callable[[], Any]]) -> list[Any]:
    """Run ``steps``; return replies and events in the order they came. A
    step may be a function run between commands (guest I/O through an
    export); what it returns, unless None, is recorded as ``("saw", ...)``."""
    client = QMPClient()
    await client.connect(str(socket))
    listener = EventListener()
    client.register_listener(listener)
    out: list[Any] = []
    waited = 0  # events before this index were already looked at by a wait

    def drain() -> None:
        while not listener.empty():
            event = listener._queue.get_nowait()  # noqa: SLF001 - qemu.qmp has no public non-blocking get
            out.append(("event", event["event"], event.get("data")))
    try:
        for step in steps:
            if callable(step):
                seen = step()
                if seen is not None:
                    out.append(("saw", seen))
                continue
            name, args = step
            if name == WAIT:
                want = dict(args)
                event_name = want.pop("event")
                drain()
                early = [i for i, line in enumerate(out[waited:], waited) if _matches(line, event_name, want)]
                if early:
                    waited = early[0] + 1
                    continue
                if not await _wait_for(listener, event_name, want, out):
                    out.append(("timeout", event_name))  # the comparison shows where
                    break
                waited = len(out)
                continue
            drain()
            try:
                out.append(("return", name, await client.execute(name, args)))
            except ExecuteError as error:
                out.append(("error", name, error.error_class, error.error.error.desc))
        drain()
        await quit_daemon(client)  # images are closed (flushed) before they are compared
    finally:
        await hang_up(client)
    return out


def _matches(line: Any, name: str, data: dict[str, Any]) -> bool:
    return bool(line[0] == "event" and line[1] == name and all(line[2].get(k) == v for k, v in data.items()))


async def _wait_for(listener: EventListener, name: str, data: dict[str, Any], out: list[Any]) -> bool:
    """Record events until ``name`` with ``data`` came; False on timeout."""
    while True:
        try:
            event = await asyncio.wait_for(listener.get(), EVENT_TIMEOUT)
        except TimeoutError:
            return False
        out.append(("event", event["event"], event.get("data")))
        if _matches(out[-1], name, data):
            return True


def normalise(result: list[Any], root: Path) -> list[Any]:
    """Paths relative to the daemon's directory; ``busy`` is a race in both."""
    text = json.dumps(result, sort_keys=True).replace(str(root), "<dir>")
    text = re.sub(r'"busy": (true|false)', '"busy": "-"', text)
    # How far a running job got (and how much it found to copy) when the
    # query came is a race in both.
    for member in ("len", "offset", "current-progress", "total-progress"):
        text = re.sub(rf'"{member}": \d+(, [^]}}]*?"status": "running")', rf'"{member}": "-"\1', text)
    loaded: list[Any] = json.loads(text)
    return loaded


def run_both(tmp_path: Path, setup: Callable[[Path], None], steps: Callable[[Path], list[Any]],
             runner: Callable[[Path, list[Any]], Awaitable[list[Any]]] | None = None,
             clean: Callable[[list[Any], Path], list[Any]] = normalise,
             options: Callable[[Path], list[str]] | None = None) -> dict[str, list[Any]]:
    """The same steps on QEMU and on vmd, each in its own directory
    (``runner`` carries them out, ``drive`` by default; ``clean`` makes the
    two results comparable; ``options`` are command line options of both)."""
    run = runner or drive
    results: dict[str, list[Any]] = {}
    for who in ("qemu", "vmd"):
        root = tmp_path / who
        root.mkdir()
        setup(root)
        extra = options(root) if options is not None else []
        if who == "qemu":
            with running_qemu(root, *extra) as socket:
                pid = int((root / "qemu.pid").read_text())
                results[who] = clean(asyncio.run(run(socket, steps(root))), root)
                wait_gone(pid)
        else:
            with running_vmd(root, *extra) as vmd:
                results[who] = clean(asyncio.run(run(vmd.qmp_path, steps(root))), root)
                vmd.process.wait(10)
    return results


async def quit_daemon(client: QMPClient) -> None:
    """``quit``: the daemon closes its images and hangs up (the reply may
    not make it)."""
    try:
        await client.execute("quit")
    except (EOFError, ConnectionError):
        pass


async def hang_up(client: QMPClient) -> None:
    """Disconnect; after ``quit`` the daemon has hung up already."""
    try:
        await client.disconnect()
    except (EOFError, ConnectionError):
        pass


def wait_gone(pid: int) -> None:
    """Wait until QEMU has exited after ``quit`` (it is no child of ours)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)  # polling a foreign pid: there is no event to wait on
    raise AssertionError("QEMU did not exit")


def events(result: list[Any]) -> list[Any]:
    return [line for line in result if line[0] == "event"]


def replies(result: list[Any]) -> list[Any]:
    return [line for line in result if line[0] != "event"]


def assert_same_results(results: dict[str, list[Any]]) -> None:
    """Every reply, and every event in order (how events interleave with
    replies is a race in QEMU too)."""
    assert replies(results["vmd"]) == replies(results["qemu"])
    assert events(results["vmd"]) == events(results["qemu"])


def assert_same_images(tmp_path: Path, *names: str) -> None:
    """Same content, consistent, same backing file (relative to each dir)."""
    for name in names:
        ours, theirs = tmp_path / "vmd" / f"{name}.qcow2", tmp_path / "qemu" / f"{name}.qcow2"
        assert "Images are identical" in qimg("compare", theirs, ours)
        qimg("check", ours)
        infos = [json.loads(qimg("info", "--output=json", "-U", path)) for path in (theirs, ours)]
        backing = [str(info.get("backing-filename", "")).replace(str(path.parent), "<dir>")
                   for info, path in zip(infos, (theirs, ours))]
        assert backing[0] == backing[1], name


def test_intermediate_commit_same_as_qemu(tmp_path: Path) -> None:
    def steps(root: Path) -> list[Step]:
        return open_chain(root) + [
            ("block-commit", {"job-id": "c1", "device": "top", "top-node": "mid", "base-node": "base"}),
            wait("JOB_STATUS_CHANGE", status="null"),
            ("query-block-jobs", {}),
            ("blockdev-del", {"node-name": "mid"}),
            ("blockdev-del", {"node-name": "top"}),
            ("blockdev-del", {"node-name": "base"}),
        ]
    results = run_both(tmp_path, make_chain, steps)
    assert_same_results(results)
    assert [e[2]["status"] for e in events(results["vmd"]) if e[1] == "JOB_STATUS_CHANGE"] == [
        "created", "running", "waiting", "pending", "concluded", "null"]
    assert_same_images(tmp_path, "base", "mid", "top")
    info = json.loads(qimg("info", "--output=json", tmp_path / "vmd" / "top.qcow2"))
    assert info["backing-filename"] == str(tmp_path / "vmd" / "base.qcow2")


def test_commit_errors_verbs_and_manual_finalize_same_as_qemu(tmp_path: Path) -> None:
    def steps(root: Path) -> list[Step]:
        return open_chain(root) + [
            ("block-commit", {"device": "nosuch"}),
            ("block-commit", {"device": "mid"}),
            ("block-commit", {"device": "top", "top-node": "top", "base-node": "top"}),
            ("block-commit", {"device": "top", "base-node": "top"}),
            ("block-commit", {"device": "top", "base": "x", "base-node": "base"}),
            ("block-commit", {"device": "top", "top-node": "mid", "base-node": "base"}),
            ("block-commit", {"device": "top", "backing-file": "x"}),
            ("block-commit", {"job-id": "c1", "device": "top", "top-node": "mid", "base-node": "base",
                              "speed": 1, "auto-dismiss": False, "auto-finalize": False}),
            ("block-commit", {"job-id": "c2", "device": "top", "top-node": "mid", "base-node": "base"}),
            ("blockdev-del", {"node-name": "mid"}),
            ("blockdev-del", {"node-name": "base"}),
            ("blockdev-del", {"node-name": "top"}),
            ("query-block-jobs", {}),
            ("query-jobs", {}),
            ("block-job-set-speed", {"device": "c1", "speed": -1}),
            ("block-job-set-speed", {"device": "nosuch", "speed": 1}),
            ("job-pause", {"id": "nosuch"}),
            ("block-job-complete", {"device": "c1"}),
            ("block-job-finalize", {"id": "c1"}),
            ("block-job-dismiss", {"id": "c1"}),
            ("block-job-resume", {"device": "c1"}),
            ("block-job-pause", {"device": "c1"}),
            ("block-job-pause", {"device": "c1"}),
            wait("JOB_STATUS_CHANGE", status="paused"),
            ("query-block-jobs", {}),
            ("block-job-cancel", {"device": "c1"}),
            ("block-job-resume", {"device": "c1"}),
            wait("JOB_STATUS_CHANGE", status="running"),
            ("block-job-set-speed", {"device": "c1", "speed": 0}),
            wait("BLOCK_JOB_PENDING"),
            ("query-block-jobs", {}),
            ("block-job-cancel", {"device": "c1", "force": True}),
            ("block-job-set-speed", {"device": "c1", "speed": 1}),
            ("block-job-finalize", {"id": "c1"}),
            ("query-jobs", {}),
            ("block-job-cancel", {"device": "c1"}),
            ("block-job-dismiss", {"id": "c1"}),
            ("query-jobs", {}),
        ]
    results = run_both(tmp_path, make_chain, steps)
    assert_same_results(results)
    assert_same_images(tmp_path, "base", "mid", "top")


def test_active_commit_same_as_qemu(tmp_path: Path) -> None:
    def steps(root: Path) -> list[Step]:
        return open_chain(root) + [
            ("block-commit", {"job-id": "c1", "device": "top", "base-node": "mid", "speed": 65536,
                              "filter-node-name": "ctop"}),
            ("query-block-jobs", {}),
            ("blockdev-del", {"node-name": "mid"}),
            ("blockdev-del", {"node-name": "top"}),
            ("block-job-complete", {"device": "c1"}),
            ("block-job-set-speed", {"device": "c1", "speed": 0}),
            wait("BLOCK_JOB_READY"),
            ("query-block-jobs", {}),
            ("block-job-pause", {"device": "c1"}),
            wait("JOB_STATUS_CHANGE", status="standby"),
            ("block-job-complete", {"device": "c1"}),
            ("block-job-resume", {"device": "c1"}),
            wait("JOB_STATUS_CHANGE", status="null"),
            ("blockdev-del", {"node-name": "top"}),
            ("blockdev-del", {"node-name": "mid"}),
        ]
    results = run_both(tmp_path, make_chain, steps)
    assert_same_results(results)
    assert_same_images(tmp_path, "base", "mid", "top")


def test_mirror_cancel_and_complete_same_as_qemu(tmp_path: Path) -> None:
    def steps(root: Path) -> list[Step]:
        target = {"driver": "qcow2", "node-name": "tgt",
                  "file": {"driver": "file", "filename": str(root / "tgt.qcow2")}}
        return open_chain(root) + [
            ("blockdev-add", target),
            ("blockdev-mirror", {"device": "top", "target": "tgt", "sync": "full", "granularity": 1000}),
            ("blockdev-mirror", {"device": "top", "target": "top", "sync": "full"}),
            ("blockdev-mirror", {"device": "top", "target": "tgt", "sync": "incremental"}),
            ("blockdev-mirror", {"job-id": "m1", "device": "top", "target": "tgt", "sync": "full",
                                 "speed": 65536}),
            ("query-block-jobs", {}),
            ("blockdev-del", {"node-name": "tgt"}),
            ("block-job-complete", {"device": "m1"}),
            ("block-job-set-speed", {"device": "m1", "speed": 0}),
            wait("BLOCK_JOB_READY"),
            ("block-job-cancel", {"device": "m1"}),        # soft: completes, no switch
            wait("JOB_STATUS_CHANGE", status="null"),
            ("blockdev-mirror", {"job-id": "m2", "device": "top", "target": "tgt", "sync": "full"}),
            wait("BLOCK_JOB_READY"),
            ("block-job-cancel", {"device": "m2", "force": True}),
            wait("JOB_STATUS_CHANGE", status="null"),
            ("blockdev-mirror", {"job-id": "m3", "device": "top", "target": "tgt", "sync": "top",
                                 "auto-finalize": False}),
            wait("BLOCK_JOB_READY"),
            ("job-complete", {"id": "m3"}),
            wait("BLOCK_JOB_PENDING"),
            ("job-finalize", {"id": "m3"}),
            wait("JOB_STATUS_CHANGE", status="null"),
        ]
    results = run_both(tmp_path, make_chain, steps)
    assert_same_results(results)
    assert_same_images(tmp_path, "base", "mid", "top", "tgt")


def test_stream_same_as_qemu(tmp_path: Path) -> None:
    def steps(root: Path) -> list[Step]:
        return open_chain(root) + [
            ("block-stream", {"device": "top", "base": "x", "base-node": "y"}),
            ("block-stream", {"device": "top", "backing-file": "x"}),
            ("block-stream", {"device": "top", "base-node": "top"}),
            ("block-stream", {"device": "top", "bottom": "nosuch"}),
            ("block-stream", {"job-id": "s1", "device": "top", "base-node": "base", "speed": 65536,
                              "filter-node-name": "cor"}),
            ("query-block-jobs", {}),
            ("blockdev-del", {"node-name": "mid"}),
            ("blockdev-del", {"node-name": "cor"}),
            ("block-job-pause", {"device": "s1"}),
            wait("JOB_STATUS_CHANGE", status="paused"),
            ("block-job-set-speed", {"device": "s1", "speed": 0}),
            ("block-job-resume", {"device": "s1"}),
            wait("JOB_STATUS_CHANGE", status="null"),
            ("blockdev-del", {"node-name": "mid"}),
            ("block-stream", {"job-id": "s2", "device": "top"}),
            wait("JOB_STATUS_CHANGE", status="null"),
        ]
    results = run_both(tmp_path, make_chain, steps)
    assert_same_results(results)
    assert_same_images(tmp_path, "base", "top")


def test_error_policy_stop_resume_same_as_qemu(tmp_path: Path) -> None:
    """blkdebug fails the first read of the committed image: with
    ``on-error: stop`` the job reports BLOCK_JOB_ERROR, pauses with
    io-status failed, and resuming retries and finishes."""
    def steps(root: Path) -> list[Step]:
        mid = {"driver": "qcow2", "node-name": "mid", "read-only": True, "backing": "base",
               "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": str(root / "mid.qcow2")},
                        "inject-error": [{"event": "read_aio", "once": True}]}}
        return [open_chain(root)[0], ("blockdev-add", mid), open_chain(root)[2]] + [
            ("block-commit", {"job-id": "c1", "device": "top", "top-node": "mid", "base-node": "base",
                              "on-error": "stop"}),
            wait("JOB_STATUS_CHANGE", status="paused"),
            ("query-block-jobs", {}),
            ("block-job-resume", {"device": "c1"}),
            wait("JOB_STATUS_CHANGE", status="null"),
            ("blockdev-del", {"node-name": "top"}),
        ]
    results = run_both(tmp_path, make_chain, steps)
    assert_same_results(results)
    assert ["event", "BLOCK_JOB_ERROR", {"action": "stop", "device": "c1", "operation": "read"}] in results["vmd"]
    assert_same_images(tmp_path, "base", "top")


def test_error_policy_report_fails_job_same_as_qemu(tmp_path: Path) -> None:
    def steps(root: Path) -> list[Step]:
        mid = {"driver": "qcow2", "node-name": "mid", "read-only": True, "backing": "base",
               "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": str(root / "mid.qcow2")},
                        "inject-error": [{"event": "read_aio", "once": True}]}}
        return [open_chain(root)[0], ("blockdev-add", mid), open_chain(root)[2]] + [
            ("block-stream", {"job-id": "s1", "device": "top", "auto-dismiss": False}),
            wait("JOB_STATUS_CHANGE", status="concluded"),
            ("query-block-jobs", {}),
            ("query-jobs", {}),
            ("job-dismiss", {"id": "s1"}),
        ]
    results = run_both(tmp_path, make_chain, steps)
    assert_same_results(results)


# -- vmd alone: guest writes during the jobs ---------------------------------------------------


def nbd_steps(root: Path) -> list[Step]:
    return [("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(root / "nbd.sock")}}}),
            ("block-export-add", {"type": "nbd", "id": "e", "node-name": "top", "writable": True})]


def nbd_uri(root: Path) -> str:
    return f"nbd+unix:///top?socket={root / 'nbd.sock'}"


async def _writes_during_job(root: Path, socket: Path, start: Step, ready_event: str) -> list[Any]:
    """Start the job held by a speed limit, write through the export while
    it runs (and once it is ready), then complete it."""
    client = QMPClient()
    await client.connect(str(socket))
    listener = EventListener()
    client.register_listener(listener)
    seen: list[Any] = []

    async def until(name: str) -> None:
        while True:
            event = await asyncio.wait_for(listener.get(), EVENT_TIMEOUT)
            seen.append((event["event"], event.get("data")))
            if event["event"] == name:
                return
    try:
        target: Step = ("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                                         "file": {"driver": "file", "filename": str(root / "tgt.qcow2")}})
        for name, args in open_chain(root) + [target] + nbd_steps(root) + [start]:
            await client.execute(name, args)
        writes = [f"write -P {0x40 + i} {i * 384}k 200k" for i in range(10)]
        await asyncio.to_thread(qio, nbd_uri(root), *writes[:5], fmt="raw")
        await client.execute("block-job-set-speed", {"device": "j", "speed": 0})
        await until(ready_event)
        await asyncio.to_thread(qio, nbd_uri(root), *writes[5:], fmt="raw")
        await client.execute("job-complete", {"id": "j"})
        await until("BLOCK_JOB_COMPLETED")
        await asyncio.to_thread(qio, nbd_uri(root), "write -P 0x77 3M 64k", fmt="raw")
        seen.append(await client.execute("query-block-exports"))
        await quit_daemon(client)
    finally:
        await hang_up(client)
    return seen


@pytest.mark.parametrize("job", ["active-commit", "mirror"])
@pytest.mark.parametrize("copy_mode", ["background", "write-blocking"])
def test_writes_through_export_during_job_are_kept(tmp_path: Path, job: str, copy_mode: str) -> None:
    make_chain(tmp_path)
    expected = tmp_path / "expected.raw"
    qimg("convert", "-O", "raw", tmp_path / "top.qcow2", expected)
    writes = [f"write -P {0x40 + i} {i * 384}k 200k" for i in range(10)] + ["write -P 0x77 3M 64k"]
    qio(expected, *writes, fmt="raw")
    if job == "active-commit":
        if copy_mode == "write-blocking":
            pytest.skip("active commit has no copy mode")
        start: Step = ("block-commit", {"job-id": "j", "device": "top", "base-node": "mid", "speed": 1})
        result_image = tmp_path / "mid.qcow2"
    else:
        start = ("blockdev-mirror", {"job-id": "j", "device": "top", "target": "tgt", "sync": "full",
                                     "speed": 1, "copy-mode": copy_mode})
        result_image = tmp_path / "tgt.qcow2"
    with running_vmd(tmp_path) as vmd:
        steps_socket = vmd.qmp_path
        seen = asyncio.run(_writes_during_job(tmp_path, steps_socket, start, "BLOCK_JOB_READY"))
        vmd.process.wait(10)
        exports = seen[-1]
        # the export followed the switch: the last write landed in the new top
        assert [entry["node-name"] for entry in exports] == [
            "mid" if job == "active-commit" else "tgt"]
    assert "Images are identical" in qimg("compare", "-F", "raw", result_image, expected)
    qimg("check", result_image)
    qimg("check", tmp_path / "top.qcow2")


async def job_with_writes(root: Path, socket: Path, start: Step, writes: list[str]) -> None:
    """Open the chain and ``tgt``, export ``top``, start the job (held by
    ``speed: 1``), write through the export, lift the limit and wait until
    the job completed; then quit (images closed)."""
    client = QMPClient()
    await client.connect(str(socket))
    listener = EventListener()
    client.register_listener(listener)
    try:
        target: Step = ("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                                         "file": {"driver": "file", "filename": str(root / "tgt.qcow2")}})
        for name, args in open_chain(root) + [target] + nbd_steps(root) + [start]:
            await client.execute(name, args)
        await asyncio.to_thread(qio, nbd_uri(root), *writes, fmt="raw")
        await client.execute("block-job-set-speed", {"device": start[1]["job-id"], "speed": 0})
        while (await asyncio.wait_for(listener.get(), EVENT_TIMEOUT))["event"] != "BLOCK_JOB_COMPLETED":
            pass
        await quit_daemon(client)
    finally:
        await hang_up(client)


def test_stream_keeps_writes_and_reads_through_export(tmp_path: Path) -> None:
    """Writes and reads through the copy-on-read filter while streaming."""
    make_chain(tmp_path)
    expected = tmp_path / "expected.raw"
    qimg("convert", "-O", "raw", tmp_path / "top.qcow2", expected)
    writes = [f"write -P {0x50 + i} {i * 448}k 100k" for i in range(8)]
    qio(expected, *writes, fmt="raw")
    start: Step = ("block-stream", {"job-id": "s", "device": "top", "speed": 1})
    with running_vmd(tmp_path) as vmd:
        asyncio.run(job_with_writes(tmp_path, vmd.qmp_path, start, [*writes, "read -P 1 128k 128k"]))
        vmd.process.wait(10)
    info = json.loads(qimg("info", "--output=json", tmp_path / "top.qcow2"))
    assert "backing-filename" not in info
    assert "Images are identical" in qimg("compare", "-F", "raw", tmp_path / "top.qcow2", expected)
    qimg("check", tmp_path / "top.qcow2")


@pytest.mark.parametrize("start", [
    ("block-commit", {"job-id": "j", "device": "top", "top-node": "mid", "base-node": "base", "speed": 1}),
    ("block-commit", {"job-id": "j", "device": "top", "base-node": "mid", "speed": 1}),
    ("block-stream", {"job-id": "j", "device": "top", "speed": 1}),
    ("blockdev-mirror", {"job-id": "j", "device": "top", "target": "tgt", "sync": "full", "speed": 1}),
], ids=["commit", "active-commit", "stream", "mirror"])
def test_sigkill_mid_job_leaves_images_consistent(tmp_path: Path, start: Step) -> None:
    """vmd killed while a job has copied its first chunk: every image passes
    qemu-img check and the chain still reads the original data."""
    make_chain(tmp_path)
    original = tmp_path / "original.raw"
    qimg("convert", "-O", "raw", tmp_path / "top.qcow2", original)

    async def scenario(socket: Path) -> None:
        client = QMPClient()
        await client.connect(str(socket))
        try:
            target: Step = ("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                                             "file": {"driver": "file", "filename": str(tmp_path / "tgt.qcow2")}})
            for name, args in open_chain(tmp_path) + [target, start]:
                await client.execute(name, args)
            deadline = time.monotonic() + EVENT_TIMEOUT
            # the first chunk goes through the speed limit; then the job sleeps
            while not any(job["offset"] for job in cast(list[dict[str, Any]],
                                                          await client.execute("query-block-jobs"))):
                assert time.monotonic() < deadline, "the job copied nothing"
                await asyncio.sleep(0.01)
        finally:
            await hang_up(client)
    with running_vmd(tmp_path) as vmd:
        asyncio.run(scenario(vmd.qmp_path))
        vmd.process.kill()
        vmd.process.wait(10)
    for name in ("base", "mid", "top", "tgt"):
        qimg("check", tmp_path / f"{name}.qcow2")
    assert "Images are identical" in qimg("compare", "-F", "raw", tmp_path / "top.qcow2", original)


def test_backup_same_as_qemu(tmp_path: Path) -> None:
    def setup(root: Path) -> None:
        make_chain(root)
        qimg("create", "-f", "qcow2", root / "small.qcow2", "1M")

    def steps(root: Path) -> list[Step]:
        def qcow2(name: str) -> Step:
            return ("blockdev-add", {"driver": "qcow2", "node-name": name,
                                     "file": {"driver": "file", "filename": str(root / f"{name}.qcow2")}})
        return open_chain(root) + [qcow2("tgt"), qcow2("small")] + [
            ("blockdev-backup", {"device": "top", "target": "top", "sync": "full"}),
            ("blockdev-backup", {"device": "top", "target": "small", "sync": "full"}),
            ("blockdev-backup", {"device": "top", "target": "tgt", "sync": "incremental"}),
            ("blockdev-backup", {"device": "top", "target": "tgt", "sync": "full", "bitmap-mode": "never"}),
            ("blockdev-backup", {"job-id": "b1", "device": "top", "target": "tgt", "sync": "full",
                                 "speed": 65536}),
            wait("JOB_STATUS_CHANGE", status="running"),
            ("query-block-jobs", {}),
            # a failing backup drains the source: b1 pauses and resumes, as in QEMU
            ("blockdev-backup", {"job-id": "b2", "device": "top", "target": "tgt", "sync": "full"}),
            ("block-job-set-speed", {"device": "b1", "speed": 0}),
            wait("JOB_STATUS_CHANGE", status="null"),
            ("blockdev-backup", {"job-id": "b3", "device": "top", "target": "tgt", "sync": "top",
                                 "auto-dismiss": False}),
            wait("JOB_STATUS_CHANGE", status="concluded"),
            ("query-block-jobs", {}),
            ("job-dismiss", {"id": "b3"}),
            ("blockdev-backup", {"job-id": "b4", "device": "top", "target": "tgt", "sync": "none"}),
            wait("JOB_STATUS_CHANGE", status="running"),
            ("job-cancel", {"id": "b4"}),
            wait("JOB_STATUS_CHANGE", status="null"),
        ]
    results = run_both(tmp_path, setup, steps)
    assert_same_results(results)
    assert_same_images(tmp_path, "base", "mid", "top", "tgt")


def test_backup_is_the_point_in_time_image_while_writes_go_on(tmp_path: Path) -> None:
    """Writes through the export during the backup land on the source; the
    target is exactly the image as it was when the backup started."""
    make_chain(tmp_path)
    before = tmp_path / "before.raw"
    qimg("convert", "-O", "raw", tmp_path / "top.qcow2", before)
    after = tmp_path / "after.raw"
    shutil.copyfile(before, after)
    writes = [f"write -P {0x60 + i} {i * 320}k 150k" for i in range(12)]
    qio(after, *writes, fmt="raw")
    start: Step = ("blockdev-backup", {"job-id": "b", "device": "top", "target": "tgt", "sync": "full",
                                       "speed": 1})
    with running_vmd(tmp_path) as vmd:
        asyncio.run(job_with_writes(tmp_path, vmd.qmp_path, start, writes))
        vmd.process.wait(10)
    assert "Images are identical" in qimg("compare", "-F", "raw", tmp_path / "tgt.qcow2", before)
    assert "Images are identical" in qimg("compare", "-F", "raw", tmp_path / "top.qcow2", after)
    for name in ("tgt", "top"):
        qimg("check", tmp_path / f"{name}.qcow2")


def test_drive_mirror_same_as_qemu(tmp_path: Path) -> None:
    """New images (full: only what the chain holds; top: the new image's
    backing is the source's), an existing one (written whole)."""
    def steps(root: Path) -> list[Step]:
        return open_chain(root) + [
            ("drive-mirror", {"job-id": "d1", "device": "top", "target": str(root / "new1.qcow2"),
                              "sync": "full", "node-name": "n1"}),
            wait("BLOCK_JOB_READY"),
            ("block-job-cancel", {"device": "d1"}),
            wait("JOB_STATUS_CHANGE", status="null"),
            ("drive-mirror", {"job-id": "d2", "device": "top", "target": str(root / "new2.qcow2"),
                              "sync": "top", "format": "qcow2"}),
            wait("BLOCK_JOB_READY"),
            ("block-job-cancel", {"device": "d2"}),
            wait("JOB_STATUS_CHANGE", status="null"),
            ("drive-mirror", {"job-id": "d3", "device": "top", "target": str(root / "tgt.qcow2"),
                              "sync": "full", "mode": "existing"}),
            wait("BLOCK_JOB_READY"),
            ("block-job-complete", {"device": "d3"}),
            wait("JOB_STATUS_CHANGE", status="null"),
        ]
    results = run_both(tmp_path, make_chain, steps)
    assert_same_results(results)
    assert_same_images(tmp_path, "top", "tgt", "new1", "new2")


def test_commit_with_filter_on_top_same_as_qemu(tmp_path: Path) -> None:
    """A throttle filter between the active image and ``mid``: commit with
    ``top-node`` the filter skips it to find what to merge (QEMU's
    bdrv_skip_filters), and refuses a base that is the filter's own child."""
    def steps(root: Path) -> list[Step]:
        base, mid, top = open_chain(root)
        throttle = ("blockdev-add", {"driver": "throttle", "node-name": "thr", "throttle-group": "tg",
                                     "file": "mid"})
        return [("object-add", {"qom-type": "throttle-group", "id": "tg"}), base, mid, throttle,
                (top[0], {**top[1], "backing": "thr"})] + [
            ("block-commit", {"device": "top", "top-node": "thr", "base-node": "mid"}),
            ("block-commit", {"job-id": "c1", "device": "top", "top-node": "thr", "speed": 1}),
            ("query-block-jobs", {}),
            ("block-job-set-speed", {"device": "c1", "speed": 0}),
            wait("JOB_STATUS_CHANGE", status="null"),
            ("blockdev-del", {"node-name": "top"}),
            ("blockdev-del", {"node-name": "thr"}),
            ("blockdev-del", {"node-name": "mid"}),
            ("blockdev-del", {"node-name": "base"}),
        ]
    results = run_both(tmp_path, make_chain, steps)
    assert_same_results(results)
    assert ["error", "block-commit", "GenericError",
            "Invalid files for merge: top and base are the same"] in results["vmd"]
    assert_same_images(tmp_path, "base", "mid", "top")
    info = json.loads(qimg("info", "--output=json", tmp_path / "vmd" / "top.qcow2"))
    assert info["backing-filename"] == str(tmp_path / "vmd" / "base.qcow2")


def test_backup_x_perf_same_as_qemu(tmp_path: Path) -> None:
    """x-perf: QEMU's checks in its order (the bounds, the image sizes,
    max-chunk against the copy cluster, at least 64 KiB or the target's
    larger cluster; the job ID, then the speed), and ``max-chunk`` as the
    step of a speed-limited backup: paused after its first step, the job
    has copied exactly one 64 KiB chunk."""
    def setup(root: Path) -> None:
        make_chain(root)
        qimg("create", "-f", "qcow2", root / "small.qcow2", "1M")
        qimg("create", "-f", "qcow2", "-o", "cluster_size=512", root / "c512.qcow2", "4M")
        qimg("create", "-f", "qcow2", "-o", "cluster_size=2M", root / "c2m.qcow2", "4M")

    def steps(root: Path) -> list[Step]:
        def qcow2(name: str) -> Step:
            return ("blockdev-add", {"driver": "qcow2", "node-name": name,
                                     "file": {"driver": "file", "filename": str(root / f"{name}.qcow2")}})

        def backup(target: str, **extra: Any) -> Step:
            return ("blockdev-backup", {"device": "top", "target": target, "sync": "full", **extra})
        return open_chain(root) + [qcow2(name) for name in ("tgt", "small", "c512", "c2m")] + [
            backup("tgt", **{"x-perf": {"max-workers": 0}}),
            backup("tgt", **{"x-perf": {"max-workers": 1 << 31}}),
            backup("tgt", speed=-1, **{"x-perf": {"max-chunk": -1}}),
            backup("small", speed=-1, **{"x-perf": {"max-chunk": 1000}}),
            backup("tgt", speed=-1, **{"x-perf": {"max-chunk": 1000}}),
            backup("c512", **{"x-perf": {"max-chunk": 1000}}),
            backup("c2m", **{"x-perf": {"max-chunk": 65536}}),
            backup("tgt", speed=-1, **{"job-id": ""}),
            backup("tgt", speed=-1, **{"job-id": "b0"}),
            backup("tgt", speed=1, **{"job-id": "b1", "x-perf": {"max-chunk": 65536}}),
            wait("JOB_STATUS_CHANGE", status="paused"),  # the drain at its start
            wait("JOB_STATUS_CHANGE", status="running"),
            ("job-pause", {"id": "b1"}),
            wait("JOB_STATUS_CHANGE", status="paused"),
            ("query-jobs", {}),
            ("block-job-set-speed", {"device": "b1", "speed": 0}),
            ("job-resume", {"id": "b1"}),
            wait("JOB_STATUS_CHANGE", status="null"),
        ]
    results = run_both(tmp_path, setup, steps)
    assert_same_results(results)
    paused = [line[2] for line in results["vmd"] if line[:2] == ["return", "query-jobs"]]
    assert paused[0][0]["current-progress"] == 65536
    assert_same_images(tmp_path, "top", "tgt")
