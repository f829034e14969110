"""Interop, both directions, through a running vmd and its NBD export.

qemu-img/qemu-io make the images and check them; vmd only serves them.
* Reading: images QEMU wrote (qcow2 v2 and v3, several cluster sizes,
  compressed and zero clusters, backing chains) read back through vmd
  identically (``qemu-img compare`` of the NBD export against the file).
* Writing: random writes through vmd's export, partial clusters over a
  backing file included, leave an image that ``qemu-img check`` finds
  clean (no errors, no leaks) and that equals a raw reference image that
  received the same writes from qemu-io directly.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import RawQMP, running_vmd

pytestmark = pytest.mark.qemu


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@contextmanager
def exported(tmp_path: Path, image: Path, fmt: str = "qcow2", writable: bool = False) -> Iterator[str]:
    """vmd serving ``image`` over NBD; yields the NBD URI."""
    socket_path = tmp_path / "nbd.sock"
    options = f"driver={fmt},node-name=disk,file.driver=file,file.filename={image}"
    if not writable:
        options += ",read-only=on"
    with running_vmd(tmp_path, "-blockdev", options) as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        assert qmp.command({"execute": "nbd-server-start", "arguments": {
            "addr": {"type": "unix", "data": {"path": str(socket_path)}}}}) == {"return": {}}
        assert qmp.command({"execute": "block-export-add", "arguments": {
            "type": "nbd", "id": "e", "node-name": "disk", "writable": writable}}) == {"return": {}}
        yield f"nbd+unix:///disk?socket={socket_path}"
        # A clean shutdown flushes qcow2 metadata, as quitting QEMU does.
        qmp.send(b'{"execute":"quit"}')
        vmd.process.wait(20)


@pytest.mark.parametrize("compat, cluster_size", [("0.10", "64k"), ("1.1", "64k"), ("1.1", "512"),
                                                  ("1.1", "4k"), ("1.1", "2M")])
def test_qemu_written_images_read_identically(tmp_path: Path, compat: str, cluster_size: str) -> None:
    image = tmp_path / "img.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", "-o", f"compat={compat},cluster_size={cluster_size}", str(image), "8M")
    commands = ["write -P 0x11 0 100k", "write -P 0x22 1M 3k", "write -P 0x33 5M 2M"]
    if compat == "1.1":
        commands.append("write -z 5M 64k")
    sh("qemu-io", *[arg for c in commands for arg in ("-c", c)], str(image))
    with exported(tmp_path, image) as uri:
        sh("qemu-img", "compare", "-f", "raw", "-F", "qcow2", uri, str(image))


def test_compressed_and_backing_chain(tmp_path: Path) -> None:
    raw = tmp_path / "data.raw"
    sh("qemu-img", "create", "-f", "raw", str(raw), "4M")
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x6b 2M 512k", str(raw))
    base = tmp_path / "base.qcow2"
    sh("qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(base))
    middle = tmp_path / "middle.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(middle))
    sh("qemu-io", "-c", "write -P 0x7c 512k 1M", "-c", "write -z 3M 64k", str(middle))
    top = tmp_path / "top.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", "-b", str(middle), "-F", "qcow2", str(top))
    sh("qemu-io", "-c", "write -P 0x01 1000 3000", str(top))
    with exported(tmp_path, top) as uri:
        sh("qemu-img", "compare", "-f", "raw", "-F", "qcow2", uri, str(top))


def test_vmd_written_images_are_clean_and_equal(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", str(base), "16M")
    sh("qemu-io", "-c", "write -P 0x99 0 16M", str(base))
    image = tmp_path / "top.qcow2"
    sh("qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(image))
    reference = tmp_path / "reference.raw"
    sh("qemu-img", "convert", "-O", "raw", str(image), str(reference))
    rng = random.Random(42)
    writes = []
    for _ in range(60):
        length = rng.choice([512, 4096, 65536, 70000, 200000])
        offset = rng.randrange(0, (16 << 20) - length)
        writes.append(f"write -P {rng.randrange(1, 255)} {offset} {length}")
    writes += ["write -z 3M 128k", "write -z 1000 5000", "discard 8M 64k"]
    with exported(tmp_path, image, writable=True) as uri:
        sh("qemu-io", "-f", "raw", *[arg for w in writes for arg in ("-c", w)], "-c", "flush", uri)
    reference_writes = [w.replace("discard 8M 64k", "write -z 8M 64k") for w in writes]
    sh("qemu-io", "-f", "raw", *[arg for w in reference_writes for arg in ("-c", w)], str(reference))
    check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout
    sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(image), str(reference))
