"""The io_uring engine (``vmd.block.uring``) and its fallback to workers.

The structures vmd declares to cffi are compared with what gcc makes of
liburing's header; reads and writes go through a real ring on real files;
without io_uring (``VMD_AIO=threads``, or liburing failing to load) the
same calls run on the worker threads.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vmd.block import aio, uring

HEADER = Path("/usr/include/liburing.h")
FIELDS = {
    "io_uring_sqe": ["opcode", "flags", "ioprio", "fd", "off", "addr", "len", "rw_flags",
                     "user_data", "buf_index", "personality", "splice_fd_in", "addr3"],
    "io_uring_cqe": ["user_data", "res", "flags"],
    "io_uring_sq": ["khead", "ktail", "array", "sqes", "sqe_head", "sqe_tail", "ring_sz",
                    "ring_ptr", "ring_mask", "ring_entries"],
    "io_uring_cq": ["khead", "ktail", "cqes", "ring_sz", "ring_ptr", "ring_mask", "ring_entries"],
    "io_uring": ["sq", "cq", "flags", "ring_fd", "features", "enter_ring_fd", "int_flags"],
}


def test_structures_match_liburing(tmp_path: Path) -> None:
    if shutil.which("gcc") is None or not HEADER.exists():
        pytest.skip("gcc or liburing's header (liburing-dev) is not installed")
    lines = []
    for struct, fields in FIELDS.items():
        lines.append(f'printf("{struct} %zu\\n", sizeof(struct {struct}));')
        lines += [f'printf("{struct}.{f} %zu\\n", offsetof(struct {struct}, {f}));' for f in fields]
    lines += [f'printf("IORING_OP_{op} %d\\n", IORING_OP_{op});' for op in ("READ", "WRITE")]
    source = tmp_path / "layout.c"
    source.write_text("#include <stddef.h>\n#include <stdio.h>\n#include <liburing.h>\n"
                      "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    subprocess.run(["gcc", "-o", str(tmp_path / "layout"), str(source)], check=True)
    output = subprocess.run([str(tmp_path / "layout")], check=True, capture_output=True,
                            text=True).stdout
    ffi, _lib = uring._load()
    ours = {}
    for struct, fields in FIELDS.items():
        ours[struct] = ffi.sizeof(f"struct {struct}")
        ours.update({f"{struct}.{f}": ffi.offsetof(f"struct {struct}", f) for f in fields})
    ours.update(IORING_OP_READ=uring.IORING_OP_READ, IORING_OP_WRITE=uring.IORING_OP_WRITE)
    theirs = {name: int(value) for name, value in (line.split() for line in output.splitlines())}
    assert ours == theirs
    assert uring.SQE.size == ffi.sizeof("struct io_uring_sqe")


async def _exercise(path: Path) -> None:
    """Writes and reads through ``aio``, many in one turn, past EOF, and a bad fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        blocks = [bytes([i % 251]) * 4096 for i in range(300)]  # more than a ring holds
        await asyncio.gather(*(aio.pwrite(fd, memoryview(b), i * 4096)
                               for i, b in enumerate(blocks)))
        bufs = [memoryview(bytearray(4096)) for _ in blocks]
        counts = await asyncio.gather(*(aio.pread(fd, buf, i * 4096) for i, buf in enumerate(bufs)))
        assert counts == [4096] * len(blocks)
        assert [bytes(b) for b in bufs] == blocks
        tail = memoryview(bytearray(b"x" * 8192))
        assert await aio.pread(fd, tail, 299 * 4096) == 4096  # the rest lies past EOF
        assert bytes(tail) == blocks[299] + bytes(4096)
        assert os.pread(fd, 4096, 7 * 4096) == blocks[7]
    finally:
        os.close(fd)
    with pytest.raises(OSError) as caught:
        await aio.pwrite(fd, memoryview(b"gone"), 0)
    assert caught.value.errno == errno.EBADF


async def test_reads_and_writes_through_the_ring(tmp_path: Path) -> None:
    if aio.ring() is None:
        pytest.skip("io_uring is not available here")
    await _exercise(tmp_path / "f")
    assert not aio.ring().busy  # type: ignore[union-attr]


async def test_completions_do_not_interrupt_the_loop() -> None:
    """The ring runs completions at the loop's system calls (COOP_TASKRUN),
    on kernels that have it (5.19 on), instead of an interrupt each."""
    ring = aio.ring()
    if ring is None:
        pytest.skip("io_uring is not available here")
    release = tuple(int(part) for part in os.uname().release.split(".")[:2])
    if release < (5, 19):
        pytest.skip("COOP_TASKRUN needs Linux 5.19")
    assert ring.flags == uring.IORING_SETUP_COOP_TASKRUN


def test_a_loop_run_by_another_thread_gets_a_ring_there(tmp_path: Path) -> None:
    """A ring serves the thread that made it (that thread's system calls run
    its completions): one loop run by one thread, then by another, gets a
    ring in each, and I/O works in both."""
    loop = asyncio.new_event_loop()

    async def use(name: str) -> object:
        await _exercise(tmp_path / name)
        return aio.ring()

    # Both threads live throughout, so they cannot share an identifier.
    with ThreadPoolExecutor(1) as one, ThreadPoolExecutor(1) as two:
        try:
            first = one.submit(loop.run_until_complete, use("first")).result()
            if first is None:
                pytest.skip("io_uring is not available here")
            second = two.submit(loop.run_until_complete, use("second")).result()
            assert second is not None and second is not first
        finally:
            loop.close()


async def test_workers_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(aio.ENGINE_ENV, "threads")
    monkeypatch.setattr(aio, "_ring", None)
    assert aio.ring() is None
    await _exercise(tmp_path / "f")


async def test_workers_without_liburing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise OSError("cannot load library 'liburing.so.2'")

    monkeypatch.setattr(uring, "_load", missing)
    monkeypatch.setattr(aio, "_ring", None)
    assert aio.ring() is None
    await _exercise(tmp_path / "f")


class _Refusing:
    """liburing as the ring sees it, with some calls answered otherwise."""

    def __init__(self, real: object, **answers: object) -> None:
        self._real = real
        self.calls: dict[str, int] = {}
        self._answers = answers

    def __getattr__(self, name: str) -> object:
        real = getattr(self._real, name)
        if name not in self._answers:
            return real

        def call(*args: object) -> object:
            self.calls[name] = self.calls.get(name, 0) + 1
            return self._answers[name](self.calls[name], real, *args)  # type: ignore[operator]
        return call


async def test_a_refused_submission_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = aio.ring()
    if ring is None:
        pytest.skip("io_uring is not available here")
    busy_once = _Refusing(ring._lib, io_uring_submit=lambda n, real, r: -errno.EBUSY if n == 1
                          else real(r))
    monkeypatch.setattr(ring, "_lib", busy_once)
    await _exercise(tmp_path / "f")
    assert busy_once.calls["io_uring_submit"] > 1


async def test_a_full_ring_sends_the_call_to_a_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = aio.ring()
    if ring is None:
        pytest.skip("io_uring is not available here")
    null = ring._ffi.NULL
    full = _Refusing(ring._lib, io_uring_get_sqe=lambda n, real, r: null)
    monkeypatch.setattr(ring, "_lib", full)
    await _exercise(tmp_path / "f")
    assert full.calls["io_uring_get_sqe"] >= 300 and not ring.busy
