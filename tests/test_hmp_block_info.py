"""HMP ``info block`` and ``info block-jobs``, and the node list behind
them, compared with QEMU 7.2 on the same images and command line.

Both run one after the other on images at the same paths (their
locks exclude each other), with every node named so no generated ``#blockNNN`` name
differs; the guest never runs (``-S``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guest_harness import GuestVM
from tests.qemu_tools import qimg

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

#: The monitor lines compared: every form of ``info block``, then a job.
LINES = ["info block", "info block -v", "info block -n", "info block -n -v", "info block drive1",
         "info block top", "info block -n top", "info block nope", "info block -x", "info block-jobs"]


def _monitor_view(engine: str, tmp_path: Path) -> dict[str, object]:
    """The monitor's texts and the node list, on images made afresh at
    the same paths (the other engine's job changed them)."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    for image in (base, top):
        image.unlink(missing_ok=True)   # new files, whatever the other engine's last writes do to the old
    qimg("create", "-f", "qcow2", base, "1M")
    qimg("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    args = ["-m", "16", "-S",
            "-blockdev", f"driver=file,node-name=base-file,filename={base}",
            "-blockdev", "driver=qcow2,node-name=base,file=base-file",
            "-blockdev", f"driver=file,node-name=top-file,filename={top}",
            "-blockdev", "driver=qcow2,node-name=top,file=top-file,backing=base",
            "-device", "virtio-blk-pci,drive=top,id=vd0",
            "-drive", "if=none,id=drive1,driver=null-co,read-only=on,node-name=null1",
            "-drive", "if=none,id=drive2,driver=null-co,node-name=null2,detect-zeroes=on,cache=writethrough"]
    with GuestVM(engine, "blkio", tmp_path, *args) as vm, vm.qmp() as qmp:
        def hmp(line: str) -> str:
            return str(qmp.command({"execute": "human-monitor-command",
                                    "arguments": {"command-line": line}})["return"])
        view: dict[str, object] = {line: hmp(line) for line in LINES}
        nodes = qmp.command({"execute": "query-named-block-nodes"})["return"]
        view["nodes"] = [(node["node-name"], node["image"].get("actual-size")) for node in nodes]
        assert qmp.command({"execute": "block-commit", "arguments": {
            "device": "top", "job-id": "j0", "speed": 1}}) == {"return": {}}
        view["with a job"] = hmp("info block-jobs")
        return view


def test_info_block_and_named_nodes_are_qemus(tmp_path: Path) -> None:
    theirs = _monitor_view("qemu", tmp_path)
    assert "Attached to:      /machine/peripheral/vd0/virtio-backend" in str(theirs["info block"])
    assert theirs["info block-jobs"] == "No active jobs\r\n"
    assert _monitor_view("vmd", tmp_path) == theirs
