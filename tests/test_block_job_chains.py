"""Stream and commit jobs side by side on one deep chain, and stream errors
injected through a ``blkdebug:`` backing file name, against QEMU 7.2.

The chain is iotest 030's: a raw base and eight qcow2 images above it,
opened by one ``-drive`` whose ``backing.`` options name every node, the
odd images holding data. Each scenario runs the same QMP on QEMU and on
vmd (``run_both``); the replies are compared whole: which jobs a running
job refuses and the exact blocker, freeze and permission texts naming the
node (by its device when it has one). How often running jobs bounce
through ``paused`` while another job's filter goes in or out differs
between the two (drain artefacts), so only the completion events are
compared, and afterwards the images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_block_jobs import (
    QEMU,
    Step,
    assert_same_results,
    events,
    qimg,
    qio,
    replies,
    run_both,
    wait,
)

pytestmark = pytest.mark.qemu
if QEMU is None:  # pragma: no cover - QEMU is installed by scripts/setup.sh
    pytestmark = pytest.mark.skip("qemu-system-x86_64 is not installed")

#: Images in the chain: img-0 (raw) up to img-8, the active layer.
IMAGES = 9


def img(root: Path, i: int) -> str:
    return str(root / f"img-{i}.img")


def make_deep_chain(root: Path) -> None:
    """iotest 030's chain: the odd images hold 2 or 4 MiB of data each."""
    qimg("create", "-f", "raw", img(root, 0), "16M")
    for i in range(1, IMAGES):
        qimg("create", "-f", "qcow2", "-b", img(root, i - 1), "-F", "raw" if i == 1 else "qcow2", img(root, i))
    for n, i in enumerate(i for i in reversed(range(IMAGES)) if i % 2):
        qio(img(root, i), f"write -P 0xff {n * 4}M {2 + 2 * (n % 2)}M", fmt="qcow2")


def deep_drive(root: Path) -> list[str]:
    """One ``-drive`` (device ``drive0``) naming every node ``nodeN``."""
    names = ",".join("backing." * (IMAGES - 1 - i) + f"node-name=node{i}" for i in range(IMAGES))
    return ["-drive", f"if=none,id=drive0,file={img(root, IMAGES - 1)},{names}"]


def overlapping_stream(r: Path) -> list[Step]:
    """A stream from node4 down to node1 refuses what touches its nodes."""
    return [
        ("block-stream", {"device": "node4", "job-id": "s4", "base": img(r, 1),
                          "filter-node-name": "stream-filter", "speed": 1 << 20}),
        ("block-stream", {"device": "node5", "job-id": "s5", "base": img(r, 2)}),
        ("block-stream", {"device": "node3", "job-id": "s3", "base": img(r, 2)}),
        ("block-commit", {"device": "drive0", "base": img(r, 4), "job-id": "c4"}),
        ("block-commit", {"device": "drive0", "base": img(r, 1), "top": img(r, 3), "job-id": "c1"}),
        ("block-commit", {"device": "drive0", "base": img(r, 0), "top": img(r, 1), "job-id": "c0"}),
        ("block-job-set-speed", {"device": "s4", "speed": 0}),
        wait("BLOCK_JOB_COMPLETED"),
    ]


def overlapping_commit(r: Path) -> list[Step]:
    """A commit of node5 and node4 into node3 blocks them and the device."""
    return [
        ("block-commit", {"device": "drive0", "top": img(r, 5), "base": img(r, 3), "job-id": "c3",
                          "speed": 1 << 20}),
        ("block-stream", {"device": "node3", "job-id": "s3"}),
        ("block-stream", {"device": "node6", "base": img(r, 2), "job-id": "s6"}),
        ("block-stream", {"device": "node4", "base": img(r, 2), "job-id": "s4"}),
        ("block-stream", {"device": "drive0", "base": img(r, 5), "job-id": "s8"}),
        ("block-job-set-speed", {"device": "c3", "speed": 0}),
        wait("BLOCK_JOB_COMPLETED"),
    ]


def stream_beside_commit_filter(r: Path) -> list[Step]:
    """No stream may freeze a link to a commit filter; one may stop there."""
    return [
        ("block-commit", {"device": "drive0", "top-node": "node2", "base-node": "node0",
                          "filter-node-name": "commit-filter", "speed": 1 << 20}),
        ("block-stream", {"device": "node4", "base-node": "node2", "job-id": "s4"}),
        ("block-stream", {"device": "node4", "base-node": "commit-filter", "job-id": "s4"}),
        ("block-job-set-speed", {"device": "drive0", "speed": 0}),
        wait("BLOCK_JOB_COMPLETED", device="drive0"),
        wait("BLOCK_JOB_COMPLETED", device="s4"),
    ]


def stream_and_active_commit(r: Path) -> list[Step]:
    """An active commit over intermediate images (consistent reads of them
    unshared) beside a stream below it; both finish."""
    return [
        ("block-stream", {"device": "node4", "base-node": "node0", "job-id": "s4", "speed": 1 << 20}),
        ("block-commit", {"device": "drive0", "base": img(r, 5), "speed": 1 << 20}),
        ("block-job-set-speed", {"device": "drive0", "speed": 0}),
        # One order of events in both daemons: the stream, slowed, outlasts
        # the commit's first pass (both finishing at once let the stream's
        # end come before or after READY, and a wait looks only forward).
        wait("BLOCK_JOB_READY"),
        ("block-job-set-speed", {"device": "s4", "speed": 0}),
        wait("BLOCK_JOB_COMPLETED", device="s4"),
        ("block-job-complete", {"device": "drive0"}),
        wait("BLOCK_JOB_COMPLETED", device="drive0"),
    ]


def stream_into_read_only(r: Path) -> list[Step]:
    """A read-only top over a file opened read-only by its own option
    cannot be made writable for a stream; one whose file inherits can."""
    qimg("create", "-f", "qcow2", r / "ro.qcow2", "16M")

    def top(**file: Any) -> Step:
        return ("blockdev-add", {"node-name": "ro-top", "driver": "qcow2", "read-only": True, "backing": "node5",
                                 "file": {"driver": "file", "filename": str(r / "ro.qcow2"), **file}})
    return [
        top(**{"read-only": True}),
        ("block-stream", {"job-id": "s", "device": "ro-top", "base-node": "node3"}),
        ("blockdev-del", {"node-name": "ro-top"}),
        top(),
        ("block-stream", {"job-id": "s", "device": "ro-top", "base-node": "node3"}),
        wait("BLOCK_JOB_COMPLETED"),
        ("blockdev-del", {"node-name": "ro-top"}),
    ]


@pytest.mark.parametrize("scenario", [overlapping_stream, overlapping_commit, stream_beside_commit_filter,
                                      stream_and_active_commit, stream_into_read_only],
                         ids=lambda scenario: scenario.__name__)
def test_jobs_on_a_deep_chain_same_as_qemu(tmp_path: Path, scenario: Any) -> None:
    results = run_both(tmp_path, make_deep_chain, scenario, options=deep_drive)
    assert replies(results["vmd"]) == replies(results["qemu"])
    completed = [[line for line in events(results[who]) if line[1] == "BLOCK_JOB_COMPLETED"]
                 for who in ("qemu", "vmd")]
    assert sorted(map(str, completed[1])) == sorted(map(str, completed[0]))
    assert completed[1] and all("error" not in line[2] for line in completed[1])
    for i in range(IMAGES):
        ours, theirs = img(tmp_path / "vmd", i), img(tmp_path / "qemu", i)
        assert "Images are identical" in qimg("compare", "-U", theirs, ours)
        assert backing(tmp_path / "vmd", i) == backing(tmp_path / "qemu", i), i


def backing(root: Path, i: int) -> tuple[str, str]:
    """The backing file name (relative to ``root``) and format in the header."""
    info = json.loads(qimg("info", "--output=json", "-U", img(root, i)))
    return (str(info.get("backing-filename", "")).replace(str(root), "<dir>"),
            str(info.get("backing-filename-format", "")))


# -- stream errors through blkdebug ------------------------------------------------------------

#: iotest 030's rules: the read_aio events flip the state between 1 and 2;
#: in state 1 an event arms a one-time error for a read of sector 1024
#: (512 KiB, the second of QEMU's stream requests).
BLKDEBUG_RULES = """
[inject-error]
state = "1"
event = "read_aio"
errno = "{errno}"
immediately = "off"
once = "on"
sector = "1024"

[set-state]
state = "1"
event = "read_aio"
new_state = "2"

[set-state]
state = "2"
event = "read_aio"
new_state = "1"
"""


@pytest.mark.parametrize("on_error,errno", [("report", 5), ("ignore", 5), ("stop", 5), ("enospc", 28)])
def test_stream_error_through_blkdebug_backing_name_same_as_qemu(tmp_path: Path, on_error: str,
                                                                 errno: int) -> None:
    """The overlay's header names its backing file ``blkdebug:RULES:IMAGE``
    (raw): the error comes where QEMU's does, after the first 512 KiB, and
    each policy reports, goes on, or pauses there (offset and io-status in
    ``query-block-jobs``) and finishes on resume, as QEMU's."""
    def setup(root: Path) -> None:
        (root / "rules").write_text(BLKDEBUG_RULES.format(errno=errno))
        qimg("create", "-f", "raw", root / "back.raw", "2M")
        qio(root / "back.raw", "write -P 0x70 0 2M", fmt="raw")
        qimg("create", "-f", "qcow2", "-b", f"blkdebug:{root / 'rules'}:{root / 'back.raw'}", "-F", "raw",
             root / "top.qcow2")

    def steps(root: Path) -> list[Step]:
        paused = on_error == "stop" or errno == 28
        return [("block-stream", {"device": "drive0", "on-error": on_error}), wait("BLOCK_JOB_ERROR")] + (
            [wait("JOB_STATUS_CHANGE", status="paused"), ("query-block-jobs", {}),
             ("block-job-resume", {"device": "drive0"})] if paused else []) + [
            wait("JOB_STATUS_CHANGE", status="null")]
    results = run_both(tmp_path, setup, steps,
                       options=lambda root: ["-drive", f"if=none,id=drive0,file={root / 'top.qcow2'}"])
    assert_same_results(results)
    completed = [line[2] for line in results["vmd"] if line[:2] == ["event", "BLOCK_JOB_COMPLETED"]]
    assert completed[0]["offset"] == (512 << 10 if on_error == "report" else 2 << 20)
