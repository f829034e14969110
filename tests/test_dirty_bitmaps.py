"""Dirty bitmaps against QEMU 7.2: the commands, write tracking, persistence.

The same QMP goes to ``qemu-system-x86_64 -M none`` and to vmd, each over
its own copy of the same images; guest writes come through an NBD export
(``qemu-io`` on the export's socket). Every reply is compared, errors
included, and the bitmaps as ``query-named-block-nodes`` shows them with
the SHA-256 of their bits. Persistent bitmaps cross between the two: what
vmd stores, ``qemu-img`` and QEMU read, and the other way round.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from tests import test_block_jobs as jobs
from tests.harness import QEMU, running_qemu, running_vmd, start_vmd
from tests.test_block_jobs import hang_up, qimg, qio, wait_gone
from tests.test_vmd_img import vimg
from vmd.block.dirty_bitmap import DirtyBitmap

pytestmark = pytest.mark.qemu
if QEMU is None:  # pragma: no cover - QEMU is installed by scripts/setup.sh
    pytestmark = pytest.mark.skip("qemu-system-x86_64 is not installed")

#: A step: a QMP command, ``BITMAPS`` to record every node's
#: bitmaps, or a function run between commands (guest I/O, qemu-img; what
#: it returns, if anything, is recorded).
Step = tuple[str, dict[str, Any]] | Callable[[], Any]


#: Every node's bitmaps (``query-named-block-nodes``, cut down by ``_clean``).
BITMAPS: Step = ("query-named-block-nodes", {})


def qcow2(root: Path, name: str, **extra: Any) -> Step:
    return ("blockdev-add", {"driver": "qcow2", "node-name": name,
                             "file": {"driver": "file", "filename": str(root / f"{name}.qcow2")}, **extra})


def export(root: Path, node: str = "a", **extra: Any) -> list[Step]:
    return [("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(root / "nbd.sock")}}}),
            ("block-export-add", {"type": "nbd", "id": "e", "node-name": node, "writable": True, **extra})]


def guest(root: Path, *commands: str, node: str = "a") -> Callable[[], Any]:
    """qemu-io commands through the export (the guest's writes)."""
    def write() -> None:
        qio(f"nbd+unix:///{node}?socket={root / 'nbd.sock'}", *commands, fmt="raw")
    return write


def unexport() -> list[Step]:
    return [("block-export-del", {"id": "e"}), ("nbd-server-stop", {})]


def _bitmaps(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Each named node's dirty bitmaps and the bitmaps its image stores."""
    out: dict[str, Any] = {}
    for node in nodes:
        if node["node-name"].startswith("#"):
            continue
        stored = node["image"].get("format-specific", {}).get("data", {}).get("bitmaps")
        # A job's own bitmap shows how far a running copy got: a race.
        bitmaps = [sorted({**bitmap, "count": "-"}.items() if "name" not in bitmap and not bitmap["recording"]
                          else bitmap.items()) for bitmap in node.get("dirty-bitmaps", [])]
        out[node["node-name"]] = {"dirty-bitmaps": bitmaps, "stored": stored}
    return out


def _clean(result: list[Any], root: Path) -> list[Any]:
    """Paths relative to the daemon's directory; each node query cut down
    to the bitmaps (each bitmap as sorted pairs, so that the masking of the
    jobs' racy ``busy`` leaves it alone); job progress as jobs.normalise."""
    for index, line in enumerate(result):
        if line[0] == "return" and line[1] == "query-named-block-nodes":
            result[index] = ("bitmaps", _bitmaps(line[2]))
        elif line[0] == "return" and line[1] == "query-block":
            result[index] = ("devices", {device["device"]: device.get("inserted", {}).get("dirty-bitmaps")
                                         for device in line[2]})
    return jobs.normalise(result, root)


def bitmaps_of(result: list[Any], node: str, index: int = -1) -> list[dict[str, Any]]:
    """The bitmaps of ``node`` in the ``index``-th node query of a result."""
    queries = [line[1] for line in result if line[0] == "bitmaps"]
    return [dict(pairs) for pairs in queries[index][node]["dirty-bitmaps"]]


def run_both(tmp_path: Path, setup: Callable[[Path], None], steps: Callable[[Path], list[Step]]) -> dict[str, Any]:
    return jobs.run_both(tmp_path, setup, steps, clean=_clean)


async def run_steps(socket: Path, steps: list[Step]) -> list[Any]:
    return _clean(await jobs.drive(socket, steps), Path("/nonexistent"))


def create(root: Path, name: str, size: str = "4M", *options: str) -> None:
    qimg("create", "-f", "qcow2", *options, root / f"{name}.qcow2", size)


def sha(node: str, name: str) -> Step:
    return ("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": name})


def add(node: str, name: str, **extra: Any) -> Step:
    return ("block-dirty-bitmap-add", {"node": node, "name": name, **extra})


def test_commands_and_errors_same_as_qemu(tmp_path: Path) -> None:
    def setup(root: Path) -> None:
        create(root, "a")
        create(root, "v2", "4M", "-o", "compat=0.10")
        create(root, "ro")
        qimg("bitmap", "--add", root / "ro.qcow2", "stored")

    def steps(root: Path) -> list[Step]:
        return [
            qcow2(root, "a"), qcow2(root, "v2"), qcow2(root, "ro", **{"read-only": True}),
            ("blockdev-add", {"driver": "null-co", "node-name": "n", "size": 4 << 20}),
            add("a", "b1"), add("a", "b1"), add("a", ""), add("nosuch", "x"),
            add("a", "g1", granularity=1000), add("a", "g2", granularity=256), add("a", "g3", granularity=1 << 31),
            add("a", "g4", granularity=0), add("a", "p1", persistent=True), add("a", "b1", persistent=True),
            add("v2", "p1", persistent=True), add("n", "p1", persistent=True), add("n", "d1", disabled=True),
            add("a", "x" * 1024), add("a", "y" * 1024, persistent=True), add("a", "z" * 1023, persistent=True),
            add("ro", "new"), add("ro", "newp", persistent=True), add("ro", "stored"),
            BITMAPS,
            ("block-dirty-bitmap-remove", {"node": "a", "name": "nosuch"}),
            ("block-dirty-bitmap-remove", {"node": "nosuch", "name": "b1"}),
            ("block-dirty-bitmap-clear", {"node": "ro", "name": "stored"}),
            ("block-dirty-bitmap-enable", {"node": "ro", "name": "stored"}),
            ("block-dirty-bitmap-disable", {"node": "ro", "name": "stored"}),
            ("block-dirty-bitmap-disable", {"node": "a", "name": "b1"}),
            ("block-dirty-bitmap-disable", {"node": "a", "name": "b1"}),
            ("block-dirty-bitmap-enable", {"node": "a", "name": "nosuch"}),
            ("block-dirty-bitmap-merge", {"node": "ro", "target": "stored", "bitmaps": ["new"]}),
            ("block-dirty-bitmap-merge", {"node": "ro", "target": "new", "bitmaps": ["stored"]}),
            ("block-dirty-bitmap-merge", {"node": "a", "target": "b1", "bitmaps": [
                {"node": "n", "name": "d1"}, {"node": "ro", "name": "stored"}, "p1"]}),
            ("block-dirty-bitmap-merge", {"node": "a", "target": "b1", "bitmaps": [{"node": "n", "name": "zz"}]}),
            ("block-dirty-bitmap-merge", {"node": "a", "target": "b1", "bitmaps": [{"node": "zz", "name": "b1"}]}),
            ("block-dirty-bitmap-merge", {"node": "a", "target": "nosuch", "bitmaps": ["b1"]}),
            ("block-dirty-bitmap-merge", {"node": "a", "target": "b1", "bitmaps": ["nosuch"]}),
            sha("a", "b1"), sha("a", "zz"), sha("zz", "b1"),
            ("block-dirty-bitmap-remove", {"node": "ro", "name": "stored"}),
            ("block-dirty-bitmap-remove", {"node": "ro", "name": "new"}),
            ("block-dirty-bitmap-remove", {"node": "a", "name": "p1"}),
            BITMAPS,
        ]
    results = run_both(tmp_path, setup, steps)
    assert results["vmd"] == results["qemu"]
    assert ["error", "block-dirty-bitmap-add", "GenericError", "Bitmap already exists: b1"] in results["vmd"]


def test_writes_are_tracked_same_as_qemu(tmp_path: Path) -> None:
    """Writes, zeroes and discards through an export mark the recording
    bitmaps (each with its granularity); clear, enable, disable and merge
    change them as QEMU's do."""
    def setup(root: Path) -> None:
        create(root, "a", "4M", "-o", "cluster_size=4096")
        create(root, "b", "4M")

    def steps(root: Path) -> list[Step]:
        return [
            qcow2(root, "a", discard="unmap"), qcow2(root, "b"),
            add("a", "b1"), add("a", "fine", granularity=512), add("a", "off", disabled=True),
            add("a", "big", granularity=1 << 20), add("b", "other", granularity=65536),
            *export(root),
            guest(root, "write -P 1 0 1k", "write -P 2 100k 8k", "write -z 1M 300k", "discard 3M 64k",
                  "write -P 3 4193792 512"),
            BITMAPS, sha("a", "b1"), sha("a", "fine"), sha("a", "off"), sha("a", "big"),
            ("block-dirty-bitmap-enable", {"node": "a", "name": "off"}),
            ("block-dirty-bitmap-disable", {"node": "a", "name": "b1"}),
            guest(root, "write -P 4 2M 12k"),
            ("block-dirty-bitmap-clear", {"node": "a", "name": "fine"}),
            guest(root, "write -P 5 513 1000"),
            BITMAPS, sha("a", "b1"), sha("a", "fine"), sha("a", "off"),
            ("block-dirty-bitmap-merge", {"node": "a", "target": "fine", "bitmaps": ["off", "big"]}),
            ("block-dirty-bitmap-merge", {"node": "b", "target": "other", "bitmaps": [
                {"node": "a", "name": "fine"}]}),
            BITMAPS, sha("a", "fine"), sha("b", "other"),
            *unexport(),
        ]
    results = run_both(tmp_path, setup, steps)
    assert results["vmd"] == results["qemu"]
    counts = {b["name"]: b["count"] for b in bitmaps_of(results["vmd"], "a")}
    assert counts["big"] == 4 << 20  # every 1 MiB granule was written


def run_dir(root: Path, name: str) -> Path:
    """A directory of its own for one daemon's sockets (images stay in ``root``)."""
    where = root / name
    where.mkdir()
    return where


def _open_and_query(root: Path, name: str, *extra: Step) -> list[Step]:
    return [qcow2(root, name), BITMAPS, *extra]


def _shas(result: list[Any]) -> list[Any]:
    return [line for line in result if line[0] == "return" and "sha256" in str(line[2])]


def test_persistent_bitmaps_vmd_to_qemu_and_back(tmp_path: Path) -> None:
    """vmd stores bitmaps on close; qemu-img and QEMU read them with the
    same bits, flags and counts; what QEMU stores vmd reads the same."""
    root = tmp_path / "img"
    root.mkdir()
    create(root, "a", "5M", "-o", "cluster_size=8192")
    qio(root / "a.qcow2", "write -P 7 0 64k")
    qimg("bitmap", "--add", "-g", "4096", root / "a.qcow2", "from-qemu-img")
    names = ("auto", "manual", "fine", "from-qemu-img")
    queries = [sha("a", name) for name in names]
    with running_vmd(run_dir(root, "first")) as vmd:
        written = asyncio.run(run_steps(vmd.qmp_path, [
            qcow2(root, "a"),
            lambda: _assert_in_use(root / "a.qcow2", {"from-qemu-img": ["in-use", "auto"]}),
            add("a", "auto", persistent=True), add("a", "manual", persistent=True, disabled=True),
            add("a", "fine", persistent=True, granularity=512),
            *export(root), guest(root, "write -P 1 64k 64k", "write -z 1M 8k", "write -P 2 5241856 1024"),
            ("block-dirty-bitmap-enable", {"node": "a", "name": "manual"}),
            guest(root, "write -P 3 4M 4k"),
            ("block-dirty-bitmap-disable", {"node": "a", "name": "manual"}),
            *unexport(), BITMAPS, *queries]))
        vmd.process.wait(10)
    info = json.loads(qimg("info", "--output=json", root / "a.qcow2"))
    stored = info["format-specific"]["data"]["bitmaps"]
    assert {b["name"]: (b["flags"], b["granularity"]) for b in stored} == {
        "auto": (["auto"], 8192), "manual": ([], 8192), "fine": (["auto"], 512),
        "from-qemu-img": (["auto"], 4096)}
    qimg("check", root / "a.qcow2")
    with running_qemu(run_dir(root, "qemu")) as socket:
        pid = int((root / "qemu" / "qemu.pid").read_text())
        read_back = asyncio.run(run_steps(socket, _open_and_query(root, "a", *queries, *export(root),
                                                                   guest(root, "write -P 9 2M 4k"),
                                                                   *unexport(), *queries)))
        wait_gone(pid)
    assert _shas(read_back)[:4] == _shas(written)
    ours, theirs = bitmaps_of(written, "a"), bitmaps_of(read_back, "a", 0)
    assert sorted(ours, key=lambda b: b["name"]) == sorted(theirs, key=lambda b: b["name"])
    # QEMU stored them again (with the 2M write); vmd reads its result.
    with running_vmd(run_dir(root, "again")) as vmd:
        again = asyncio.run(run_steps(vmd.qmp_path, _open_and_query(root, "a", *queries)))
        vmd.process.wait(10)
    assert _shas(again) == _shas(read_back)[4:]
    assert _shas(again) != _shas(written)
    # vmd-img's check counts the bitmaps' clusters as qemu-img's does.
    ours = vimg("check", "--output=json", root / "a.qcow2")
    assert ours.returncode == 0 and json.loads(ours.stdout) == json.loads(
        qimg("check", "--output=json", root / "a.qcow2"))


def _assert_in_use(path: Path, flags: dict[str, list[str]]) -> None:
    info = json.loads(qimg("info", "-U", "--output=json", path))
    stored = info["format-specific"]["data"].get("bitmaps", [])
    assert {b["name"]: b["flags"] for b in stored} == flags


def test_sigkill_leaves_bitmaps_inconsistent_as_qemu(tmp_path: Path) -> None:
    """A bitmap loaded read-write is marked in use on disk before any
    write; killed before the close, the image is consistent and QEMU and
    vmd both load the bitmap as inconsistent (removable only)."""
    root = tmp_path / "img"
    root.mkdir()
    create(root, "a")
    qimg("bitmap", "--add", root / "a.qcow2", "b")
    vmd = start_vmd(root)
    try:
        asyncio.run(_open_write_and_leave(vmd.qmp_path, root))
        _assert_in_use(root / "a.qcow2", {"b": ["in-use", "auto"]})
        vmd.process.send_signal(signal.SIGKILL)
        vmd.process.wait(10)
    finally:
        if vmd.process.poll() is None:
            vmd.process.kill()
    check = subprocess.run(["qemu-img", "check", str(root / "a.qcow2")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    def setup(where: Path) -> None:
        subprocess.run(["cp", str(root / "a.qcow2"), str(where / "a.qcow2")], check=True)

    def steps(where: Path) -> list[Step]:
        return [qcow2(where, "a"), BITMAPS,
                ("block-dirty-bitmap-clear", {"node": "a", "name": "b"}),
                ("block-dirty-bitmap-enable", {"node": "a", "name": "b"}),
                ("block-dirty-bitmap-merge", {"node": "a", "target": "b", "bitmaps": ["b"]}),
                ("block-dirty-bitmap-remove", {"node": "a", "name": "b"}), BITMAPS]
    results = run_both(tmp_path, setup, steps)
    assert results["vmd"] == results["qemu"]
    assert bitmaps_of(results["vmd"], "a", 0)[0]["inconsistent"] is True
    for who in ("qemu", "vmd"):
        qimg("check", tmp_path / who / "a.qcow2")
        assert "bitmaps" not in json.loads(qimg("info", "--output=json", tmp_path / who / "a.qcow2")
                                           )["format-specific"]["data"]


async def _open_write_and_leave(socket: Path, root: Path) -> None:
    client = QMPClient()
    await client.connect(str(socket))
    try:
        await client.execute("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {
            "driver": "file", "filename": str(root / "a.qcow2")}})
        for step in export(root):
            assert not callable(step)
            await client.execute(*step)
        guest(root, "write -P 1 0 64k")()
    finally:
        await hang_up(client)


def test_remove_persistent_bitmap_drops_it_from_the_image_at_once(tmp_path: Path) -> None:
    root = tmp_path / "img"
    root.mkdir()
    create(root, "a")
    for name in ("one", "two"):
        qimg("bitmap", "--add", root / "a.qcow2", name)
    with running_vmd(root) as vmd:
        asyncio.run(run_steps(vmd.qmp_path, [
            qcow2(root, "a"),
            ("block-dirty-bitmap-remove", {"node": "a", "name": "one"}),
            lambda: _assert_in_use(root / "a.qcow2", {"two": ["in-use", "auto"]}),
            ("block-dirty-bitmap-remove", {"node": "a", "name": "two"}),
            lambda: _assert_in_use(root / "a.qcow2", {}),
        ]))
        vmd.process.wait(10)
    assert "bitmaps" not in json.loads(qimg("info", "--output=json", root / "a.qcow2"))["format-specific"]["data"]
    result = subprocess.run(["qemu-img", "check", "--output=json", str(root / "a.qcow2")],
                            capture_output=True, text=True, env={**os.environ, "LANG": "C"})
    assert result.returncode == 0 and "leaks" not in json.loads(result.stdout)


def nbd_view(root: Path, export: str, *contexts: str) -> Callable[[], Any]:
    """What NBD clients see of an export: the contexts ``nbdinfo --list``
    finds, ``nbdinfo --map`` of each context, and ``qemu-img map`` reading
    a bitmap through ``x-dirty-bitmap`` (libvirt's pull-mode backup)."""
    uri = f"nbd+unix:///{export}?socket={root / 'nbd.sock'}"

    def view() -> dict[str, Any]:
        listing = subprocess.run(["nbdinfo", "--list", "--json", uri], check=True, capture_output=True,
                                 text=True).stdout
        seen: dict[str, Any] = {"contexts": [e["contexts"] for e in json.loads(listing)["exports"]]}
        for context in contexts:
            seen[context] = subprocess.run(["nbdinfo", f"--map={context}", "--json", uri], check=True,
                                           capture_output=True, text=True).stdout
            options = (f"driver=nbd,server.type=unix,server.path={root / 'nbd.sock'},export={export},"
                       f"x-dirty-bitmap={context}")
            seen["qemu-img " + context] = qimg("map", "--output=json", "--image-opts", options)
        return seen
    return view


@pytest.mark.skipif(shutil.which("nbdinfo") is None, reason="nbdinfo (libnbd-bin) is not installed")
def test_nbd_export_of_bitmaps_same_as_qemu(tmp_path: Path) -> None:
    """Exported bitmaps are busy; clients find ``qemu:dirty-bitmap:NAME``
    contexts and read the dirty extents through block status."""
    def setup(root: Path) -> None:
        create(root, "a", "4M")
        create(root, "ro", "4M")

    def steps(root: Path) -> list[Step]:
        start = ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(root / "nbd.sock")}}})
        exp = "block-export-add"
        return [
            qcow2(root, "a"), qcow2(root, "ro", **{"read-only": True}),
            add("a", "b1"), add("a", "b2", disabled=True), add("a", "fine", granularity=512),
            add("ro", "r1"), start,
            (exp, {"type": "nbd", "id": "x", "node-name": "a", "bitmaps": ["nosuch"]}),
            (exp, {"type": "nbd", "id": "x", "node-name": "a", "bitmaps": ["b1"]}),
            (exp, {"type": "nbd", "id": "x", "node-name": "a", "bitmaps": [{"node": "a", "name": "zz"}]}),
            (exp, {"type": "nbd", "id": "x", "node-name": "a", "bitmaps": [{"node": "zz", "name": "b1"}]}),
            (exp, {"type": "nbd", "id": "e", "node-name": "a", "writable": True,
                   "bitmaps": ["b1", {"node": "a", "name": "b2"}, "fine"]}),
            BITMAPS,
            ("block-dirty-bitmap-remove", {"node": "a", "name": "b1"}),
            ("block-dirty-bitmap-clear", {"node": "a", "name": "b1"}),
            ("block-dirty-bitmap-enable", {"node": "a", "name": "b2"}),
            ("block-dirty-bitmap-merge", {"node": "a", "target": "b2", "bitmaps": ["b1"]}),
            (exp, {"type": "nbd", "id": "x", "node-name": "a", "name": "other", "bitmaps": ["b2"]}),
            ("nbd-server-add", {"device": "a", "name": "third", "bitmap": "b1"}),
            guest(root, "write -P 1 64k 4k", "write -P 2 1M 200k", "write -z 2M 1000", "write -P 3 4190208 4096",
                  node="a"),
            nbd_view(root, "a", "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:b2", "qemu:dirty-bitmap:fine"),
            (exp, {"type": "nbd", "id": "r", "node-name": "ro", "bitmaps": ["r1"]}),
            nbd_view(root, "ro", "qemu:dirty-bitmap:r1"),
            ("block-export-del", {"id": "e"}), ("block-export-del", {"id": "r"}),
            BITMAPS,
            ("block-dirty-bitmap-disable", {"node": "a", "name": "fine"}),
            ("nbd-server-add", {"device": "a", "name": "third", "bitmap": "fine"}),
            nbd_view(root, "third", "qemu:dirty-bitmap:fine"),
            ("nbd-server-stop", {}),
            BITMAPS,
        ]
    results = run_both(tmp_path, setup, steps)
    assert results["vmd"] == results["qemu"]
    seen = [line[1] for line in results["vmd"] if line[0] == "saw"]
    assert seen[0]["contexts"] == [["base:allocation", "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:b2",
                                    "qemu:dirty-bitmap:fine"]]
    assert '"description": "dirty"' in seen[0]["qemu:dirty-bitmap:fine"]


def test_incremental_backup_same_as_qemu(tmp_path: Path) -> None:
    """``sync: incremental``/``bitmap`` with each ``bitmap-mode``: QEMU's
    errors, the bitmap frozen while the job runs (busy, a successor
    recording), and synchronised or merged back on success, failure and
    cancel as QEMU's; the targets hold the same data."""
    targets = ("t1", "t2", "t3", "t4", "t5")

    def setup(root: Path) -> None:
        create(root, "a")
        qio(root / "a.qcow2", "write -P 5 0 4M")
        for name in targets:
            create(root, name)
        create(root, "small", "2M")

    def steps(root: Path) -> list[Step]:
        def backup(target: str, sync: str, **extra: Any) -> Step:
            return ("blockdev-backup", {"device": "a", "target": target, "sync": sync, **extra})
        mode = "bitmap-mode"
        return [
            qcow2(root, "a"), *[qcow2(root, name) for name in (*targets, "small")],
            add("a", "b1"), add("a", "b2", disabled=True), *export(root),
            guest(root, "write -P 1 64k 4k", "write -P 2 1M 200k"),
            backup("t1", "incremental"), backup("t1", "bitmap", bitmap="nosuch"),
            backup("t1", "incremental", bitmap="b1", **{mode: "never"}),
            backup("t1", "bitmap", bitmap="b1"), backup("t1", "none", bitmap="b1", **{mode: "always"}),
            backup("t1", "full", bitmap="b1", **{mode: "never"}), backup("t1", "full", **{mode: "always"}),
            backup("small", "bitmap", bitmap="b1", **{mode: "always"}),
            backup("a", "bitmap", bitmap="b1", **{mode: "always"}),
            BITMAPS,
            backup("t1", "incremental", bitmap="b1", speed=1, **{"job-id": "j1"}),
            jobs.wait("JOB_STATUS_CHANGE", id="j1", status="running"),
            BITMAPS, ("block-dirty-bitmap-clear", {"node": "a", "name": "b1"}),
            backup("t2", "bitmap", bitmap="b1", **{mode: "never", "job-id": "j2"}),
            guest(root, "write -P 3 2M 64k"), BITMAPS,
            ("job-cancel", {"id": "j1"}), jobs.wait("JOB_STATUS_CHANGE", id="j1", status="null"), BITMAPS,
            backup("t2", "bitmap", bitmap="b1", **{mode: "never", "job-id": "j2"}),
            jobs.wait("JOB_STATUS_CHANGE", id="j2", status="null"), BITMAPS,
            backup("t3", "bitmap", bitmap="b1", speed=1, **{mode: "always", "job-id": "j3"}),
            jobs.wait("JOB_STATUS_CHANGE", id="j3", status="running"),
            guest(root, "write -P 4 3M 64k"),
            ("job-cancel", {"id": "j3"}), jobs.wait("JOB_STATUS_CHANGE", id="j3", status="null"), BITMAPS,
            backup("t4", "full", bitmap="b1", **{mode: "on-success", "job-id": "j4"}),
            jobs.wait("JOB_STATUS_CHANGE", id="j4", status="null"), BITMAPS,
            guest(root, "write -P 6 3M 64k", "write -P 7 100k 1k"),
            backup("t5", "incremental", bitmap="b1", **{"job-id": "j5"}),
            jobs.wait("JOB_STATUS_CHANGE", id="j5", status="null"), BITMAPS,
            ("query-block-jobs", {}), *unexport(),
        ]
    results = run_both(tmp_path, setup, steps)
    jobs.assert_same_results(results)
    for name in targets[1:]:
        ours, theirs = tmp_path / "vmd" / f"{name}.qcow2", tmp_path / "qemu" / f"{name}.qcow2"
        assert "Images are identical" in qimg("compare", theirs, ours)
        qimg("check", ours)
    final = {b["name"]: b["count"] for b in bitmaps_of(results["vmd"], "a")}
    assert final == {"b1": 0, "b2": 0}


def test_incremental_backup_to_larger_clusters_copies_whole_target_clusters(tmp_path: Path) -> None:
    """A bitmap of 64 KiB granules backed up to a target of 128 KiB
    clusters without a backing file: the copy works in whole target
    clusters (at least 64 KiB, as QEMU's block copy), so the clean half of
    a dirty cluster is copied too rather than left as zeroes (iotest 124)."""
    def setup(root: Path) -> None:
        create(root, "a")
        qio(root / "a.qcow2", "write -P 5 0 4M")
        create(root, "t", "4M", "-o", "cluster_size=128k")

    def steps(root: Path) -> list[Step]:
        return [qcow2(root, "a"), qcow2(root, "t"), add("a", "b1"), *export(root),
                guest(root, "write -P 1 64k 4k", "write -P 2 1M 64k"), *unexport(),
                ("blockdev-backup", {"device": "a", "target": "t", "sync": "incremental", "bitmap": "b1",
                                     "job-id": "j"}),
                jobs.wait("JOB_STATUS_CHANGE", id="j", status="null"), BITMAPS]
    results = run_both(tmp_path, setup, steps)
    jobs.assert_same_results(results)
    ours, theirs = tmp_path / "vmd" / "t.qcow2", tmp_path / "qemu" / "t.qcow2"
    assert "Images are identical" in qimg("compare", theirs, ours)
    checked = qio(ours, "read -P 5 0 64k", "read -P 1 64k 4k", "read -P 5 68k 60k", "read -P 2 1M 64k",
                  "read -P 5 1088k 64k")
    assert "verification failed" not in checked and checked.count("read ") == 5


def _stored(path: Path) -> Callable[[], Any]:
    """The bitmaps the image holds now (``qemu-img info -U``)."""
    def look() -> Any:
        info = json.loads(qimg("info", "-U", "--output=json", path))
        return info["format-specific"]["data"].get("bitmaps")
    return look


def test_snapshot_stores_bitmaps_and_commit_reopens_them_same_as_qemu(tmp_path: Path) -> None:
    """A snapshot makes the old top read-only: its persistent bitmaps are
    stored (no longer in use) and become read-only; an active commit makes
    it writable again and marks them in use, as QEMU."""
    def setup(root: Path) -> None:
        create(root, "a")
        qimg("bitmap", "--add", root / "a.qcow2", "stored")

    def steps(root: Path) -> list[Step]:
        return [
            qcow2(root, "a"), add("a", "p", persistent=True), add("a", "t"), _stored(root / "a.qcow2"),
            *export(root), guest(root, "write -P 1 0 64k"),
            ("blockdev-snapshot-sync", {"node-name": "a", "snapshot-file": str(root / "top.qcow2"),
                                        "snapshot-node-name": "top", "format": "qcow2"}),
            _stored(root / "a.qcow2"), BITMAPS,
            ("block-dirty-bitmap-clear", {"node": "a", "name": "p"}),
            ("block-dirty-bitmap-clear", {"node": "a", "name": "t"}),
            add("a", "p2", persistent=True), guest(root, "write -P 2 1M 64k"),
            ("block-commit", {"job-id": "c", "device": "top"}), jobs.wait("BLOCK_JOB_READY", device="c"),
            _stored(root / "a.qcow2"),
            ("block-dirty-bitmap-clear", {"node": "a", "name": "p"}),
            ("job-complete", {"id": "c"}), jobs.wait("JOB_STATUS_CHANGE", id="c", status="null"),
            guest(root, "write -P 3 2M 64k"), BITMAPS, sha("a", "stored"), sha("a", "p"), sha("a", "p2"),
            *unexport(),
        ]
    results = run_both(tmp_path, setup, steps)
    jobs.assert_same_results(results)
    seen = [line[1] for line in results["vmd"] if line[0] == "saw"]
    assert [[b["flags"] for b in stored] for stored in seen] == [
        [["in-use", "auto"]], [["auto"], ["auto"]], [["in-use", "auto"], ["in-use", "auto"]]]
    for who in ("qemu", "vmd"):
        stored = json.loads(qimg("info", "--output=json", tmp_path / who / "a.qcow2"))["format-specific"]["data"]
        assert [(b["name"], b["flags"]) for b in stored["bitmaps"]] == [
            ("stored", ["auto"]), ("p", ["auto"]), ("p2", ["auto"])]
        qimg("check", tmp_path / who / "a.qcow2")


def test_resize_keeps_bitmaps_same_as_qemu(tmp_path: Path) -> None:
    """Bitmaps follow a resize (new space clean), and a stored bitmap is
    stored again with the new size."""
    def setup(root: Path) -> None:
        create(root, "a")
        qimg("bitmap", "--add", root / "a.qcow2", "stored")

    def steps(root: Path) -> list[Step]:
        return [
            qcow2(root, "a"), add("a", "fine", granularity=512), *export(root),
            guest(root, "write -P 1 4190208 4096"), *unexport(),
            ("block_resize", {"node-name": "a", "size": 6 << 20}),
            *export(root), guest(root, "write -P 2 5M 4k"), *unexport(),
            BITMAPS, sha("a", "stored"), sha("a", "fine"),
        ]
    results = run_both(tmp_path, setup, steps)
    assert results["vmd"] == results["qemu"]
    info = json.loads(qimg("info", "--output=json", tmp_path / "vmd" / "a.qcow2"))
    assert info["virtual-size"] == 6 << 20 and info["format-specific"]["data"]["bitmaps"][0]["flags"] == ["auto"]
    qimg("check", tmp_path / "vmd" / "a.qcow2")


def transaction(*actions: tuple[str, dict[str, Any]], **properties: Any) -> Step:
    arguments: dict[str, Any] = {"actions": [{"type": kind, "data": data} for kind, data in actions]}
    if properties:
        arguments["properties"] = properties
    return ("transaction", arguments)


def test_bitmap_actions_in_transactions_same_as_qemu(tmp_path: Path) -> None:
    """All or nothing: an aborted transaction undoes every bitmap action
    (a removed stored bitmap is gone from the image at once but stays in
    memory), ``grouped`` is refused, a committed one applies them all."""
    def setup(root: Path) -> None:
        create(root, "a")
        qimg("bitmap", "--add", root / "a.qcow2", "stored")

    def steps(root: Path) -> list[Step]:
        remove = ("block-dirty-bitmap-remove", {"node": "a", "name": "stored"})
        return [
            qcow2(root, "a"), add("a", "b1"), *export(root), guest(root, "write -P 1 0 64k"),
            transaction(("block-dirty-bitmap-add", {"node": "a", "name": "x"}), **{"completion-mode": "grouped"}),
            transaction(("block-dirty-bitmap-clear", {"node": "a", "name": "b1"}),
                        **{"completion-mode": "grouped"}),
            transaction(("block-dirty-bitmap-add", {"node": "a", "name": "x"}),
                        ("block-dirty-bitmap-add", {"node": "a", "name": "y", "persistent": True}),
                        ("block-dirty-bitmap-clear", {"node": "a", "name": "b1"}),
                        ("block-dirty-bitmap-disable", {"node": "a", "name": "b1"}),
                        ("block-dirty-bitmap-merge", {"node": "a", "target": "stored", "bitmaps": ["b1"]}),
                        remove, ("abort", {})),
            BITMAPS, sha("a", "b1"), sha("a", "stored"), _stored(root / "a.qcow2"),
            transaction(("block-dirty-bitmap-add", {"node": "a", "name": "x"}),
                        ("block-dirty-bitmap-add", {"node": "a", "name": "x"})),
            transaction(("block-dirty-bitmap-remove", {"node": "a", "name": "b1"}),
                        ("block-dirty-bitmap-clear", {"node": "a", "name": "b1"})),
            transaction(("block-dirty-bitmap-add", {"node": "a", "name": "x", "disabled": True}),
                        ("block-dirty-bitmap-merge", {"node": "a", "target": "x", "bitmaps": ["b1", "stored"]}),
                        ("block-dirty-bitmap-clear", {"node": "a", "name": "b1"}),
                        ("block-dirty-bitmap-enable", {"node": "a", "name": "x"}), remove),
            BITMAPS, sha("a", "x"), sha("a", "b1"), _stored(root / "a.qcow2"), *unexport(),
        ]
    results = run_both(tmp_path, setup, steps)
    jobs.assert_same_results(results)
    errors = [line[3] for line in results["vmd"] if line[0] == "error"]
    assert errors == [
        "Action 'block-dirty-bitmap-add' does not support Transaction property completion-mode = grouped",
        "Action 'block-dirty-bitmap-clear' does not support Transaction property completion-mode = grouped",
        "Transaction aborted using Abort action", "Bitmap already exists: x",
        "Bitmap 'b1' is currently in use by another operation and cannot be used"]


def test_pull_mode_backup_reads_point_in_time_data_and_bitmap_same_as_qemu(tmp_path: Path) -> None:
    """libvirt's pull-mode incremental backup: in one transaction a
    fleecing backup (``sync: none`` into an overlay of the disk) starts and
    the checkpoint bitmap is frozen; the overlay is exported with that
    bitmap. While the guest goes on writing, an NBD client reads exactly
    the data of the point in time and the dirty extents of the bitmap."""
    def setup(root: Path) -> None:
        create(root, "a")
        qio(root / "a.qcow2", "write -P 5 0 4M")
        qimg("create", "-f", "qcow2", "-b", root / "a.qcow2", "-F", "qcow2", root / "fleece.qcow2")

    def point_in_time(root: Path) -> Callable[[], Any]:
        def copy() -> None:
            qimg("convert", "-O", "raw", f"nbd+unix:///a?socket={root / 'nbd.sock'}", root / "then.raw")
        return copy

    def pulled(root: Path) -> Callable[[], Any]:
        def compare() -> Any:
            uri = f"nbd+unix:///fleece?socket={root / 'nbd.sock'}"
            qimg("convert", "-O", "raw", uri, root / "pulled.raw")
            same = (root / "pulled.raw").read_bytes() == (root / "then.raw").read_bytes()
            bitmap = subprocess.run(["nbdinfo", "--map=qemu:dirty-bitmap:b", "--json", uri], check=True,
                                    capture_output=True, text=True).stdout
            return {"point in time": same, "bitmap": json.loads(bitmap)}
        return compare

    def steps(root: Path) -> list[Step]:
        return [
            qcow2(root, "a"), add("a", "b"), *export(root),
            guest(root, "write -P 1 64k 4k", "write -P 2 1M 200k"), point_in_time(root),
            qcow2(root, "fleece", backing="a"),
            transaction(("blockdev-backup", {"job-id": "fl", "device": "a", "target": "fleece", "sync": "none"}),
                        ("block-dirty-bitmap-disable", {"node": "a", "name": "b"}),
                        ("block-dirty-bitmap-add", {"node": "a", "name": "next"})),
            ("block-export-add", {"type": "nbd", "id": "pull", "node-name": "fleece",
                                  "bitmaps": [{"node": "a", "name": "b"}]}),
            guest(root, "write -P 3 0 128k", "write -P 4 1M 64k", "write -z 3M 64k"),
            pulled(root), BITMAPS,
            ("block-export-del", {"id": "pull"}),
            ("job-cancel", {"id": "fl"}), jobs.wait("JOB_STATUS_CHANGE", id="fl", status="null"),
            ("block-dirty-bitmap-remove", {"node": "a", "name": "b"}), BITMAPS, *unexport(),
        ]
    results = run_both(tmp_path, setup, steps)
    jobs.assert_same_results(results)
    seen = [line[1] for line in results["vmd"] if line[0] == "saw"]
    assert seen[0]["point in time"] is True
    assert [e["description"] for e in seen[0]["bitmap"]] == ["clean", "dirty", "clean", "dirty", "clean"]


def test_bit_operations_match_a_plain_model() -> None:
    """Set, reset, counts, searches and merges of the packed bits against a
    list of booleans, over random ranges and granularities."""
    rng = random.Random(7)
    for _ in range(60):
        size = rng.randint(1, 3000) * 512
        granularity = rng.choice([512, 1024, 4096])
        bitmap = DirtyBitmap(size, granularity)
        model = [False] * bitmap.granules
        for _ in range(25):
            offset, length = rng.randrange(size), rng.randint(1, size)
            first, last = offset // granularity, -(-min(offset + length, size) // granularity)
            if rng.random() < 0.6:
                bitmap.set(offset, length)
                model[first:last] = [True] * (last - first)
            else:
                bitmap.reset(first * granularity, (last - first) * granularity)
                model[first:last] = [False] * (last - first)
            assert bitmap.count() == sum(model) * granularity
            probe = rng.randrange(size)
            dirty = next((i for i in range(probe // granularity, len(model)) if model[i]), -1)
            assert bitmap.next_dirty(probe) == (-1 if dirty < 0 else dirty * granularity)
            if dirty >= 0:
                clean = next((i for i in range(dirty, len(model)) if not model[i]), len(model))
                end = min(clean * granularity, size)
                assert bitmap.dirty_run(dirty * granularity, 1 << 40) == end - dirty * granularity
        runs = list(bitmap.dirty_ranges())
        assert sum(n for _, n in runs) == sum(min(size, (i + 1) * granularity) - i * granularity
                                               for i, bit in enumerate(model) if bit)
        coarse = DirtyBitmap(size, granularity * 8)
        coarse.merge(bitmap)
        assert all(coarse.is_dirty(start, n) for start, n in runs)
        packed = bitmap.serialize()
        assert len(packed) % 8 == 0 and hashlib.sha256(packed).hexdigest() == bitmap.sha256()
        twin = DirtyBitmap(size, granularity)
        twin.deserialize(packed, 0)
        assert twin.count() == bitmap.count() and twin.serialize() == packed


def test_bitmaps_by_device_name_same_as_qemu(tmp_path: Path) -> None:
    """A -drive's device name names its node for the bitmap commands;
    ``query-block`` shows the bitmaps of the inserted node."""
    steps: list[Step] = [add("d0", "b"), sha("d0", "b"), ("block-dirty-bitmap-clear", {"node": "d0", "name": "b"}),
                         ("block-dirty-bitmap-merge", {"node": "d0", "target": "b", "bitmaps": [
                             {"node": "d0", "name": "b"}]}), add("nosuch", "b"),
                         add("n0", "c", granularity=4096), ("query-block", {}),
                         ("block-dirty-bitmap-remove", {"node": "d0", "name": "b"}), BITMAPS]
    results = {}
    for who in ("qemu", "vmd"):
        root = tmp_path / who
        root.mkdir()
        create(root, "a")
        drive = ("-drive", f"file={root / 'a.qcow2'},if=none,id=d0,format=qcow2,node-name=n0")
        if who == "qemu":
            with running_qemu(root, *drive) as socket:
                pid = int((root / "qemu.pid").read_text())
                results[who] = asyncio.run(run_steps(socket, steps))
                wait_gone(pid)
        else:
            with running_vmd(root, *drive) as vmd:
                results[who] = asyncio.run(run_steps(vmd.qmp_path, steps))
                vmd.process.wait(10)
    assert results["vmd"] == results["qemu"]
    assert results["vmd"][0] == ["return", "block-dirty-bitmap-add", {}]
    devices = next(line[1] for line in results["vmd"] if line[0] == "devices")
    assert [bitmap["name"] for bitmap in devices["d0"]] == ["c", "b"]
