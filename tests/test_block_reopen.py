"""blockdev-reopen against QEMU 7.2: replies, error texts, graph and locks.

Each scenario runs the same QMP on QEMU (``-M none``) and on vmd over their
own copies of the images (``test_block_graph``'s harness) and compares
every reply, the edges with their permissions, and what
``query-named-block-nodes`` says of each named node (read-only flag,
driver, detect-zeroes, cache mode, size, backing file).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RawQMP, running_vmd
from tests.test_block_graph import GRAPH, Scenario, add, cmd, daemons, file, make_images, run

pytestmark = pytest.mark.qemu

INFO = cmd("query-named-block-nodes", flat=True)


def reopen(*options: dict[str, Any]) -> dict[str, Any]:
    return cmd("blockdev-reopen", options=list(options))


def qcow2(root: Path, name: str, **extra: Any) -> dict[str, Any]:
    """Options of ``name``.qcow2 with named file node ``name-file``."""
    return {"driver": "qcow2", "node-name": name,
            "file": file(root, f"{name}.qcow2", **{"node-name": f"{name}-file"}), **extra}


def summary(reply: dict[str, Any]) -> Any:
    """What a reopen may change about each named node, in QEMU's order."""
    if "return" not in reply:
        return reply
    return [(n["node-name"], n["ro"], n["drv"], n["detect_zeroes"], n["cache"]["direct"],
             n["cache"]["no-flush"], n["image"]["virtual-size"], n.get("backing_file"))
            for n in reply["return"] if not n["node-name"].startswith("#block")]


def compare(tmp_path: Path, scenario: Scenario) -> list[Any]:
    """Run ``scenario`` on QEMU and vmd; every reply must be the same."""
    with daemons(tmp_path) as ((vmd, vmd_root), (qemu, qemu_root)):
        ours, theirs = run(vmd, scenario(vmd_root)), run(qemu, scenario(qemu_root))
        for request, mine, reference in zip(scenario(vmd_root), ours, theirs, strict=True):
            if request is INFO:
                mine, reference = summary(mine), summary(reference)
            mine = json.dumps(mine).replace(str(vmd_root), "ROOT")
            reference = json.dumps(reference).replace(str(qemu_root), "ROOT")
            text = json.dumps(request).replace(str(vmd_root), "ROOT")
            assert mine == reference, f"{text}:\nvmd  {mine}\nqemu {reference}"
    return ours


def test_options_that_cannot_change_are_refused_as_by_qemu(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        a = qcow2(root, "a")
        locked = qcow2(root, "b")
        locked["file"]["locking"] = "off"
        return [
            add(**a), add(**locked), GRAPH, INFO,
            reopen(a), reopen({**a, "file": "a-file"}),
            reopen({**a, "node-name": "nope"}), reopen({**a, "node-name": ""}),
            reopen({k: v for k, v in a.items() if k != "node-name"}),
            reopen({**a, "driver": "raw"}), reopen({**a, "file": "nope"}), reopen({**a, "file": None}),
            reopen({**a, "file": {**a["file"], "node-name": "other"}}),
            reopen({**a, "file": {**a["file"], "filename": str(root / "b.qcow2")}}),
            reopen({**a, "file": {**a["file"], "aio": "native"}}),
            reopen({**a, "file": {**a["file"], "locking": "off"}}),
            reopen({**a, "force-share": True}),
            reopen({**a, "detect-zeroes": "unmap"}),
            reopen({**a, "l2-cache-entry-size": 128 << 10}),
            reopen({**a, "l2-cache-size": 1 << 20, "cache-size": 512 << 10}),
            # An option given at blockdev-add that the driver cannot reset.
            reopen({**locked, "file": {k: v for k, v in locked["file"].items() if k != "locking"}}),
            reopen(locked),
            GRAPH, INFO,
        ]
    compare(tmp_path, scenario)


def test_changeable_options_take_effect_and_go_back_to_defaults(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        a = qcow2(root, "a")
        return [
            add(**a),
            reopen({**a, "detect-zeroes": "on"}), INFO,
            reopen({**a, "detect-zeroes": "unmap", "discard": "unmap"}), INFO,
            reopen({**a, "cache": {"no-flush": True}}), INFO,
            reopen({**a, "l2-cache-size": 1 << 20, "pass-discard-request": True}),
            reopen(a), INFO, GRAPH,
        ]
    compare(tmp_path, scenario)


def test_read_only_switch_moves_permissions(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        a = qcow2(root, "a")
        return [
            add(**a), GRAPH,
            reopen({**a, "read-only": True}), GRAPH, INFO,
            cmd("block-export-add", type="nbd", id="e", **{"node-name": "a"}, writable=True),
            reopen(a), GRAPH, INFO,
            cmd("nbd-server-start", addr={"type": "unix", "data": {"path": str(root / "nbd.sock")}}),
            cmd("block-export-add", type="nbd", id="e", **{"node-name": "a"}, writable=True),
            # A writer holds the node: it may not become read-only.
            reopen({**a, "read-only": True}), GRAPH, INFO,
        ]
    compare(tmp_path, scenario)


def test_backing_and_file_children_change_as_in_qemu(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        a, b, c = (qcow2(root, name, backing=None) for name in "abc")
        top = qcow2(root, "top")
        return [
            add(**a), add(**b), add(**c),
            reopen({**a, "backing": "b"}), GRAPH, INFO,
            reopen({**c, "backing": "a"}),
            reopen({**b, "backing": "c"}), reopen({**b, "backing": "b"}),
            reopen({**c, "backing": "nope"}),
            reopen({k: v for k, v in a.items() if k != "backing"}),
            cmd("blockdev-del", **{"node-name": "b"}),
            reopen({**a, "backing": None}), GRAPH, INFO,
            # Swapping two files is refused one at a time, taken together.
            reopen({**a, "file": "c-file"}),
            reopen({**a, "file": "c-file"}, {**c, "file": "a-file", "backing": None}), GRAPH,
            reopen({**a, "file": "a-file"}, {**c, "file": "c-file", "backing": None}), GRAPH,
            # A failing node leaves the others of the list as they were,
            # whether it fails its checks or the permissions of all.
            reopen({**a, "read-only": True, "file": "a-file"}, {**b, "file": "nope"}), INFO,
            reopen({**a, "read-only": True, "file": "a-file"}, {**c, "file": "a-file", "backing": None}), INFO, GRAPH,
            # a-file was a's own child; taken back by reference, it is not any more.
            reopen(a),
            # The header's backing file must be named; its inline options reopen it.
            add(**top), reopen(top),
            reopen({**top, "backing": {"driver": "qcow2", "file": file(root, "base.qcow2")}}), GRAPH, INFO,
            reopen({**top, "backing": {"driver": "qcow2", "file": file(root, "base.qcow2", locking="off")}}),
            reopen({**top, "backing": None}), GRAPH, INFO,
            reopen(top),
        ]
    compare(tmp_path, scenario)


def test_raw_window_changes(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        raw = {"driver": "raw", "node-name": "r", "file": file(root, "plain.raw", **{"node-name": "r-file"})}
        return [
            add(**raw), INFO,
            reopen({**raw, "offset": 512 << 10}), INFO,
            reopen({**raw, "offset": 2 << 20}),
            reopen({**raw, "offset": 4096, "size": 4096}), INFO,
            reopen({**raw, "size": 1000}),
            reopen(raw), INFO,
        ]
    compare(tmp_path, scenario)


def _qemu_io_reads(path: Path) -> bool:
    """Whether another process may open the image read-only now (the
    image locks allow it: nobody holds write without sharing it)."""
    result = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", str(path)],
                            capture_output=True, text=True)
    return result.returncode == 0


def test_read_only_reopen_releases_and_retakes_the_write_lock(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    make_images(root)
    a = qcow2(root, "a")
    with running_vmd(tmp_path) as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        assert qmp.command(cmd("blockdev-add", **a)) == {"return": {}}
        assert not _qemu_io_reads(root / "a.qcow2")
        assert qmp.command(reopen({**a, "read-only": True})) == {"return": {}}
        assert _qemu_io_reads(root / "a.qcow2")
        assert qmp.command(reopen(a)) == {"return": {}}
        assert not _qemu_io_reads(root / "a.qcow2")
        # Written through the reopened descriptor, read back by QEMU.
        reply = qmp.command(cmd("human-monitor-command", **{"command-line": 'qemu-io a "write -P 0x5a 0 64k"'}))
        assert reply == {"return": ""}
        assert qmp.command(cmd("blockdev-del", **{"node-name": "a"})) == {"return": {}}
    check = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 64k", str(root / "a.qcow2")],
                           capture_output=True, text=True)
    assert "Pattern verification failed" not in check.stdout and check.returncode == 0, check.stdout
    image_check = subprocess.run(["qemu-img", "check", str(root / "a.qcow2")], capture_output=True, text=True)
    assert image_check.returncode == 0, image_check.stdout
