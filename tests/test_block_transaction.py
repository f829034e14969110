"""``transaction``, ``drive-backup`` and the snapshot commands against QEMU 7.2.

The same QMP goes to ``qemu-system-x86_64 -M none`` and to vmd, each over
its own copy of one qcow2 chain (``tests.test_block_jobs``' harness);
replies, error texts, the full event sequence and the named nodes (name,
driver, read-only, backing file) must match, and so must the images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.test_block_jobs import (
    Step,
    assert_same_images,
    assert_same_results,
    events,
    make_chain,
    open_chain,
    qimg,
    qio,
    run_both,
    wait,
)

NODES: Step = ("query-named-block-nodes", {"flat": True})


def nodes_of(result: list[Any]) -> list[Any]:
    """Each query-named-block-nodes reply as sorted (name, driver, ro,
    backing) of the named nodes (implicit ``#block`` names differ)."""
    out: list[Any] = []
    for line in result:
        if line[0] == "return" and line[1] == "query-named-block-nodes":
            out.append(sorted((n["node-name"], n["drv"], n["ro"], n.get("backing_file"))
                              for n in line[2] if not n["node-name"].startswith("#")))
            line[2] = "<nodes>"
    return out


def compare(results: dict[str, list[Any]]) -> None:
    ours, theirs = nodes_of(results["vmd"]), nodes_of(results["qemu"])
    assert_same_results(results)
    assert ours == theirs


def export_top(root: Path) -> list[Step]:
    """A user of ``top`` (so that overlays put over it stay)."""
    return [("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(root / "nbd.sock")}}}),
            ("block-export-add", {"type": "nbd", "id": "e", "node-name": "top", "writable": True})]


def qcow2(root: Path, name: str) -> Step:
    return ("blockdev-add", {"driver": "qcow2", "node-name": name,
                             "file": {"driver": "file", "filename": str(root / f"{name}.qcow2")}})


def act(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "data": data}


def txn(*actions: dict[str, Any], mode: str | None = None) -> Step:
    args: dict[str, Any] = {"actions": list(actions)}
    if mode is not None:
        args["properties"] = {"completion-mode": mode}
    return ("transaction", args)


def test_transaction_all_or_nothing_same_as_qemu(tmp_path: Path) -> None:
    """Failing transactions leave the graph as it was and start no job;
    then a snapshot and a drive-backup of the new overlay in one go (the
    backup job starts paused inside the transaction's drained section)."""
    def steps(root: Path) -> list[Step]:
        def sync(name: str) -> dict[str, Any]:
            return act("blockdev-snapshot-sync", **{"node-name": "top", "snapshot-file": str(root / f"{name}.qcow2"),
                                                    "snapshot-node-name": name})
        return open_chain(root) + export_top(root) + [qcow2(root, "tgt"), NODES] + [
            txn(),
            txn(sync("s1"), act("abort")),
            NODES,
            txn(act("blockdev-backup", **{"job-id": "b1", "device": "top", "target": "tgt", "sync": "full"}),
                act("abort")),
            ("query-jobs", {}),
            txn(sync("s1"), mode="grouped"),
            txn(act("abort"), mode="individual"),
            txn(act("blockdev-snapshot", node="nosuch", overlay="x")),
            txn(act("blockdev-snapshot-sync", **{"node-name": "top", "snapshot-file": str(root / "x.qcow2")})),
            txn(sync("mid")),
            ("blockdev-snapshot-sync", {"device": "top", "snapshot-file": str(root / "x.qcow2")}),
            ("blockdev-snapshot", {"node": "top", "overlay": "mid"}),
            ("blockdev-snapshot", {"node": "tgt", "overlay": "top"}),
            NODES,
            txn(sync("s2"), act("drive-backup", **{"job-id": "d1", "device": "s2", "sync": "full",
                                                   "target": str(root / "d1.qcow2")})),
            wait("JOB_STATUS_CHANGE", id="d1", status="null"),
            NODES,
        ]
    results = run_both(tmp_path, make_chain, steps)
    compare(results)
    assert ["error", "transaction", "GenericError", "Transaction aborted using Abort action"] in results["vmd"]
    assert_same_images(tmp_path, "top", "s2", "d1")


def make_two_disks(root: Path) -> None:
    """The chain, plus ``disk2`` with its own data, and two targets."""
    make_chain(root)
    qimg("create", "-f", "qcow2", root / "disk2.qcow2", "4M")
    qio(root / "disk2.qcow2", "write -P 9 1M 2M")
    qimg("create", "-f", "qcow2", root / "tgt2.qcow2", "4M")


def two_backups(root: Path, mode: str, **second: Any) -> list[Step]:
    return [*open_chain(root), qcow2(root, "tgt"), qcow2(root, "disk2"), qcow2(root, "tgt2"), txn(
        act("blockdev-backup", **{"job-id": "g1", "device": "top", "target": "tgt", "sync": "full", "speed": 1}),
        act("blockdev-backup", **{"job-id": "g2", "device": "disk2", "target": "tgt2", "sync": "full",
                                  **second}),
        mode=mode)]


def test_grouped_backups_finalize_together_same_as_qemu(tmp_path: Path) -> None:
    """g2 finishes first and waits for g1; one manual-finalize member holds
    both in pending; job-finalize of either finalizes both."""
    def steps(root: Path) -> list[Step]:
        return two_backups(root, "grouped", **{"auto-finalize": False}) + [
            wait("JOB_STATUS_CHANGE", id="g2", status="waiting"),
            ("query-jobs", {}),
            ("block-job-set-speed", {"device": "g1", "speed": 0}),
            wait("BLOCK_JOB_PENDING"),
            ("query-block-jobs", {}),
            ("job-finalize", {"id": "g1"}),
            wait("JOB_STATUS_CHANGE", id="g2", status="null"),
        ]
    results = run_both(tmp_path, make_two_disks, steps)
    compare(results)
    assert [e[2]["status"] for e in events(results["vmd"]) if e[1] == "JOB_STATUS_CHANGE" and e[2]["id"] == "g2"][
        -4:] == ["waiting", "pending", "concluded", "null"]
    assert_same_images(tmp_path, "top", "tgt", "disk2", "tgt2")


def test_grouped_cancel_cancels_the_others_same_as_qemu(tmp_path: Path) -> None:
    """Cancelling one member of a grouped transaction cancels the other;
    in an individual one the other goes on."""
    def steps(root: Path) -> list[Step]:
        return two_backups(root, "grouped", speed=1) + [
            wait("JOB_STATUS_CHANGE", id="g2", status="running"),
            ("job-cancel", {"id": "g2"}),
            wait("JOB_STATUS_CHANGE", id="g1", status="null"),
            ("query-jobs", {}),
            txn(act("blockdev-backup", **{"job-id": "i1", "device": "top", "target": "tgt", "sync": "full",
                                          "speed": 1}),
                act("blockdev-backup", **{"job-id": "i2", "device": "disk2", "target": "tgt2", "sync": "full",
                                          "speed": 1})),
            ("job-cancel", {"id": "i2"}),
            wait("JOB_STATUS_CHANGE", id="i2", status="null"),
            ("query-jobs", {}),
            ("block-job-set-speed", {"device": "i1", "speed": 0}),
            wait("JOB_STATUS_CHANGE", id="i1", status="null"),
        ]
    results = run_both(tmp_path, make_two_disks, steps)
    compare(results)
    cancelled = [line[2]["device"] for line in events(results["vmd"]) if line[1] == "BLOCK_JOB_CANCELLED"]
    assert cancelled == ["g2", "g1", "i2"]
    assert_same_images(tmp_path, "top", "tgt", "disk2")


def test_snapshot_and_del_on_a_job_chain_same_as_qemu(tmp_path: Path) -> None:
    """While commit, stream and active commit hold (and freeze) the chain,
    snapshots and blockdev-del of its nodes are refused with QEMU's texts;
    after the job the same snapshot works. The jobs are paused for the
    probes: a failing command drains, which lets a rate-limited QEMU job
    copy a chunk."""
    def probes(root: Path) -> list[Step]:
        def sync(node: str) -> Step:
            return ("blockdev-snapshot-sync", {"node-name": node, "snapshot-file": str(root / f"o-{node}.qcow2"),
                                               "snapshot-node-name": f"o-{node}"})
        return [sync("top"), sync("mid"), sync("base"), ("blockdev-del", {"node-name": "mid"}),
                ("blockdev-del", {"node-name": "base"}),
                txn(act("blockdev-snapshot-sync", **{"node-name": "base", "snapshot-file": str(root / "x.qcow2"),
                                                     "snapshot-node-name": "x"}))]

    def steps(root: Path) -> list[Step]:
        return [*open_chain(root), *export_top(root),
                ("block-commit", {"job-id": "c1", "device": "top", "top-node": "mid", "base-node": "base",
                                  "speed": 1}),
                ("job-pause", {"id": "c1"}),
                wait("JOB_STATUS_CHANGE", id="c1", status="paused"),
                *probes(root),
                ("job-cancel", {"id": "c1"}),
                wait("JOB_STATUS_CHANGE", id="c1", status="null"),
                ("block-stream", {"job-id": "s1", "device": "top", "base-node": "base", "speed": 1}),
                ("job-pause", {"id": "s1"}),
                wait("JOB_STATUS_CHANGE", id="s1", status="paused"),
                *probes(root),
                ("job-cancel", {"id": "s1"}),
                wait("JOB_STATUS_CHANGE", id="s1", status="null"),
                ("block-commit", {"job-id": "a1", "device": "top", "base-node": "mid", "speed": 1}),
                ("job-pause", {"id": "a1"}),
                wait("JOB_STATUS_CHANGE", id="a1", status="paused"),
                *probes(root),
                ("job-cancel", {"id": "a1"}),
                wait("JOB_STATUS_CHANGE", id="a1", status="null"),
                NODES,
                ("blockdev-snapshot-sync", {"node-name": "top", "snapshot-file": str(root / "after.qcow2"),
                                            "snapshot-node-name": "after"}),
                NODES]
    results = run_both(tmp_path, make_chain, steps)
    for result in results.values():  # how far a job got before the pause is a race in both
        for line in events(result):
            if line[1] == "BLOCK_JOB_CANCELLED":
                line[2]["len"] = line[2]["offset"] = "-"
    compare(results)
    # what each cancelled job had copied is a race; what the chain reads is not
    assert_same_images(tmp_path, "after")
    for name in ("base", "mid", "top"):
        qimg("check", tmp_path / "vmd" / f"{name}.qcow2")


def test_drive_backup_same_as_qemu(tmp_path: Path) -> None:
    """drive-backup's errors, and the images it creates for sync full, top
    and none (backing file names included) and with mode existing."""
    def steps(root: Path) -> list[Step]:
        def backup(job: str, target: str, **extra: Any) -> Step:
            return ("drive-backup", {"job-id": job, "device": "top", "target": str(root / target), **extra})
        return [*open_chain(root), *export_top(root), qcow2(root, "tgt")] + [
            ("drive-backup", {"device": "nosuch", "target": str(root / "x.qcow2"), "sync": "full"}),
            backup("x", "x.qcow2", sync="incremental"),
            backup("x", "x.qcow2", sync="full", format="nosuch"),
            backup("x", "nosuch.qcow2", sync="full", mode="existing"),
            backup("x", "tgt.qcow2", sync="full", mode="existing", **{"bitmap-mode": "never"}),
            backup("d1", "d1.qcow2", sync="full"),
            wait("JOB_STATUS_CHANGE", id="d1", status="null"),
            backup("d2", "d2.qcow2", sync="top", format="qcow2"),
            wait("JOB_STATUS_CHANGE", id="d2", status="null"),
            backup("d3", "d3.qcow2", sync="none", speed=1),
            wait("JOB_STATUS_CHANGE", id="d3", status="running"),
            NODES,
            ("job-cancel", {"id": "d3"}),
            wait("JOB_STATUS_CHANGE", id="d3", status="null"),
            backup("d4", "d4.raw", sync="full", format="raw"),
            wait("JOB_STATUS_CHANGE", id="d4", status="null"),
            NODES,
        ]
    results = run_both(tmp_path, make_chain, steps)
    compare(results)
    assert_same_images(tmp_path, "top", "d1", "d2", "d3")
    assert "Images are identical" in qimg("compare", "-f", "raw", "-F", "qcow2", tmp_path / "vmd" / "d4.raw",
                                          tmp_path / "vmd" / "top.qcow2")
