"""Block jobs meeting I/O errors, against QEMU 7.2 (iotests 229 and
``mirror-ready-cancel-error``).

- A mirror flushes its target before it is ready and again before it ends
  once converged; a flush that fails is a target error. With
  ``on-target-error: stop`` a soft-cancelled ready mirror whose last flush
  fails reports BLOCK_JOB_ERROR and parks in ``standby``; resuming it
  retries the flush (a one-off error: the job completes), a forced cancel
  ends it. blkdebug fails the second flush of the target: its
  ``flush_to_disk`` event fires when the target's format node is flushed
  after writes, not on the format's own metadata flushes.
- A job paused by an error and then resumed or force-cancelled leaves the
  pause within the command: its ``running`` comes before the command's
  reply (QEMU enters the job's coroutine at once), the rest after it. This
  is compared message by message, in the order they arrive.

The writes after the mirror is ready come through an NBD export of the
source, which moves onto the mirror's filter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from tests.harness import QEMU, RawQMP
from tests.test_block_jobs import (
    Step,
    assert_same_results,
    events,
    qimg,
    qio,
    quit_daemon,
    run_both,
    wait,
)

pytestmark = pytest.mark.qemu
if QEMU is None:  # pragma: no cover - QEMU is installed by scripts/setup.sh
    pytestmark = pytest.mark.skip("qemu-system-x86_64 is not installed")


def images(root: Path) -> None:
    """A 1 MiB source with 64 KiB of data and an empty target."""
    qimg("create", "-f", "qcow2", root / "source.qcow2", "1M")
    qimg("create", "-f", "qcow2", root / "target.qcow2", "1M")
    qio(root / "source.qcow2", "write -P 1 0 64k")


def source(root: Path) -> Step:
    return ("blockdev-add", {"driver": "qcow2", "node-name": "source",
                             "file": {"driver": "file", "filename": str(root / "source.qcow2")}})


def target(root: Path, rules: dict[str, Any]) -> Step:
    """The target qcow2 over blkdebug with ``rules``."""
    return ("blockdev-add", {"driver": "qcow2", "node-name": "target", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": str(root / "target.qcow2")}, **rules}})


def mirror(**extra: Any) -> Step:
    return ("blockdev-mirror", {"job-id": "mirror", "device": "source", "target": "target",
                                "filter-node-name": "mirror-top", "sync": "full", **extra})


def guest_write(uri: str) -> None:
    """A write through the export (its output holds timings: not kept)."""
    qio(uri, "write -P 2 0 64k", fmt="raw")


@pytest.mark.parametrize("once", [True, False], ids=["transient", "persistent"])
def test_failed_final_flush_stops_a_cancelled_ready_mirror_same_as_qemu(tmp_path: Path, once: bool) -> None:
    def steps(root: Path) -> list[Any]:
        nbd = f"nbd+unix:///source?socket={root / 'nbd.sock'}"
        rules = {"set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2}],
                 "inject-error": [{"event": "flush_to_disk", "once": once, "immediately": True, "state": 2}]}
        return [source(root), target(root, rules),
                ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(root / "nbd.sock")}}}),
                ("block-export-add", {"type": "nbd", "id": "e", "node-name": "source", "writable": True}),
                mirror(**{"on-target-error": "stop"}),
                wait("BLOCK_JOB_READY"),
                lambda: guest_write(nbd),
                ("block-job-cancel", {"device": "mirror"}),
                wait("BLOCK_JOB_ERROR"),
                wait("JOB_STATUS_CHANGE", status="standby"),
                ("query-block-jobs", {}),
                ("block-job-resume", {"device": "mirror"}) if once else
                ("block-job-cancel", {"device": "mirror", "force": True}),
                wait("JOB_STATUS_CHANGE", status="null"),
                ("block-export-del", {"id": "e"})]
    results = run_both(tmp_path, images, steps)
    assert_same_results(results)
    ending = "BLOCK_JOB_COMPLETED" if once else "BLOCK_JOB_CANCELLED"
    names = [line[1] for line in events(results["vmd"])]
    assert names.index("BLOCK_JOB_READY") < names.index("BLOCK_JOB_ERROR") < names.index(ending)
    assert names.count("BLOCK_JOB_ERROR") == 1
    if once:  # the soft cancel of a ready mirror leaves a full copy
        for who in ("qemu", "vmd"):
            assert "Images are identical" in qimg("compare", tmp_path / who / "source.qcow2",
                                                  tmp_path / who / "target.qcow2")


def _is_wanted(message: dict[str, Any], step: Step) -> bool:
    """Whether ``message`` ends ``step``: its reply, or the event it waits for."""
    name, args = step
    if name != "wait":
        return "event" not in message
    want = dict(args)
    return message.get("event") == want.pop("event") and all(message["data"].get(k) == v for k, v in want.items())


async def in_arrival_order(socket: Path, steps: list[Step]) -> list[Any]:
    """Run ``steps`` and record every message in the order it arrived
    (events between a command and its reply included), without timestamps."""
    out: list[Any] = []
    with RawQMP(socket) as qmp:
        qmp.negotiate()
        for step in steps:
            name, args = step
            if name != "wait":
                qmp.send(json.dumps({"execute": name, "arguments": args}))
                out.append(name)
            while True:
                message = qmp.read()
                message.pop("timestamp", None)
                out.append(message)
                if _is_wanted(message, step):
                    break
    return out


async def quit_when_done(socket: Path, steps: list[Step]) -> list[Any]:
    """``in_arrival_order``, then ``quit`` (the images are closed)."""
    out = await in_arrival_order(socket, steps)
    client = QMPClient()
    await client.connect(str(socket))
    await quit_daemon(client)
    return out


def without_offsets(result: list[Any], root: Path) -> list[Any]:
    """Paths relative to the daemon's directory; no job progress: how much
    a job copied before an error differs (QEMU's mirror splits its copies
    where the source's block status changes, and writes zeroes apart;
    229 filters the offset too)."""
    text = re.sub(r'"offset": \d+', '"offset": "-"', json.dumps(result).replace(str(root), "<dir>"))
    loaded: list[Any] = json.loads(text)
    return loaded


def test_error_paused_job_leaves_the_pause_before_the_reply_same_as_qemu(tmp_path: Path) -> None:
    """iotest 229: the target's first data write fails, ``stop`` pauses the
    job; a resume (the copy is retried and succeeds), then a second job's
    error and a forced cancel."""
    def steps(root: Path) -> list[Step]:
        rules = {"inject-error": [{"event": "write_aio", "errno": 5, "once": True}]}
        again = {"inject-error": [{"event": "write_aio", "errno": 5, "once": True}]}
        return [source(root), target(root, rules),
                mirror(**{"on-target-error": "stop", "on-source-error": "stop"}),
                wait("JOB_STATUS_CHANGE", status="paused"),
                ("block-job-resume", {"device": "mirror"}),
                wait("BLOCK_JOB_READY"),
                ("block-job-cancel", {"device": "mirror", "force": True}),
                wait("JOB_STATUS_CHANGE", status="null"),
                ("blockdev-del", {"node-name": "target"}),
                target(root, again),
                mirror(**{"on-target-error": "stop"}),
                wait("JOB_STATUS_CHANGE", status="paused"),
                ("block-job-cancel", {"device": "mirror", "force": True}),
                wait("JOB_STATUS_CHANGE", status="null")]
    results = run_both(tmp_path, images, steps, runner=quit_when_done, clean=without_offsets)
    assert results["vmd"] == results["qemu"]
    vmd = results["vmd"]
    resumed, cancelled = vmd.index("block-job-resume"), len(vmd) - 1 - vmd[::-1].index("block-job-cancel")
    for at in (resumed, cancelled):
        assert vmd[at + 1] == {"event": "JOB_STATUS_CHANGE", "data": {"status": "running", "id": "mirror"}}
        assert vmd[at + 2] == {"return": {}}
