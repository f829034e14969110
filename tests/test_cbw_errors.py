"""What a failed copy-before-write does, against QEMU 7.2: ``on-cbw-error``
and ``cbw-timeout``, as QEMU's iotest ``copy-before-write`` checks them.

Each case builds its own ``copy-before-write`` filter over a qcow2 source
(1 MiB of data) with a ``snapshot-access`` node above it, both exported
over NBD; the guest writes through the filter's export and the fleecing
client reads the snapshot's, with real qemu-io. The copy to the target
fails either by blkdebug (an EIO on the target's first data write) or by
``cbw-timeout: 1`` with the target behind a throttle of 300 KiB/s (the
first 512 KiB copy goes through, the next waits about 1.6 s). Under
``break-guest-write`` the guest's write fails and the snapshot stays
readable; under ``break-snapshot`` the write succeeds and every snapshot
read fails with EACCES (over NBD: EINVAL). Every qemu-io output and QMP reply must be QEMU's,
and the source must hold the same data in both.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.harness import QEMU
from tests.test_block_fleecing import Qmp, in_daemon, io
from tests.test_block_jobs import qimg, qio

pytestmark = pytest.mark.qemu
if QEMU is None:  # pragma: no cover - QEMU is installed by scripts/setup.sh
    pytestmark = pytest.mark.skip("qemu-system-x86_64 is not installed")

#: (on-cbw-error, how the copy fails)
CASES = [("break-snapshot", "eio"), ("break-guest-write", "eio"),
         ("break-guest-write", "timeout"), ("break-snapshot", "timeout")]


def setup(root: Path) -> None:
    for index in range(len(CASES)):
        qimg("create", "-f", "qcow2", root / f"source{index}.qcow2", "1M")
        qimg("create", "-f", "qcow2", root / f"temp{index}.qcow2", "1M")
        qio(root / f"source{index}.qcow2", "write -P 0x5a 0 1M")


def target(root: Path, index: int, failure: str) -> dict[str, Any]:
    """The filter's target: qcow2 over blkdebug, or behind a throttle."""
    image = {"driver": "file", "filename": str(root / f"temp{index}.qcow2")}
    if failure == "eio":
        return {"driver": "qcow2", "file": {"driver": "blkdebug", "image": image, "inject-error": [
            {"event": "write_aio", "errno": 5, "immediately": False, "once": True}]}}
    return {"driver": "throttle", "throttle-group": "group0", "file": {"driver": "qcow2", "file": image}}


def guest_writes(failure: str) -> list[str]:
    """One write for blkdebug; for the timeout a first one that is let
    through and a second one that the throttle holds."""
    return ["write -P 0x11 0 1M"] if failure == "eio" else ["write -P 0x11 0 512k", "write -P 0x22 512k 512k"]


async def scenario(root: Path, qmp: Qmp, out: list[Any]) -> None:
    await qmp("nbd-server-start", addr={"type": "unix", "data": {"path": str(root / "nbd.sock")}})
    await qmp("object-add", **{"qom-type": "throttle-group", "id": "group0", "limits": {"bps-write": 300 << 10}})
    for index, (policy, failure) in enumerate(CASES):
        source = {"driver": "qcow2", "file": {"driver": "file", "filename": str(root / f"source{index}.qcow2")}}
        options = {"on-cbw-error": policy, **({"cbw-timeout": 1} if failure == "timeout" else {})}
        await qmp("blockdev-add", driver="copy-before-write", file=source, target=target(root, index, failure),
                  **{"node-name": f"cbw{index}"}, **options)
        await qmp("blockdev-add", driver="snapshot-access", file=f"cbw{index}", **{"node-name": f"access{index}"})
        await qmp("block-export-add", type="nbd", id=f"cbw{index}", writable=True, **{"node-name": f"cbw{index}"})
        await qmp("block-export-add", type="nbd", id=f"access{index}", **{"node-name": f"access{index}"})
        for write in guest_writes(failure):
            out.append(await asyncio.to_thread(io, root, f"cbw{index}", write))
        out.append(await asyncio.to_thread(io, root, f"access{index}", "read 0 1M", "read 0 64k",
                                           read_only=True))


def run(root: Path, who: str) -> list[Any]:
    root.mkdir()
    setup(root)
    return in_daemon(root, who, scenario)


def test_copy_failures_break_the_write_or_the_snapshot_same_as_qemu(tmp_path: Path) -> None:
    results = {who: run(tmp_path / who, who) for who in ("qemu", "vmd")}
    assert results["vmd"] == results["qemu"]
    outputs = [line for line in results["vmd"] if isinstance(line, str)]
    # NBD carries EACCES and ETIMEDOUT as EINVAL ("Invalid argument").
    # break-snapshot (EIO): the write went through; the snapshot is gone
    assert outputs[0].startswith("wrote") and outputs[1].count("read failed: Invalid argument") == 2
    # break-guest-write (EIO): the write failed; the snapshot reads on
    assert outputs[2] == "write failed: Input/output error" and "read failed" not in outputs[3]
    # the timeout: the held copy fails the second write, or breaks the snapshot
    assert outputs[4].startswith("wrote") and outputs[5] == "write failed: Invalid argument"
    assert "read failed" not in outputs[6]
    assert outputs[8].startswith("wrote") and outputs[9].count("read failed: Invalid argument") == 2
    for index in range(len(CASES)):
        assert "Images are identical" in qimg("compare", tmp_path / "qemu" / f"source{index}.qcow2",
                                              tmp_path / "vmd" / f"source{index}.qcow2")
        qimg("check", tmp_path / "vmd" / f"source{index}.qcow2")
