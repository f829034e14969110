"""Faults from outside: a disk that fills up for real (a 4 MiB tmpfs) during NBD
writes and blockdev-create, and a backing file deleted under an open image.

The promise: a clear error (ENOSPC reaches the client, the job says why),
nothing corrupt (``qemu-img check`` finds at most leaked clusters), the
daemon keeps serving, and once space is freed the same work succeeds.
blockdev-create is compared with QEMU 7.2 doing the same on its own tmpfs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import QEMU, RawQMP, running_qemu, running_vmd

pytestmark = pytest.mark.qemu


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root, as in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path, leave: int) -> Path:
    """Fill the file system of ``directory`` until ``leave`` bytes are free."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    filler = directory / "filler"
    with filler.open("ab") as out:
        out.write(bytes(max(0, free - leave)))
    return filler


def qemu_io(*args: str) -> str:
    result = subprocess.run(["qemu-io", *args], capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def qcow2_check(image: Path) -> dict[str, Any]:
    result = subprocess.run(["qemu-img", "check", "--output=json", str(image)], capture_output=True, text=True)
    assert result.returncode in (0, 3), result.stdout + result.stderr  # 3: leaks only
    report: dict[str, Any] = json.loads(result.stdout)
    assert report.get("corruptions", 0) == 0
    return report


def commands(path: Path, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with RawQMP(path) as qmp:
        qmp.negotiate()
        return [qmp.command(json.dumps(request)) for request in requests]


def test_nbd_writes_on_a_full_disk(tmp_path: Path, small_disk: Path) -> None:
    image = small_disk / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True, capture_output=True)
    filler = fill(small_disk, 1 << 20)
    socket_path = tmp_path / "nbd.sock"
    url = f"nbd+unix:///disk?socket={socket_path}"
    with running_vmd(tmp_path) as vmd:
        assert commands(vmd.qmp_path, [
            {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "disk", "file": {
                "driver": "file", "filename": str(image)}}},
            {"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix",
                                                                    "data": {"path": str(socket_path)}}}},
            {"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e", "node-name": "disk",
                                                          "writable": True}},
        ]) == [{"return": {}}] * 3
        out = qemu_io("-f", "raw", "-c", "write -P 0x11 0 512k", "-c", "write -P 0x5a 1M 2M", url)
        assert "write failed: No space left on device" in out, out
        assert "read -P 0x11" not in out
        assert "Pattern verification failed" not in qemu_io("-f", "raw", "-c", "read -P 0x11 0 512k", url)
        assert commands(vmd.qmp_path, [{"execute": "query-name"}]) == [{"return": {}}]
        filler.unlink()  # space comes back: the same write now succeeds
        out = qemu_io("-f", "raw", "-c", "write -P 0x5a 1M 2M", "-c", "read -P 0x5a 1M 2M",
                      "-c", "read -P 0x11 0 512k", "-c", "flush", url)
        assert "failed" not in out, out
        assert commands(vmd.qmp_path, [
            {"execute": "block-export-del", "arguments": {"id": "e"}},
            {"execute": "blockdev-del", "arguments": {"node-name": "disk"}},
        ])[1] == {"return": {}}
    qcow2_check(image)
    out = qemu_io("-f", "qcow2", "-c", "read -P 0x11 0 512k", "-c", "read -P 0x5a 1M 2M", str(image))
    assert "failed" not in out, out


def create_on_full_disk(path: Path, disk: Path) -> tuple[list[dict[str, Any]], list[Any]]:
    """blockdev-create qcow2 with no space left, then again with space."""
    image = disk / "new.qcow2"
    image.write_bytes(b"")
    filler = fill(disk, 0)
    replies = commands(path, [
        {"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "f", "filename": str(image)}},
        {"execute": "blockdev-create", "arguments": {"job-id": "full", "options": {
            "driver": "qcow2", "file": "f", "size": 64 << 20}}},
    ])
    errors = [wait_concluded(path, "full")]
    filler.unlink()
    replies += commands(path, [
        {"execute": "job-dismiss", "arguments": {"id": "full"}},
        {"execute": "blockdev-create", "arguments": {"job-id": "room", "options": {
            "driver": "qcow2", "file": "f", "size": 64 << 20}}},
    ])
    errors.append(wait_concluded(path, "room"))
    replies += commands(path, [
        {"execute": "job-dismiss", "arguments": {"id": "room"}},
        {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "q", "file": "f"}},
        {"execute": "blockdev-del", "arguments": {"node-name": "q"}},
        {"execute": "blockdev-del", "arguments": {"node-name": "f"}},
    ])
    qcow2_check(image)
    return replies, errors


def wait_concluded(path: Path, job_id: str) -> Any:
    deadline = time.monotonic() + 30
    with RawQMP(path) as qmp:
        qmp.negotiate()
        while time.monotonic() < deadline:
            jobs = {job["id"]: job for job in qmp.command({"execute": "query-jobs"})["return"]}
            if jobs[job_id]["status"] == "concluded":
                return jobs[job_id].get("error")
            message = qmp.read()  # the next JOB_STATUS_CHANGE (or reply) before looking again
            assert "event" in message or "return" in message
    raise AssertionError(f"job {job_id} did not conclude")


def test_blockdev_create_on_a_full_disk(tmp_path: Path, small_disk: Path) -> None:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with running_vmd(tmp_path) as vmd:
        vmd_replies, vmd_errors = create_on_full_disk(vmd.qmp_path, small_disk)
    qemu_disk = tmp_path / "qemu-disk"
    qemu_disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(qemu_disk)], check=True)
    try:
        with running_qemu(tmp_path) as qemu:
            qemu_replies, qemu_errors = create_on_full_disk(qemu, qemu_disk)
    finally:
        subprocess.run(["umount", "-l", str(qemu_disk)], check=True)
    assert vmd_replies == qemu_replies
    assert vmd_errors == qemu_errors
    assert vmd_errors[0] is not None and "No space left on device" in vmd_errors[0]
    assert vmd_errors[1] is None


def test_backing_file_that_disappears(tmp_path: Path) -> None:
    """Deleted while open: the open file keeps serving; at the next open, a clear error."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(base), "4M"], check=True, capture_output=True)
    qemu_io("-f", "qcow2", "-c", "write -P 0x77 0 1M", str(base))
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)],
                   check=True, capture_output=True)
    socket_path = tmp_path / "nbd.sock"
    url = f"nbd+unix:///top?socket={socket_path}"
    add = {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "top", "file": {
        "driver": "file", "filename": str(top)}}}
    with running_vmd(tmp_path) as vmd:
        assert commands(vmd.qmp_path, [add, {"execute": "nbd-server-start", "arguments": {
            "addr": {"type": "unix", "data": {"path": str(socket_path)}}}}, {"execute": "block-export-add",
            "arguments": {"type": "nbd", "id": "e", "node-name": "top", "writable": True}}]) == [{"return": {}}] * 3
        base.unlink()
        out = qemu_io("-f", "raw", "-c", "read -P 0x77 0 1M", "-c", "write -P 0x12 64k 64k",
                      "-c", "read -P 0x77 0 64k", "-c", "read -P 0x12 64k 64k", url)
        assert "failed" not in out, out
        replies = commands(vmd.qmp_path, [{"execute": "block-export-del", "arguments": {"id": "e"}},
                                          {"execute": "blockdev-del", "arguments": {"node-name": "top"}}, add,
                                          {"execute": "query-name"}])
        assert replies[1] == {"return": {}}
        assert replies[2]["error"]["desc"] == (f"Could not open backing file: Could not open '{base}': "
                                               "No such file or directory")
        assert replies[3] == {"return": {}}
    qcow2_check_unsafe = subprocess.run(["qemu-img", "check", str(top)], capture_output=True, text=True)
    assert "No such file" in qcow2_check_unsafe.stderr  # qemu-img agrees the backing file is gone
