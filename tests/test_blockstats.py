"""``query-blockstats``, ``block_set_io_throttle`` and ``query-block``'s
I/O limits, compared with QEMU 7.2.

Both daemons get the same drives (a qcow2 chain under a virtio-blk
device, a throttled null-co drive) and the same commands; HMP ``qemu-io``
aio commands do accounted I/O (``aio_flush`` waits for it). Replies must
match, except what cannot: automatic node names (``#blockNNN``) and
times (present or absent must match, not the value). QEMU runs TCG,
vmd KVM; no guest code runs in either (``-S``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import QEMU, RawQMP, running_qemu, running_vmd

pytestmark = pytest.mark.qemu

DRIVES = ["-nodefaults", "-display", "none", "-S",
          "-drive", "if=none,id=drive0,file={image},node-name=top",
          "-drive", "if=none,id=drive1,driver=null-co,bps=1000000,iops=50,group=g1,read-zeroes=on",
          "-device", "virtio-blk-pci,drive=drive0,id=vd0"]


def make_chain(root: Path) -> Path:
    root.mkdir()
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(root / "base.qcow2"), "1M"], check=True,
                   capture_output=True)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", str(root / "base.qcow2"), "-F", "qcow2",
                    str(root / "top.qcow2"), "1M"], check=True, capture_output=True)
    return root / "top.qcow2"


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """vmd and QEMU, each on a chain of its own (the images get written)."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is absent (vmd's pc needs it)")
    ours, theirs = make_chain(tmp_path / "vmd-img"), make_chain(tmp_path / "qemu-img")
    vmd_args = [arg.format(image=ours) for arg in DRIVES]
    qemu_args = [arg.format(image=theirs) for arg in DRIVES]
    with running_vmd(tmp_path, "-M", "pc", "-accel", "kvm", *vmd_args) as vmd, \
            running_qemu(tmp_path, "-M", "pc", "-accel", "tcg", *qemu_args) as qemu:
        yield vmd.qmp_path, qemu


def normalized(value: Any) -> Any:
    """Automatic node names and image directories erased, times kept only as present."""
    if isinstance(value, dict):
        return {key: 0 if key.endswith("time_ns") else normalized(member) for key, member in value.items()}
    if isinstance(value, list):
        return [normalized(member) for member in value]
    if isinstance(value, str):
        return re.sub(r"#block\d+", "#block", re.sub(r"\S*/(vmd|qemu)-img/", "", value))
    return value


def run(path: Path, requests: list[dict[str, Any]]) -> list[Any]:
    with RawQMP(path) as qmp:
        qmp.negotiate()
        return [normalized(qmp.command(request)) for request in requests]


def compare(daemons: tuple[Path, Path], requests: list[dict[str, Any]]) -> list[Any]:
    ours, theirs = run(daemons[0], requests), run(daemons[1], requests)
    for request, mine, reference in zip(requests, ours, theirs, strict=True):
        assert mine == reference, f"{request}: vmd {mine} != qemu {reference}"
    return ours


def hmp(line: str) -> dict[str, Any]:
    return {"execute": "human-monitor-command", "arguments": {"command-line": line}}


def throttle(**limits: Any) -> dict[str, Any]:
    return {"execute": "block_set_io_throttle",
            "arguments": {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0, **limits}}


def limits_of(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """query-block's limit members of each device (the rest has its own tests)."""
    names = re.compile(r"^(bps|iops)(_rd|_wr)?(_max(_length)?)?$|^iops_size$|^group$")
    return [{key: value for key, value in info["inserted"].items() if names.match(key)}
            for info in reply["return"]]


STATS = {"execute": "query-blockstats"}


def test_blockstats_of_accounted_io(daemons: tuple[Path, Path]) -> None:
    """Before any I/O (no idle_time_ns), then after aio reads and writes, a
    failed read past the end, invalid requests (-i, a bad length; a bad
    offset is not counted), a zero write (not counted), a synchronous
    write (not counted, but wr_highest_offset moves) and aio_flush."""
    before, *_, after = compare(daemons, [
        STATS,
        hmp('qemu-io drive0 "aio_write 0 4k"'), hmp('qemu-io drive0 "aio_read 0 4k"'),
        hmp('qemu-io drive0 "write 64k 4k"'), hmp('qemu-io drive0 "aio_write -z 8k 4k"'),
        hmp('qemu-io drive0 "aio_read 2M 4k"'), hmp('qemu-io drive0 "aio_read x 4k"'),
        hmp('qemu-io drive0 "aio_read -i 0 4k"'), hmp('qemu-io drive0 "aio_write 0 x"'),
        hmp('qemu-io drive0 "aio_flush"'), STATS])
    assert "idle_time_ns" not in before["return"][0]["stats"]
    stats = after["return"][0]["stats"]
    assert (stats["rd_operations"], stats["wr_operations"], stats["flush_operations"]) == (1, 1, 1)
    assert (stats["failed_rd_operations"], stats["invalid_rd_operations"], stats["invalid_wr_operations"]) == (1, 1, 1)
    assert stats["wr_highest_offset"] == 69632 and "idle_time_ns" in stats
    assert after["return"][0]["backing"]["node-name"] == "#block"


def test_blockstats_of_nodes(daemons: tuple[Path, Path]) -> None:
    """query-nodes: every node with its own highest offset and its file's
    discard counters (the order of the nodes differs: vmd registers a
    node once its children are open, QEMU before)."""
    compare(daemons, [hmp('qemu-io drive0 "aio_write 0 64k"'), hmp('qemu-io drive0 "aio_flush"')])
    request = {"execute": "query-blockstats", "arguments": {"query-nodes": True}}
    ours, theirs = run(daemons[0], [request]), run(daemons[1], [request])

    def key(entry: dict[str, Any]) -> str:
        return json.dumps(entry, sort_keys=True)
    assert sorted(ours[0]["return"], key=key) == sorted(theirs[0]["return"], key=key)


def test_set_io_throttle_errors(daemons: tuple[Path, Path]) -> None:
    """Which backend, and the limits' checks, with QEMU's classes and texts:
    a virtio-blk-pci's id names no backend (the backend hangs on its
    virtio-backend child, which names one)."""
    replies = compare(daemons, [
        throttle(bps=1000), throttle(device="drive0", id="vd0", bps=1000), throttle(device="nope", bps=1000),
        throttle(id="nope", bps=1000), throttle(id="vd0", bps=1000),
        throttle(device="drive0", bps=1000, bps_rd=1), throttle(device="drive0", bps_max=10),
        throttle(device="drive0", bps=10, bps_max=5), throttle(device="drive0", bps=10, bps_max_length=2),
        throttle(device="drive0", bps=10, bps_max=20, bps_max_length=0), throttle(device="drive0", iops=-1),
        throttle(id="vd0/virtio-backend", iops=10)])
    assert replies[-1] == {"return": {}}
    assert replies[2]["error"]["class"] == "DeviceNotFound"


def test_set_io_throttle_and_query_block(daemons: tuple[Path, Path]) -> None:
    """Limits and groups as query-block shows them: the group defaults to
    the name the command was given; a group's limits are shared, so setting
    drive0's in group g1 changes drive1's; all zero leaves the group."""
    query = {"execute": "query-block"}
    requests = [
        query, throttle(device="drive0", iops=10), query,
        throttle(device="drive0", bps=4096, iops_rd=20, bps_max=8192, bps_max_length=3, iops_size=512, group="g1"),
        query, throttle(device="drive1"), query, throttle(device="drive0"), query]
    ours, theirs = run(daemons[0], requests), run(daemons[1], requests)
    assert ours[1::2] == theirs[1::2] == [{"return": {}}] * 4
    limits = [limits_of(reply) for reply in ours[::2]]
    assert limits == [limits_of(reply) for reply in theirs[::2]]
    assert [[info.get("group") for info in devices] for devices in limits] == [
        [None, "g1"], ["drive0", "g1"], ["g1", "g1"], ["g1", None], [None, None]]
    assert limits[2][1]["bps_max_length"] == 3


def test_groups_of_backends_objects_and_filters(tmp_path: Path) -> None:
    """One list of groups: a backend's group made by name blocks an object
    of that name and is seen by throttle filters until its last member
    leaves; a backend in an object's group keeps the object in use."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    args = ["-nodefaults", "-drive", "if=none,id=drive1,driver=null-co", "-blockdev", "null-co,node-name=nn"]

    def group(name: str) -> dict[str, Any]:
        return {"execute": "object-add", "arguments": {"qom-type": "throttle-group", "id": name}}

    def filter_over(name: str) -> dict[str, Any]:
        return {"execute": "blockdev-add",
                "arguments": {"driver": "throttle", "node-name": "t", "throttle-group": name, "file": "nn"}}
    with running_vmd(tmp_path, *args) as vmd, running_qemu(tmp_path, *args) as qemu:
        replies = compare((vmd.qmp_path, qemu), [
            throttle(device="drive1", iops=10, group="gx"), group("gx"), group("gy"), group("gy"),
            throttle(device="drive1", iops=10, group="gy"), {"execute": "object-del", "arguments": {"id": "gy"}},
            throttle(device="drive1"), {"execute": "object-del", "arguments": {"id": "gy"}}, filter_over("gx"),
            throttle(device="drive1", iops=10, group="gz"), filter_over("gz"), group("gz")])
    assert replies[1]["error"]["desc"] == "A group with this name already exists"
    assert replies[-2] == {"return": {}}
