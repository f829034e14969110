"""Many writes in flight at once on fresh qcow2 clusters.

Writes to different clusters allocate in parallel and two writes to one
new cluster must not both allocate it; the copy-on-write areas must read as
before (a backing file's data, or zeroes past its end). Every write here
covers its own bytes, so the result does not depend on the order in which
they complete: it must equal a raw reference, as qemu-img reads it, and
``qemu-img check`` must find nothing wrong.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.qemu_tools import qimg, qio, run
from vmd.block.drivers.qcow2 import open_image
from vmd.block.drivers.qcow2.node import close_image

SIZE = 4 << 20
BACKING_SIZE = 3 << 20  # the overlay's last MiB has nothing below it


def plan_writes(rnd: random.Random, cluster: int) -> list[tuple[int, int]]:
    """Disjoint (offset, length) ranges: pairs in one cluster, cluster
    spanning writes, whole-cluster runs, in random order."""
    writes: list[tuple[int, int]] = []
    pos = 0
    while pos < SIZE:
        shape = rnd.randrange(4)
        if shape == 0:  # two requests into the same cluster, with a gap
            quarter = cluster // 4
            writes += [(pos + 512, quarter), (pos + 2 * quarter, quarter)]
            pos += cluster
        elif shape == 1:  # across a cluster boundary
            length = cluster + rnd.randrange(1, 8) * 512
            writes.append((pos + 1024, length))
            pos += 3 * cluster
        elif shape == 2:  # several whole clusters
            count = rnd.randrange(1, 5)
            writes.append((pos, count * cluster))
            pos += count * cluster
        else:  # a cluster left alone
            pos += cluster
    rnd.shuffle(writes)
    return [(off, min(n, SIZE - off)) for off, n in writes if off < SIZE]


@pytest.mark.parametrize("cluster", [4096, 65536])
@pytest.mark.parametrize("with_backing", [False, True])
async def test_concurrent_fresh_writes_match_raw(tmp_path: Path, cluster: int,
                                                 with_backing: bool) -> None:
    img = tmp_path / "img.qcow2"
    reference = bytearray(SIZE)
    options = ["-o", f"cluster_size={cluster}"]
    if with_backing:
        base = tmp_path / "base.raw"
        qimg("create", "-q", "-f", "raw", base, str(BACKING_SIZE))
        qio(base, f"write -P 0xee 0 {BACKING_SIZE}")
        reference[:BACKING_SIZE] = b"\xee" * BACKING_SIZE
        options += ["-b", base.name, "-F", "raw"]
    qimg("create", "-q", "-f", "qcow2", *options, img, str(SIZE))
    rnd = random.Random(cluster)
    writes = plan_writes(rnd, cluster)
    node = await open_image(str(img))
    try:
        payloads = [bytes([1 + i % 250]) * n for i, (_, n) in enumerate(writes)]
        await asyncio.gather(*(node.write(off, data)
                               for (off, _), data in zip(writes, payloads)))
        await node.flush()
    finally:
        await close_image(node)
    for (off, n), data in zip(writes, payloads):
        reference[off:off + n] = data
    raw = tmp_path / "out.raw"
    qimg("convert", "-O", "raw", img, raw)
    assert raw.read_bytes() == bytes(reference)
    result = run("qemu-img", "check", img)
    assert result.returncode == 0, result.stdout + result.stderr
