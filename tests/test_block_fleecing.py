"""Image fleecing (pull-mode backup) with ``copy-before-write`` and
``snapshot-access``, as QEMU 7.2's iotest ``image-fleecing`` builds it.

The graph: ``source`` (qcow2), a raw temporary file ``temp`` as the
filter's target, ``fl-cbw`` (copy-before-write over ``source``) and
``fl-access`` (snapshot-access over ``fl-cbw``), each exported over NBD.
Writes go on through the export of ``fl-cbw`` while real qemu-io and
qemu-img read ``fl-access``: they must see exactly the data captured when
fleecing started, and a range the client discarded becomes unreadable.
The same scenario runs on QEMU and on vmd and every qemu-io output and
QMP reply must match. (QEMU's test moves a guest device onto the filter
with qom-set; here the guest is an NBD client of the filter.)
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient
from qemu.qmp.qmp_client import ExecuteError

from tests.harness import QEMU, running_qemu, running_vmd
from tests.test_block_jobs import hang_up, qimg, qio, quit_daemon, wait_gone

pytestmark = pytest.mark.qemu
if QEMU is None:  # pragma: no cover - QEMU is installed by scripts/setup.sh
    pytestmark = pytest.mark.skip("qemu-system-x86_64 is not installed")

SIZE = "8M"
PATTERNS = [("0x5d", "0", "64k"), ("0xd5", "1M", "64k"), ("0xdc", "4M", "64k"), ("0xcd", "0x7f0000", "64k")]
OVERWRITE = [("0xab", "0", "64k"), ("0xad", "0x0f8000", "64k"), ("0x1d", "0x408000", "64k"),
             ("0xea", "0x7e0000", "64k")]


def setup(root: Path) -> None:
    qimg("create", "-f", "qcow2", root / "source.qcow2", SIZE)
    qimg("create", "-f", "raw", root / "fleece.raw", SIZE)
    qio(root / "source.qcow2", *(f"write -P{p} {o} {n}" for p, o, n in PATTERNS))


def uri(root: Path, export: str) -> str:
    return f"nbd+unix:///{export}?socket={root / 'nbd.sock'}"


def io(root: Path, export: str, *commands: str, read_only: bool = False) -> str:
    """qemu-io over NBD; its output (failures included), paths relative."""
    args = ["qemu-io", *(["-r"] if read_only else []), "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    done = subprocess.run([*args, uri(root, export)], capture_output=True, text=True)
    text = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                     if "ops/sec" not in line)
    return text.replace(str(root), "<dir>")


async def scenario(root: Path, qmp: Qmp, out: list[Any]) -> None:
    await qmp("blockdev-add", driver="qcow2", **{"node-name": "source"},
              file={"driver": "file", "filename": str(root / "source.qcow2")})
    await qmp("blockdev-add", driver="file", filename=str(root / "fleece.raw"), **{"node-name": "temp"})
    await qmp("blockdev-add", driver="copy-before-write", file="source", target="temp",
              **{"node-name": "fl-cbw"})
    await qmp("blockdev-add", driver="snapshot-access", file="fl-cbw", discard="unmap",
              **{"node-name": "fl-access"})
    await qmp("nbd-server-start", addr={"type": "unix", "data": {"path": str(root / "nbd.sock")}})
    await qmp("block-export-add", type="nbd", id="access", writable=True, **{"node-name": "fl-access"})
    await qmp("block-export-add", type="nbd", id="active", writable=True, **{"node-name": "fl-cbw"})
    await qmp("blockdev-del", **{"node-name": "fl-cbw"})
    # the guest writes; the fleecing client still reads the old data
    out.append(await asyncio.to_thread(io, root, "fl-cbw", *(f"write -P{p} {o} {n}" for p, o, n in OVERWRITE)))
    out.append(await asyncio.to_thread(io, root, "fl-access", *(f"read -P{p} {o} {n}" for p, o, n in PATTERNS),
                                       read_only=True))
    # the whole snapshot pulled while the guest writes all over the disk
    pull = asyncio.to_thread(subprocess.run, ["qemu-img", "convert", "-f", "raw", "-O", "raw",
                                              uri(root, "fl-access"), str(root / "pulled.raw")], check=True)
    writes = asyncio.to_thread(io, root, "fl-cbw", *(f"write -P0x77 {i * 256}k 32k" for i in range(32)))
    out.append((await asyncio.gather(pull, writes))[1])
    out.append(await asyncio.to_thread(io, root, "fl-access", "write -P1 0 64k"))
    # a discarded range is neither copied nor readable any more
    out.append(await asyncio.to_thread(io, root, "fl-access", "discard 4M 64k", "read 4M 64k",
                                       "read -P0xd5 1M 64k"))
    out.append(await asyncio.to_thread(io, root, "fl-cbw", "write -P0x11 4M 64k", "read -P0x11 4M 64k"))
    await qmp("block-export-del", id="access")
    await qmp("block-export-del", id="active")
    await qmp("query-block-exports")
    await qmp("blockdev-del", **{"node-name": "fl-access"})
    await qmp("blockdev-del", **{"node-name": "fl-cbw"})
    await qmp("blockdev-del", **{"node-name": "temp"})


Qmp = Callable[..., Awaitable[None]]


async def recorded(root: Path, socket: Path, play: Callable[[Path, Qmp, list[Any]], Awaitable[None]]) -> list[Any]:
    """Connect and ``play``: it runs commands through ``qmp``, which records
    each reply (or its error's text), and adds what else it saw; then quit."""
    client = QMPClient()
    await client.connect(str(socket))
    out: list[Any] = []

    async def qmp(name: str, **args: Any) -> None:
        try:
            out.append((name, await client.execute(name, args)))
        except ExecuteError as error:
            out.append((name, error.error.error.desc))

    try:
        await play(root, qmp, out)
        await quit_daemon(client)
    finally:
        await hang_up(client)
    return out


def in_daemon(root: Path, who: str, play: Callable[[Path, Qmp, list[Any]], Awaitable[None]]) -> list[Any]:
    """``recorded`` ``play`` on QEMU or vmd (``who``) in ``root``; returns
    once the daemon has quit (its images closed)."""
    if who == "qemu":
        with running_qemu(root) as socket:
            pid = int((root / "qemu.pid").read_text())
            result = asyncio.run(recorded(root, socket, play))
            wait_gone(pid)
    else:
        with running_vmd(root) as vmd:
            result = asyncio.run(recorded(root, vmd.qmp_path, play))
            vmd.process.wait(10)
    return result


def run(root: Path, who: str) -> list[Any]:
    root.mkdir()
    setup(root)
    qimg("convert", "-O", "raw", root / "source.qcow2", root / "before.raw")
    return in_daemon(root, who, scenario)


def test_fleecing_reads_the_point_in_time_image_same_as_qemu(tmp_path: Path) -> None:
    results = {who: run(tmp_path / who, who) for who in ("qemu", "vmd")}
    assert results["vmd"] == results["qemu"]
    assert not any("can't open" in str(line) for line in results["vmd"])
    root = tmp_path / "vmd"
    # the client pulled exactly the image as it was when fleecing started
    assert "Images are identical" in qimg("compare", "-f", "raw", "-F", "raw", root / "pulled.raw",
                                          root / "before.raw")
    # the guest's writes are in the source; only their old data went to temp
    after = tmp_path / "after.raw"
    shutil.copyfile(root / "before.raw", after)
    qio(after, *(f"write -P{p} {o} {n}" for p, o, n in OVERWRITE), fmt="raw")
    qio(after, *(f"write -P0x77 {i * 256}k 32k" for i in range(32)), "write -P0x11 4M 64k", fmt="raw")
    assert "Images are identical" in qimg("compare", "-F", "raw", root / "source.qcow2", after)
    qimg("check", root / "source.qcow2")
    assert "Images are identical" in qimg("compare", "-f", "raw", "-F", "raw", root / "fleece.raw",
                                          tmp_path / "qemu" / "fleece.raw")
