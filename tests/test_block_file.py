"""The file, raw and null-co block drivers, in process, on real files.

Locking is checked against real QEMU processes (qemu-io, qemu-storage-daemon,
qemu-system-x86_64) holding or probing the same image.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.harness import wait_until
from vmd.block.backend import BlockBackend
from vmd.block.drivers import file as file_driver
from vmd.block.drivers.file import FileNode, LockError
from vmd.block.drivers.null import NullNode
from vmd.block.drivers.raw import RawNode
from vmd.block.graph import BlockGraph
from vmd.block.node import Status
from vmd.block.perm import ALL, NONE, Perm
from vmd.qmp.errors import QMPError

MiB = 1 << 20
QEMU_IO = shutil.which("qemu-io")
QSD = shutil.which("qemu-storage-daemon")
QEMU_SYSTEM = shutil.which("qemu-system-x86_64")


def make_image(path: Path, size: int = MiB, data: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(data)
    return path


@asynccontextmanager
async def opened(node: Any) -> AsyncIterator[Any]:
    await node.open()
    try:
        yield node
    finally:
        await node.close()


@asynccontextmanager
async def in_use(node: FileNode, *, resize: bool = False) -> AsyncIterator[BlockBackend]:
    """Open ``node`` and use it as qemu-io does: read, and write unless it is
    read-only, sharing reads and unchanged writes (everything with
    force-share); the locks come with the user's edge."""
    await node.open()
    perm = Perm.CONSISTENT_READ | (NONE if node.read_only else Perm.WRITE) | (Perm.RESIZE if resize else NONE)
    backend = BlockBackend(perm, ALL if node.force_share else Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED)
    try:
        backend.attach(node)
        yield backend
    finally:
        backend.detach()
        await node.close()


def lock_byte_taken(path: Path, byte: int) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return file_driver._ofd_taken(fd, byte)
    finally:
        os.close(fd)


@contextmanager
def running(args: list[str], path: Path, byte: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run a QEMU program and wait until it holds lock ``byte`` of ``path``."""
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        wait_until(lambda: lock_byte_taken(path, byte), f"lock byte {byte}", process=process)
        yield process
    finally:
        process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()


def qemu_io(*args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU_IO is not None
    return subprocess.run([QEMU_IO, *args], capture_output=True, text=True, timeout=30)


# -- file: reads and writes -------------------------------------------------------


async def test_round_trip_and_growth(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img", 64 * 1024)
    async with opened(FileNode("f", str(path))) as node:
        assert node.total_size == 64 * 1024
        assert node.filename() == str(path)
        payload = os.urandom(10000)
        await node.write(1234, payload)
        buf = bytearray(10000)
        await node.read(1234, memoryview(buf))
        assert buf == payload
        # Writes past the end grow a protocol node.
        await node.write(100_000, b"tail")
        assert node.total_size == 100_004
        assert path.stat().st_size == 100_004
        await node.flush()
    assert path.read_bytes()[1234:11234] == payload


@pytest.mark.parametrize("nowait", [True, False])
async def test_reads_from_disk_and_page_cache(tmp_path: Path, nowait: bool) -> None:
    content = os.urandom(2 * MiB)
    path = make_image(tmp_path / "a.img", len(content), content)
    async with opened(FileNode("f", str(path), nowait=nowait)) as node:
        for _ in range(2):
            os.fsync(node.fd)
            # Out of the page cache: RWF_NOWAIT says EAGAIN, a worker reads.
            os.posix_fadvise(node.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            for offset, length in ((0, 4096), (5000, 300_000), (MiB - 10, 20)):
                buf = bytearray(length)
                await node.read(offset, memoryview(buf))
                assert buf == content[offset:offset + length]
            await node.write(777, b"new")
            content = content[:777] + b"new" + content[780:]


async def test_read_past_end_of_file_is_zero(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img", 8192, b"x" * 8192)
    async with opened(FileNode("f", str(path))) as node:
        os.truncate(path, 100)        # shrunk behind the node's back
        buf = bytearray(b"\xff" * 8192)
        await node.read(0, memoryview(buf))
        assert buf == b"x" * 100 + bytes(8092)


async def test_open_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing.img"
    with pytest.raises(QMPError, match=f"^Could not open '{missing}': No such file or directory$"):
        await FileNode("f", str(missing)).open()
    with pytest.raises(QMPError, match=f"^Could not open '{tmp_path}': Is a directory$"):
        await FileNode("f", str(tmp_path)).open()
    with pytest.raises(QMPError, match=f"^'file' driver requires '{tmp_path}' to be a regular file$"):
        await FileNode("f", str(tmp_path), read_only=True).open()
    # A file this process may only read (root ignores modes, so fake the errno;
    # EROFS reads as "Permission denied" too, as in QEMU).
    path = make_image(tmp_path / "ro.img")
    real_open = os.open
    for code in (errno.EACCES, errno.EROFS):
        def refuse(name: str, flags: int, *args: Any, code: int = code) -> int:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise OSError(code, os.strerror(code))
            return real_open(name, flags, *args)
        monkeypatch.setattr(file_driver.os, "open", refuse)
        with pytest.raises(QMPError, match=f"^Could not open '{path}': Permission denied$"):
            await FileNode("f", str(path)).open()
        async with opened(FileNode("f", str(path), auto_read_only=True)) as node:
            assert node.read_only
    monkeypatch.undo()


async def test_no_flush_skips_fdatasync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_image(tmp_path / "a.img")
    calls: list[int] = []
    monkeypatch.setattr(file_driver.os, "fdatasync", calls.append)
    async with opened(FileNode("f", str(path), no_flush=True)) as node:
        await node.flush()
    assert calls == []
    async with opened(FileNode("f", str(path))) as node:
        await node.flush()
    assert len(calls) == 1


# -- file: O_DIRECT -----------------------------------------------------------------


def direct_dir(tmp_path: Path) -> Path:
    """A directory whose file system takes O_DIRECT (tmpfs may not)."""
    for candidate in (tmp_path, Path("/var/tmp")):
        probe = candidate / f"vmd-direct-probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600)
        except OSError:
            continue
        os.close(fd)
        probe.unlink()
        if candidate == tmp_path:
            return tmp_path
        return Path(tempfile.mkdtemp(dir=candidate))
    pytest.skip("no file system here accepts O_DIRECT")


async def test_direct_unaligned_requests(tmp_path: Path) -> None:
    where = direct_dir(tmp_path)
    size = 256 * 1024
    model = bytearray(os.urandom(size))
    path = make_image(where / "d.img", size, bytes(model))
    try:
        async with opened(FileNode("f", str(path), direct=True)) as node:
            assert node.request_alignment in (512, 1024, 2048, 4096)
            rng = random.Random(7)
            for _ in range(200):
                offset = rng.randrange(size - 9000)
                length = rng.randrange(1, 9000)
                if rng.random() < 0.5:
                    data = os.urandom(length)
                    await node.write(offset, data)
                    model[offset:offset + length] = data
                else:
                    buf = bytearray(length)
                    await node.read(offset, memoryview(buf))
                    assert buf == model[offset:offset + length]
            # Aligned request into an aligned buffer: straight to the caller's memory.
            import mmap
            with mmap.mmap(-1, 8192) as area:
                view = memoryview(area)
                await node.read(4096, view)
                assert view == model[4096:4096 + 8192]
                view.release()
            # Partial writes to one block at once must not undo each other.
            pieces = [(base, os.urandom(50)) for base in range(8192, 8192 + 400, 50)]
            await asyncio.gather(*(node.write(base, data) for base, data in pieces))
            for base, data in pieces:
                model[base:base + 50] = data
            # Unaligned end of file: the tail reads as zeroes, writes extend it.
            await node.write(size - 3, b"abcdef")
            model[size - 3:] = b"abc"
            model += b"def"
            assert node.total_size >= size + 3
        assert path.read_bytes()[:size + 3] == model
    finally:
        if where != tmp_path:
            shutil.rmtree(where)


# -- file: holes ------------------------------------------------------------------------


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def fill(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.write(b"\x5a" * size)
        f.flush()
        os.fsync(f.fileno())


async def test_discard_punches_holes(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img", 4 * MiB)
    fill(path, 4 * MiB)
    assert allocated(path) >= 4 * MiB
    async with opened(FileNode("f", str(path))) as node:
        await node.discard(0, MiB)                       # discard=ignore: nothing
    assert allocated(path) >= 4 * MiB
    async with opened(FileNode("f", str(path), unmap=True)) as node:
        await node.discard(MiB, 2 * MiB)
        assert allocated(path) <= 2 * MiB
        assert path.stat().st_size == 4 * MiB
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.lseek(fd, 0, os.SEEK_HOLE) == MiB
        finally:
            os.close(fd)
        buf = bytearray(b"\xff" * (2 * MiB))
        await node.read(MiB, memoryview(buf))
        assert buf == bytes(2 * MiB)


async def test_write_zeroes(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img", 4 * MiB)
    fill(path, 4 * MiB)
    async with opened(FileNode("f", str(path), unmap=True)) as node:
        # May unmap: a hole.
        await node.write_zeroes(0, MiB, may_unmap=True)
        assert allocated(path) <= 3 * MiB
        # Must stay allocated: zeroed in place, no hole in the file's blocks.
        await node.write_zeroes(2 * MiB, MiB)
        assert allocated(path) >= 2 * MiB
        buf = bytearray(b"\xff" * (4 * MiB))
        await node.read(0, memoryview(buf))
        assert buf == bytes(MiB) + b"\x5a" * MiB + bytes(MiB) + b"\x5a" * MiB
        # Past the end: the file grows, both ways.
        await node.write_zeroes(4 * MiB, MiB, may_unmap=True)
        assert path.stat().st_size == node.total_size == 5 * MiB
        await node.write_zeroes(5 * MiB + 7, 100)
        assert path.stat().st_size == node.total_size == 5 * MiB + 107
    async with opened(FileNode("f", str(path))) as node:
        # discard=ignore: may_unmap is dropped, nothing is punched.
        before = allocated(path)
        await node.write_zeroes(MiB, MiB, may_unmap=True)
        assert allocated(path) >= before


async def test_block_status(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img", 4 * MiB)
    with open(path, "r+b") as f:
        f.seek(MiB)
        f.write(b"d" * MiB)
    async with opened(FileNode("f", str(path))) as node:
        extent = await node.block_status(0, 4 * MiB)
        assert extent.status == Status.ZERO | Status.ALLOCATED
        assert extent.length == MiB and extent.file_offset == 0
        extent = await node.block_status(MiB, 3 * MiB)
        assert extent.status == Status.DATA | Status.ALLOCATED
        assert extent.length == MiB and extent.file_offset == MiB
        extent = await node.block_status(2 * MiB, 2 * MiB)
        assert extent.status == Status.ZERO | Status.ALLOCATED
        assert extent.length == 2 * MiB
        extent = await node.block_status(MiB + 10, 100)
        assert (extent.length, extent.status) == (100, Status.DATA | Status.ALLOCATED)


# -- file: locking against QEMU ---------------------------------------------------------


async def test_a_node_without_users_holds_no_lock(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img")
    async with opened(FileNode("f", str(path))):
        assert not any(lock_byte_taken(path, byte) for byte in (100, 101, 102, 103, 200, 201, 202, 203))
        async with in_use(FileNode("g", str(path))):
            assert lock_byte_taken(path, 101) and lock_byte_taken(path, 201)


async def test_locking_between_vmd_nodes(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img")
    async with in_use(FileNode("f", str(path))):
        for read_only, text in ((False, 'Failed to get "write" lock'),
                                (True, 'Failed to get shared "write" lock')):
            with pytest.raises(LockError) as info:
                async with in_use(FileNode("g", str(path), read_only=read_only)):
                    pass
            assert info.value.desc == text
            assert info.value.hint == f"Is another process using the image [{path}]?"
        async with in_use(FileNode("g", str(path), read_only=True, force_share=True)):
            pass
        async with in_use(FileNode("g", str(path), locking=False)):
            pass
    async with in_use(FileNode("f", str(path), read_only=True)):
        with pytest.raises(LockError, match='^Failed to get "write" lock$'):
            async with in_use(FileNode("g", str(path))):
                pass
        async with in_use(FileNode("g", str(path), read_only=True)):
            pass


async def test_set_perm_restores_locks_on_conflict(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img")
    async with in_use(FileNode("f", str(path), read_only=True, force_share=True)) as reader:
        assert not lock_byte_taken(path, 201)
        async with in_use(FileNode("g", str(path))):
            with pytest.raises(LockError, match='^Failed to get shared "write" lock$'):
                reader.set_perm(Perm.CONSISTENT_READ, Perm.CONSISTENT_READ)
            assert reader.shared == ALL and reader.node.shared_perm == ALL
        reader.set_perm(Perm.CONSISTENT_READ, Perm.CONSISTENT_READ)
        assert lock_byte_taken(path, 201)
        reader.set_perm(Perm.CONSISTENT_READ, ALL)
        assert not lock_byte_taken(path, 201)


@pytest.mark.skipif(QEMU_IO is None, reason="qemu-io is not installed")
async def test_qemu_io_cannot_write_an_image_vmd_holds(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img")
    async with in_use(FileNode("f", str(path))):
        result = await asyncio.to_thread(qemu_io, "-c", "read 0 512", "-f", "raw", str(path))
        assert result.returncode != 0
        assert result.stderr == (f"qemu-io: can't open device {path}: Failed to get \"write\" lock\n"
                                 f"Is another process using the image [{path}]?\n")
        # qemu-io read-only shares writes, so it may look.
        result = await asyncio.to_thread(qemu_io, "-r", "-c", "read 0 512", "-f", "raw", str(path))
        assert result.returncode == 0, result.stderr
    result = await asyncio.to_thread(qemu_io, "-c", "write 0 512", "-f", "raw", str(path))
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(QSD is None, reason="qemu-storage-daemon is not installed")
async def test_vmd_cannot_open_an_image_qemu_storage_daemon_exports(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img")
    assert QSD is not None
    args = [QSD, "--blockdev", f"driver=file,filename={path},node-name=f",
            "--blockdev", "driver=raw,file=f,node-name=r",
            "--nbd-server", f"addr.type=unix,addr.path={tmp_path / 'nbd.sock'}",
            "--export", "type=nbd,id=e,node-name=r,writable=on"]
    with running(args, path, 101):
        # The export shares writes but holds "write": vmd, which does not
        # share writes, is refused.
        with pytest.raises(LockError) as info:
            async with in_use(FileNode("f", str(path))):
                pass
        assert info.value.desc == 'Failed to get shared "write" lock'
        assert info.value.hint == f"Is another process using the image [{path}]?"
        async with in_use(FileNode("f", str(path), read_only=True, force_share=True)):
            pass
    async with in_use(FileNode("f", str(path)), resize=True) as user:
        node = user.node
        await node.truncate(2 * MiB)
        assert lock_byte_taken(path, 103)


@pytest.mark.skipif(QEMU_SYSTEM is None, reason="qemu-system-x86_64 is not installed")
async def test_vmd_cannot_write_an_image_a_qemu_guest_holds(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img")
    assert QEMU_SYSTEM is not None
    args = [QEMU_SYSTEM, "-M", "pc", "-accel", "tcg", "-S", "-nodefaults", "-display", "none",
            "-drive", f"file={path},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0"]
    with running(args, path, 201):
        with pytest.raises(LockError, match='^Failed to get "write" lock$'):
            async with in_use(FileNode("f", str(path))):
                pass
        assert not lock_byte_taken(path, 103)     # nothing left behind


# -- raw ------------------------------------------------------------------------------------


async def test_raw_window(tmp_path: Path) -> None:
    content = bytes(range(256)) * 64          # 16 KiB
    path = make_image(tmp_path / "a.img", len(content), content)
    async with opened(FileNode("f", str(path))) as file:
        raw = RawNode("r", file, offset=4096, size=8192)
        await raw.open()
        assert raw.total_size == 8192
        assert raw.filename() == str(path)
        buf = bytearray(8192)
        await raw.read(0, memoryview(buf))
        assert buf == content[4096:12288]
        await raw.write(100, b"hello")
        assert path.read_bytes()[4196:4201] == b"hello"
        with pytest.raises(OSError) as full:
            await raw.write(8190, b"abc")      # out of the window: no room (QEMU's ENOSPC)
        assert full.value.errno == errno.ENOSPC
        with pytest.raises(QMPError, match="^Cannot resize fixed-size raw disks$"):
            await raw.truncate(4096)
        extent = await raw.block_status(0, 8192)
        assert extent.status & Status.DATA and extent.file_offset == 4096
        raw.detach_children()


async def test_raw_pass_through(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img", MiB)
    async with opened(FileNode("f", str(path), unmap=True)) as file:
        raw = RawNode("r", file, unmap=True)
        await raw.open()
        assert raw.total_size == MiB
        await raw.write(0, b"x" * 4096)
        await raw.write_zeroes(0, 4096, may_unmap=True)
        assert (await raw.block_status(0, MiB)).status == Status.ZERO | Status.ALLOCATED
        await raw.truncate(2 * MiB)
        assert raw.total_size == file.total_size == 2 * MiB == path.stat().st_size
        await raw.flush()
        raw.detach_children()


async def test_raw_errors(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.img", MiB)
    async with opened(FileNode("f", str(path))) as file:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"offset": 2_000_000}, "Offset (2000000) cannot be greater than size of the containing file (1048576)"),
            ({"offset": 4096, "size": MiB}, "The sum of offset (4096) and size (1048576) has to be smaller or "
                                            "equal to the  actual size of the containing file (1048576)"),
            ({"size": 1000}, "Specified size is not multiple of 512"),
        ]
        for kwargs, text in cases:
            with pytest.raises(QMPError) as info:
                await RawNode("r", file, **kwargs).open()
            assert info.value.desc == text
            file.parents.clear()
    async with opened(FileNode("f", str(path), read_only=True)) as file:
        with pytest.raises(QMPError, match="^Block node is read-only$"):
            await RawNode("r", file).open()


@pytest.mark.skipif(QEMU_IO is None, reason="qemu-io is not installed")
async def test_open_error_texts_match_qemu(tmp_path: Path) -> None:
    """vmd's text for each bad open is the one qemu-io prints."""
    path = make_image(tmp_path / "a.img", MiB)
    file_spec = {"driver": "file", "filename": str(path)}
    cases: list[tuple[dict[str, Any], Callable[[], Any]]] = []
    for window in ({"offset": 2_000_000}, {"offset": 4096, "size": MiB}, {"size": 1000}):
        async def open_raw(window: dict[str, Any] = window) -> None:
            async with opened(FileNode("f", str(path))) as file:
                try:
                    await RawNode("r", file, **window).open()
                finally:
                    file.parents.clear()
        cases.append(({"driver": "raw", **window, "file": file_spec}, open_raw))
    missing = str(tmp_path / "missing.img")
    cases.append(({"driver": "file", "filename": missing}, FileNode("f", missing).open))
    cases.append(({"driver": "file", "filename": str(tmp_path)}, FileNode("f", str(tmp_path)).open))
    cases.append(({"driver": "null-co", "latency-ns": -1}, lambda: NullNode("n", latency_ns=-1).open()))
    for spec, vmd_open in cases:
        with pytest.raises(QMPError) as info:
            await vmd_open()
        device = f"json:{json.dumps(spec, separators=(',', ':'))}"
        result = await asyncio.to_thread(qemu_io, "-c", "read 0 512", device)
        assert result.stderr == f"qemu-io: can't open device {device}: {info.value.desc}\n"


# -- null-co ---------------------------------------------------------------------------------


async def test_null_co() -> None:
    node = NullNode("n")
    assert node.total_size == 1 << 30 and not node.read_zeroes
    assert node.filename() == "null-co://"
    buf = bytearray(b"\xaa" * 4096)
    await node.read(0, memoryview(buf))
    assert buf == b"\xaa" * 4096                 # untouched
    await node.write(0, b"x" * 4096)
    await node.write_zeroes(0, 1 << 30)
    assert (await node.block_status(0, 4096)).status == 0
    with pytest.raises(QMPError):
        await node.write(1 << 30, b"x")
    zeroing = NullNode("z", size=3 * MiB, read_zeroes=True)
    buf = bytearray(b"\xaa" * (3 * MiB))
    await zeroing.read(0, memoryview(buf))
    assert buf == bytes(3 * MiB)
    assert (await zeroing.block_status(0, MiB)).status == Status.ZERO | Status.ALLOCATED
    with pytest.raises(QMPError, match="^latency-ns is invalid$"):
        NullNode("n", latency_ns=-1)
    slow = NullNode("s", latency_ns=1_000_000)
    start = time.monotonic()
    await slow.read(0, memoryview(bytearray(512)))
    assert time.monotonic() - start >= 0.001


# -- openers through the graph ----------------------------------------------------------------


def options(driver: str, node_name: str | None = None, **members: Any) -> SimpleNamespace:
    base: dict[str, Any] = dict.fromkeys(("read_only", "cache", "discard", "force_share",
                                          "auto_read_only", "detect_zeroes"))
    base.update({name: members.pop(name) for name in list(base) if name in members})
    return SimpleNamespace(driver=driver, node_name=node_name, **base, u=SimpleNamespace(**members))


async def test_openers(tmp_path: Path) -> None:
    where = direct_dir(tmp_path)
    path = make_image(where / "a.img", MiB, b"x" * 4096)
    graph = BlockGraph()
    try:
        file_options = options("file", filename=str(path), locking=None, aio=None)
        raw = await graph.add(options("raw", "r0", file=file_options, offset=None, size=None,
                                      discard="unmap", read_only=False,
                                      cache=SimpleNamespace(direct=True, no_flush=None)))
        assert isinstance(raw, RawNode) and raw.total_size == MiB
        file = raw.file
        assert isinstance(file, FileNode)
        assert file.direct and file.unmap and not file.read_only and file.node_name.startswith("#block")
        assert graph.get(file.node_name) is file
        # Nobody uses r0, so its file holds no lock and a second node opens
        # (as in QEMU); a writer on r0 then keeps other writers out.
        second = await graph.add(options("file", "f2", filename=str(path), locking=None, aio=None))
        writer = graph.backend(Perm.CONSISTENT_READ | Perm.WRITE, Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED)
        writer.attach(raw)
        with pytest.raises(LockError, match='^Failed to get shared "write" lock$'):
            graph.backend(Perm.CONSISTENT_READ, Perm.CONSISTENT_READ).attach(second)
        writer.detach()
        await graph.add(options("file", "f3", filename=str(path), locking="off", aio=None))
        with pytest.raises(QMPError, match="^force-share=on can only be used with read-only images$"):
            await graph.add(options("file", "f4", filename=str(path), locking=None, aio=None,
                                    force_share=True))
        with pytest.raises(QMPError, match=r"^aio=native was specified, but it requires cache.direct=on, "
                                           r"which was not specified\.$"):
            await graph.add(options("file", "f5", filename=str(path), locking=None, aio="native"))
        # A raw parent that fails leaves no inline child behind.
        before = {node.node_name for node in graph}
        with pytest.raises(QMPError, match="^Specified size is not multiple of 512$"):
            await graph.add(options("raw", "r1", offset=None, size=100, file=options(
                "file", filename=str(path), locking="off", aio=None)))
        assert {node.node_name for node in graph} == before
        null = await graph.add(options("null-co", "n0", size=None, read_zeroes=True, latency_ns=None))
        assert isinstance(null, NullNode) and null.total_size == 1 << 30 and null.read_zeroes
        await graph.remove("r0")
        assert graph.get(file.node_name) is None and file.fd == -1
    finally:
        await graph.close_all()
        if where != tmp_path:
            shutil.rmtree(where)
