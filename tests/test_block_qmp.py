"""Block commands over QMP, compared with QEMU 7.2 where QEMU has them.

Images are made with ``qemu-img``/``qemu-io`` (independent oracles) and
opened by both daemons with the same ``blockdev-add``; replies and errors
must match. Broken images must give a clear error and leave the daemon
serving.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import QEMU, RawQMP, running_qemu, running_vmd

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of test images, shared by both daemons."""
    root = tmp_path_factory.mktemp("images")
    qemu_img("create", "-f", "qcow2", str(root / "base.qcow2"), "4M")
    subprocess.run(["qemu-io", "-c", "write -P 0x33 0 64k", str(root / "base.qcow2")], check=True,
                   capture_output=True)
    qemu_img("create", "-f", "qcow2", "-b", str(root / "base.qcow2"), "-F", "qcow2", str(root / "top.qcow2"))
    qemu_img("create", "-f", "raw", str(root / "plain.raw"), "1M")
    (root / "garbage.qcow2").write_bytes(b"QFI\xfb" + b"\x00\x00\x00\x07" + bytes(504))
    (root / "truncated.qcow2").write_bytes((root / "base.qcow2").read_bytes()[:40])
    qemu_img("create", "-f", "qcow2", "-b", str(root / "missing.qcow2"), "-F", "qcow2", "-u",
             str(root / "orphan.qcow2"), "1M")
    bad_l1 = bytearray((root / "base.qcow2").read_bytes())
    bad_l1[40:48] = (1 << 40).to_bytes(8, "big")  # l1_table_offset far past EOF
    (root / "bad-l1.qcow2").write_bytes(bytes(bad_l1))
    return root


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with running_vmd(tmp_path_factory.mktemp("vmd")) as vmd, \
            running_qemu(tmp_path_factory.mktemp("qemu")) as qemu:
        yield vmd.qmp_path, qemu


def run(path: Path, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with RawQMP(path) as qmp:
        qmp.negotiate()
        return [qmp.command(json.dumps(request)) for request in requests]


def compare(daemons: tuple[Path, Path], requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ours, theirs = run(daemons[0], requests), run(daemons[1], requests)
    for request, mine, reference in zip(requests, ours, theirs, strict=True):
        assert mine == reference, f"{request}: vmd {mine} != qemu {reference}"
    return ours


def add(**options: Any) -> dict[str, Any]:
    return {"execute": "blockdev-add", "arguments": options}


def delete(node_name: str) -> dict[str, Any]:
    return {"execute": "blockdev-del", "arguments": {"node-name": node_name}}


def qcow2(node_name: str, path: Path, **extra: Any) -> dict[str, Any]:
    return add(driver="qcow2", **{"node-name": node_name},
               file={"driver": "file", "filename": str(path)}, **extra)


def test_add_and_delete_chain(daemons: tuple[Path, Path], images: Path) -> None:
    compare(daemons, [qcow2("top", images / "top.qcow2", **{"read-only": True}), delete("top")])


@pytest.mark.parametrize("request_", [
    add(driver="file", **{"node-name": "m"}, filename="/nonexistent/image"),
    add(driver="nosuch", **{"node-name": "n"}),
    add(driver="qcow2", **{"node-name": "q"}, file={"driver": "filex"}),
    add(driver="raw", **{"node-name": "r"}, file={"driver": "file", "filename": "x"}, offset=-1),
    delete("nosuch"),
], ids=["missing-file", "unknown-driver", "bad-nested-driver", "bad-offset", "delete-unknown"])
def test_errors_match_qemu(daemons: tuple[Path, Path], request_: dict[str, Any]) -> None:
    compare(daemons, [request_])


def test_duplicate_and_busy(daemons: tuple[Path, Path], images: Path) -> None:
    compare(daemons, [
        add(driver="file", **{"node-name": "f1"}, filename=str(images / "plain.raw"), **{"read-only": True}),
        add(driver="file", **{"node-name": "f1"}, filename=str(images / "plain.raw"), **{"read-only": True}),
        add(driver="raw", **{"node-name": "r1"}, file="f1", **{"read-only": True}),
        delete("f1"), delete("r1"), delete("f1"),
    ])


def test_not_qcow2(daemons: tuple[Path, Path], images: Path) -> None:
    compare(daemons, [qcow2("nq", images / "plain.raw")])


@pytest.mark.parametrize("name", ["garbage", "truncated", "bad-l1", "orphan"])
def test_broken_images_give_clear_errors(daemons: tuple[Path, Path], images: Path, name: str) -> None:
    """vmd's text may differ from QEMU's, but it is an error and vmd goes on.

    QEMU 7.2 opens an image whose L1 table lies past the end of the file
    and fails only on reads; vmd refuses it at open, which is stricter.
    """
    ours = run(daemons[0], [qcow2("broken", images / f"{name}.qcow2"),
                            {"execute": "query-name", "id": "after"}])
    theirs = run(daemons[1], [qcow2("broken", images / f"{name}.qcow2"), delete("broken")])
    assert "error" in ours[0], ours
    assert name == "bad-l1" or "error" in theirs[0], theirs
    assert ours[0]["error"]["class"] == "GenericError"
    assert "Traceback" not in ours[0]["error"]["desc"] and "internal error" not in ours[0]["error"]["desc"]
    assert ours[1] == {"return": {}, "id": "after"}


def test_named_block_nodes_shape(daemons: tuple[Path, Path], images: Path) -> None:
    requests = [qcow2("shape", images / "top.qcow2", **{"read-only": True}),
                {"execute": "query-named-block-nodes", "arguments": {"flat": True}}, delete("shape")]
    ours, theirs = run(daemons[0], requests), run(daemons[1], requests)
    mine = next(n for n in ours[1]["return"] if n["node-name"] == "shape")
    reference = next(n for n in theirs[1]["return"] if n["node-name"] == "shape")
    for key in ("file", "ro", "drv", "backing_file_depth", "backing_file", "encrypted", "write_threshold"):
        assert mine.get(key) == reference.get(key), key
    for key in ("filename", "format", "virtual-size", "cluster-size", "backing-filename",
                "backing-filename-format"):
        assert mine["image"].get(key) == reference["image"].get(key), key
    assert mine["image"]["format-specific"]["data"]["compat"] == "1.1"


def _with_drive(root: Path, who: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``requests`` to a fresh vmd or QEMU with a 1 MiB ``-drive`` ``d0``
    (node ``n0``) of its own."""
    root.mkdir()
    image = root / "d0.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "1M")
    drive = ("-drive", f"file={image},if=none,id=d0,node-name=n0")
    if who == "qemu":
        with running_qemu(root, *drive) as socket:
            return run(socket, requests)
    with running_vmd(root, *drive) as vmd:
        return run(vmd.qmp_path, requests)


def test_block_resize_finds_drives_and_nodes_as_qemu(tmp_path: Path) -> None:
    """block_resize looks the node up as bdrv_lookup_bs does: ``device``
    names a drive (a BlockBackend), ``node-name`` a node, either alone;
    with both the drive wins; unknown names give QEMU's text (iotest 124
    resizes a ``-drive`` by its id)."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    def resize(size: int, **names: str) -> dict[str, Any]:
        return {"execute": "block_resize", "arguments": {**names, "size": size}}
    requests = [resize(1 << 20), resize(2 << 20, device="d0"), resize(3 << 20, **{"node-name": "n0"}),
                resize(4 << 20, device="d0", **{"node-name": "nosuch"}), resize(4 << 20, device="n0"),
                resize(4 << 20, **{"node-name": "d0"}), resize(-1, device="d0"),
                resize(-1, device="x", **{"node-name": "y"}),
                {"execute": "query-block"}]
    replies = [_with_drive(tmp_path / who, who, requests) for who in ("vmd", "qemu")]
    ours, theirs = replies
    assert ours[:-1] == theirs[:-1]
    assert [r.get("error") is None for r in ours[:-1]] == [False, True, True, True, False, False, False, False]
    sizes = [d["inserted"]["image"]["virtual-size"] for r in replies for d in r[-1]["return"]]
    assert sizes == [4 << 20, 4 << 20]


def test_create_resize_and_threshold(tmp_path: Path) -> None:
    image = tmp_path / "new.qcow2"
    with running_vmd(tmp_path) as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        assert qmp.command({"execute": "blockdev-create", "arguments": {
            "job-id": "c1", "options": {"driver": "file", "filename": str(image), "size": 0}}}) == {"return": {}}
        wait_concluded(qmp, "c1")
        qmp.command(add(driver="file", **{"node-name": "f"}, filename=str(image)))
        qmp.command({"execute": "blockdev-create", "arguments": {
            "job-id": "c2", "options": {"driver": "qcow2", "file": "f", "size": 1 << 24}}})
        wait_concluded(qmp, "c2")
        assert qmp.command(add(driver="qcow2", **{"node-name": "q"}, file="f")) == {"return": {}}
        assert qmp.command({"execute": "block_resize",
                            "arguments": {"node-name": "q", "size": 1 << 25}}) == {"return": {}}
        assert qmp.command({"execute": "block-set-write-threshold",
                            "arguments": {"node-name": "q", "write-threshold": 4096}}) == {"return": {}}
        assert qmp.command(delete("q")) == {"return": {}}
        assert qmp.command(delete("f")) == {"return": {}}
    check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["virtual-size"] == 1 << 25


def wait_concluded(qmp: RawQMP, job_id: str) -> None:
    """Wait for the job's ``concluded`` event (the event is the signal)."""
    while True:
        message = qmp.read()
        if message.get("event") == "JOB_STATUS_CHANGE" and message["data"] == {"id": job_id,
                                                                                 "status": "concluded"}:
            break
    jobs = qmp.command({"execute": "query-jobs"})["return"]
    job = next(j for j in jobs if j["id"] == job_id)
    assert "error" not in job, job
    assert qmp.command({"execute": "job-dismiss", "arguments": {"id": job_id}}) == {"return": {}}


def test_blockdev_on_the_command_line(tmp_path: Path, images: Path) -> None:
    dotted = f"driver=qcow2,node-name=cli,read-only=on,file.driver=file,file.filename={images / 'top.qcow2'}"
    as_json = json.dumps({"driver": "raw", "node-name": "cli2", "read-only": True,
                          "file": {"driver": "file", "filename": str(images / "plain.raw")}})
    with running_vmd(tmp_path, "-blockdev", dotted, "-blockdev", as_json) as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        nodes = qmp.command({"execute": "query-named-block-nodes"})["return"]
        names = {node["node-name"]: node for node in nodes}
        assert names["cli"]["image"]["backing-image"]["virtual-size"] == 4 << 20
        assert names["cli2"]["drv"] == "raw"


def test_read_only_file_opened_writable(daemons: tuple[Path, Path]) -> None:
    # /proc files refuse writing even to root, like a read-only file would.
    compare(daemons, [add(driver="file", **{"node-name": "ro"}, filename="/proc/version")])


def test_corrupt_refcount_table_is_refused_or_reported(tmp_path: Path) -> None:
    """A refcount table entry pointing into the header: errors, never a crash."""
    image = tmp_path / "loop.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "4M")
    data = bytearray(image.read_bytes())
    refcount_table = int.from_bytes(data[48:56], "big")
    data[refcount_table:refcount_table + 8] = (0).to_bytes(8, "big")  # block 0 -> offset 0 (the header)
    data[refcount_table + 8:refcount_table + 16] = refcount_table.to_bytes(8, "big")  # points at itself
    image.write_bytes(bytes(data))
    with running_vmd(tmp_path) as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        reply = qmp.command(qcow2("loop", image))
        if "return" in reply:
            reply = qmp.command({"execute": "block_resize", "arguments": {"node-name": "loop", "size": 1 << 30}})
        assert qmp.command({"execute": "query-name"}) == {"return": {}}
    assert vmd.process.returncode is None or vmd.process.returncode in (0, -9)


def test_snapshot_sync_and_write_threshold_event(tmp_path: Path) -> None:
    """The export of the old top follows the snapshot onto the overlay (as
    in QEMU, an overlay put over a node nobody uses would go away again)."""
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "4M")
    overlay = tmp_path / "overlay.qcow2"
    nbd = tmp_path / "nbd.sock"
    with running_vmd(tmp_path) as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        assert qmp.command(qcow2("base", base)) == {"return": {}}
        qmp.command({"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix",
                                                                          "data": {"path": str(nbd)}}}})
        assert qmp.command({"execute": "block-export-add", "arguments": {
            "type": "nbd", "id": "e", "node-name": "base", "writable": True}}) == {"return": {}}
        assert qmp.command({"execute": "blockdev-snapshot-sync", "arguments": {
            "node-name": "base", "snapshot-file": str(overlay), "snapshot-node-name": "top",
            "format": "qcow2"}}) == {"return": {}}
        nodes = {n["node-name"]: n for n in qmp.command({"execute": "query-named-block-nodes"})["return"]}
        assert nodes["top"]["image"]["backing-image"]["filename"] == str(base)
        assert qmp.command({"execute": "block-set-write-threshold",
                            "arguments": {"node-name": "top", "write-threshold": 1 << 20}}) == {"return": {}}
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 7 1M 64k", f"nbd+unix:///base?socket={nbd}"],
                       check=True, capture_output=True)
        event = qmp.read()
        assert event["event"] == "BLOCK_WRITE_THRESHOLD"
        assert event["data"] == {"node-name": "top", "amount-exceeded": 65536, "write-threshold": 1 << 20}
        qmp.send(b'{"execute":"quit"}')
    vmd.process.wait(20)
    check = subprocess.run(["qemu-img", "check", str(overlay)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["backing-filename"] == str(base)
