"""The qcow2 driver against qemu-img / qemu-io 7.2 as oracles."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.qemu_tools import qimg, qio, run
from vmd.block.drivers.file import FileNode
from vmd.block.drivers.qcow2 import Qcow2Node, create_qcow2, open_image
from vmd.block.drivers.qcow2.node import close_image
from vmd.block.graph import BlockGraph
from vmd.qmp.errors import QMPError

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                       reason="qemu-img/qemu-io not installed"),
]
ROOT = Path(__file__).resolve().parent.parent






def to_raw(path: Path) -> bytes:
    out = path.with_suffix(".raw")
    qimg("convert", "-O", "raw", path, out)
    return out.read_bytes()


def check(path: Path) -> dict[str, object]:
    result = run("qemu-img", "check", "--output=json", path)
    report: dict[str, object] = json.loads(result.stdout)
    report["rc"] = result.returncode
    return report


async def read_all(path: Path) -> bytes:
    node = await open_image(str(path), read_only=True)
    try:
        buf = bytearray(node.total_size)
        await node.read(0, memoryview(buf))
        return bytes(buf)
    finally:
        await close_image(node)


async def new_image(path: Path, size: int, **kw: object) -> None:
    path.touch()
    file = FileNode("f", str(path))
    await file.open()
    await create_qcow2(file, size, **kw)  # type: ignore[arg-type]
    await file.close()


@pytest.mark.parametrize("compat,cluster", [("1.1", 65536), ("0.10", 65536), ("1.1", 512),
                                            ("1.1", 4096), ("0.10", 4096), ("1.1", 2 << 20)])
async def test_read_qemu_written(tmp_path: Path, compat: str, cluster: int) -> None:
    img = tmp_path / "a.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-o", f"compat={compat},cluster_size={cluster}", img, "8M")
    qio(img, "write -P 0xab 0 64k", "write -P 0x11 100000 5000", "write -P 0x22 3M 1M",
        "write -P 0x33 7340032 12345", "write -z 3145728 65536", "write -P 0x44 8387584 512")
    assert await read_all(img) == to_raw(img)


async def test_read_compressed_and_backing(tmp_path: Path) -> None:
    raw = tmp_path / "src.img"
    rnd = random.Random(1)
    data = bytearray(4 << 20)
    for _ in range(40):
        off = rnd.randrange(len(data) - 70000)
        data[off:off + 70000] = bytes([rnd.randrange(256)]) * 30000 + rnd.randbytes(40000)
    raw.write_bytes(data)
    comp = tmp_path / "c.qcow2"
    qimg("convert", "-c", "-O", "qcow2", raw, comp)
    assert await read_all(comp) == bytes(data)
    top = tmp_path / "top.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", comp.name, "-F", "qcow2", top, "6M")
    qio(top, "write -P 0x5a 1000 3000", "write -z 2M 64k", "write -P 0x77 4194304 70000")
    mid = tmp_path / "mid.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", top.name, "-F", "qcow2", mid)
    qio(mid, "write -P 0x66 65536 512")
    assert await read_all(top) == to_raw(top)
    assert await read_all(mid) == to_raw(mid)


async def test_writes_pass_check(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qimg("create", "-q", "-f", "qcow2", base, "4M")
    qio(base, "write -P 0xb1 0 4M")
    top = tmp_path / "top.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", base.name, "-F", "qcow2", top)
    expected = bytearray(to_raw(base))
    rnd = random.Random(7)
    node = await open_image(str(top))
    try:
        for i in range(60):
            off = rnd.randrange(len(expected) - 1)
            n = min(rnd.randrange(1, 20000), len(expected) - off)
            op = rnd.random()
            if op < 0.7:
                chunk = bytes([i]) * n
                await node.write(off, chunk)
                expected[off:off + n] = chunk
            elif op < 0.85:
                await node.write_zeroes(off, n, may_unmap=rnd.random() < 0.5)
                expected[off:off + n] = bytes(n)
            else:
                first, last = -(-off // 4096) * 4096, (off + n) // 4096 * 4096
                await node.discard(off, n)
                if last > first:
                    expected[first:last] = bytes(last - first)
            if i % 20 == 0:
                await node.flush()
        await node.truncate(6 << 20)
        expected += bytes(2 << 20)
        await node.write(5 << 20, b"\x99" * 10000)
        expected[5 << 20:(5 << 20) + 10000] = b"\x99" * 10000
        mine = bytearray(node.total_size)
        await node.read(0, memoryview(mine))
        assert mine == expected
        status = await node.block_status(5 << 20, 4096)
        assert status.file_offset is not None
    finally:
        await close_image(node)
    report = check(top)
    assert report["rc"] == 0, report
    assert to_raw(top) == bytes(expected)


async def test_refcount_growth(tmp_path: Path) -> None:
    img = tmp_path / "g.qcow2"
    await new_image(img, 8 << 20, cluster_size=512, refcount_bits=64)
    node = await open_image(str(img))
    data = bytes(range(256)) * 12288  # 3 MiB: many blocks, refcount table moves
    try:
        await node.write(4096, data)
        await node.write_zeroes(0, 4096)
    finally:
        await close_image(node)
    report = check(img)
    assert report["rc"] == 0, report
    assert to_raw(img)[4096:4096 + len(data)] == data


async def test_create_matches_qemu(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "m.qcow2", tmp_path / "q.qcow2"
    await new_image(mine, 1 << 30, backing_file="b.qcow2", backing_fmt="qcow2", cluster_size=4096)
    qimg("create", "-q", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", "-o", "cluster_size=4096", theirs, "1G")
    assert mine.read_bytes() == theirs.read_bytes()
    plain = tmp_path / "p.qcow2"
    await new_image(plain, 3 << 30, lazy_refcounts=True)
    info = json.loads(qimg("info", "--output=json", plain))
    assert info["virtual-size"] == 3 << 30 and info["cluster-size"] == 65536
    assert info["format-specific"]["data"]["lazy-refcounts"] is True
    assert check(plain)["rc"] == 0
    node = await open_image(str(plain), read_only=True)
    assert node.format_info()["format-specific"]["data"]["refcount-bits"] == 16
    await close_image(node)


async def test_lazy_refcounts_dirty_bit(tmp_path: Path) -> None:
    img = tmp_path / "l.qcow2"
    await new_image(img, 1 << 20, lazy_refcounts=True)
    node = await open_image(str(img))
    await node.write(0, b"\x01" * 70000)
    await node.flush()
    assert node.header.incompatible_features & 1
    await close_image(node)
    assert check(img)["rc"] == 0
    qio(img, "read -P 1 0 70000")


def _bad(tmp_path: Path, name: str, mutate: object) -> Path:
    img = tmp_path / name
    qimg("create", "-q", "-f", "qcow2", img, "1M")
    data = bytearray(img.read_bytes())
    assert callable(mutate)
    img.write_bytes(mutate(data))
    return img


@pytest.mark.parametrize("name,mutate,text", [
    ("trunc", lambda d: d[:40], "not in qcow2 format"),
    ("magic", lambda d: b"XXXX" + d[4:], "Image is not in qcow2 format"),
    ("version", lambda d: d[:4] + (7).to_bytes(4, "big") + d[8:], "Unsupported qcow2 version 7"),
    ("l1", lambda d: d[:40] + (1 << 30).to_bytes(8, "big") + d[48:], "Active L1 table offset invalid"),
    ("l1align", lambda d: d[:40] + (0x30008).to_bytes(8, "big") + d[48:], "Active L1 table offset invalid"),
    ("order", lambda d: d[:96] + (7).to_bytes(4, "big") + d[100:], "Reference count entry width too large"),
    ("empty", lambda d: b"", "Image is not in qcow2 format"),
])
async def test_bad_images(tmp_path: Path, name: str, mutate: object, text: str) -> None:
    img = _bad(tmp_path, name, mutate)
    with pytest.raises(QMPError) as info:
        await open_image(str(img))
    assert text in info.value.desc


async def test_missing_backing(tmp_path: Path) -> None:
    img = tmp_path / "t.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", img, "1M")
    with pytest.raises(QMPError) as info:
        await open_image(str(img))
    assert "Could not open backing file" in info.value.desc and "gone.qcow2" in info.value.desc


async def test_graph_opener(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qimg("create", "-q", "-f", "qcow2", base, "1M")
    qio(base, "write -P 0x42 0 1M")
    top = tmp_path / "top.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top)
    graph = BlockGraph()
    file = FileNode("f0", str(top))
    await file.open()
    graph._nodes["f0"] = file  # noqa: SLF001 - no file opener to go through
    options = SimpleNamespace(driver="qcow2", node_name="top", read_only=False,
                              u=SimpleNamespace(file="f0", backing=None, lazy_refcounts=None))
    node = await graph.open(options)
    assert isinstance(node, Qcow2Node) and node.backing is not None
    buf = bytearray(512)
    await node.read(4096, memoryview(buf))
    assert buf == b"\x42" * 512
    assert any(n.node_name.startswith("#block") for n in graph)
    await close_image(node)


CHILD = """
import asyncio, random, sys
sys.path.insert(0, {root!r})
from vmd.block.drivers.qcow2 import open_image
async def main():
    node = await open_image({path!r})
    rnd = random.Random({seed})
    log = open({log!r}, "a", buffering=1)
    i = 0
    while True:
        i += 1
        off = rnd.randrange(node.total_size - 70000)
        n = rnd.randrange(1, 70000)
        op = rnd.choice("wwwwwwzd")
        log.write(f"{{op}} {{off}} {{n}} {{i % 256}}\\n")
        if op == "w":
            await node.write(off, bytes([i % 256]) * n)
        elif op == "d":
            await node.discard(off, n)
        else:
            await node.write_zeroes(off, n)
        if i % 5 == 0:
            await node.flush()
            log.write("f 0 0 0\\n")
            if i == 5:
                print("flushed", flush=True)
asyncio.run(main())
"""


def _verify_flushed(raw: bytes, log: Path) -> None:
    """Bytes settled by the last flush and untouched since must read back."""
    ops = [line.split() for line in log.read_text().splitlines() if line.count(" ") == 3]
    last_flush = max((k for k, op in enumerate(ops) if op[0] == "f"), default=-1)
    expected = bytearray(b"\xee" * len(raw))
    known = bytearray(b"\x01" * len(raw))
    for k, (op, off_s, n_s, v_s) in enumerate(ops):
        off, n, value = int(off_s), int(n_s), int(v_s)
        if op == "f":
            continue
        if k > last_flush or op == "d":
            known[off:off + n] = bytes(n)
        elif op == "w":
            expected[off:off + n] = bytes([value]) * n
            known[off:off + n] = b"\x01" * n
        else:
            expected[off:off + n] = bytes(n)
            known[off:off + n] = b"\x01" * n
    pos = 0
    while pos < len(raw):
        start = known.find(1, pos)
        if start < 0:
            break
        end = known.find(0, start)
        end = len(raw) if end < 0 else end
        assert raw[start:end] == expected[start:end], (start, end)
        pos = end


async def test_crash_safety(tmp_path: Path) -> None:
    deadline = time.monotonic() + 12
    for seed in range(6):
        if time.monotonic() > deadline:
            break
        img = tmp_path / f"crash{seed}.qcow2"
        base = tmp_path / f"cbase{seed}.qcow2"
        qimg("create", "-q", "-f", "qcow2", base, "8M")
        qio(base, "write -P 0xee 0 8M")
        cluster = [512, 4096, 65536][seed % 3]
        qimg("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}", "-b", base.name, "-F", "qcow2", img)
        log = tmp_path / f"log{seed}"
        code = CHILD.format(root=str(ROOT), path=str(img), seed=seed, log=str(log))
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # The kill lands at a random moment after the first flush, however
        # slowly the child starts on a loaded machine.
        assert child.stdout is not None
        if child.stdout.readline() != b"flushed\n":
            raise AssertionError(child.communicate()[1])
        time.sleep(random.random() * 0.8)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        report = check(img)
        assert report["rc"] in (0, 3), (seed, report, child.stderr.read() if child.stderr else b"")
        assert not report.get("corruptions"), report
        assert log.exists() and "f" in log.read_text(), child.stderr.read() if child.stderr else b""
        _verify_flushed(to_raw(img), log)
