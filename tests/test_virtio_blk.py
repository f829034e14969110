"""virtio-blk-pci: the same guest and command line under QEMU 7.2 and vmd.

The ``blkio`` test guest (``tests/guests/blkio.c`` on the guest library's
PCI, virtio and virtio-blk drivers) finds the disk on PCI, prints the
features and configuration space the device offers, and sends every
request type, printing each status byte and used length. Both engines
must print exactly ``EXPECTED`` (QEMU's output, pinned here), and the
image must afterwards hold what the guest wrote, checked with qemu-io.
Under QEMU SeaBIOS has placed the BARs; under vmd (no firmware) the
guest places them; the ``assign`` variant makes the guest place them
under QEMU too.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guest_harness import ENGINES, engine_skip_reason, run_to_exit
from tests.qemu_tools import qimg, qio

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

SERIAL = "disk-serial-01"
EXPECTED = f"""\
device features 6e54 transport 101:30000000
negotiated 1:6e54
queues 1 queue 0 size 128
capacity 0:2048 size_max 0 seg_max 254
geometry 2/16/63 blk_size 512 phys_exp 0 align 0 min_io 0 opt_io 0
wce 1 num_queues 1 discard 4194303/1/1 write_zeroes 4194303/1/1
get-id 0 '{SERIAL}'
read 0+8: 0 len 4097 fnv 792fedc5 all-a5 1
write 64+8: 0 len 1
read back 64+8: 0 same 1
flush: 0
write 3 segments at 32: 0 len 1
read 2 segments at 32: 0 len 2049 fnv 1fb641c5
write 16+8: 0
write-zeroes 16+4: 0
write-zeroes 20+4 unmap: 0
read 16+8: 0 zero 1
write 48+8: 0
discard 48+8: 0
read 48+8: 0 fnv 6c80ddc5
read at capacity: 1
read across the end: 1
write at capacity: 1
write of 100 bytes: 1
unknown type 99: 2
write-zeroes beyond the end: 1
discard beyond the end: 1
status f
done
"""
#: With 4 KiB logical blocks the 512-byte requests of the guest are refused
#: (IOERR), and the geometry's sectors are rounded down to whole blocks.
BIG_BLOCKS = {
    "negotiated 1:6e54": "negotiated 1:30006e54",
    "geometry 2/16/63 blk_size 512": "geometry 2/16/56 blk_size 4096",
    "discard 4194303/1/1": "discard 4194303/1/8",
    "write 3 segments at 32: 0 len 1": "write 3 segments at 32: 1 len 1",
    "read 2 segments at 32: 0 len 2049 fnv 1fb641c5": "read 2 segments at 32: 1 len 2049 fnv d2063dc5",
    "write-zeroes 16+4: 0": "write-zeroes 16+4: 1",
    "write-zeroes 20+4 unmap: 0": "write-zeroes 20+4 unmap: 1",
    "read 16+8: 0 zero 1": "read 16+8: 0 zero 0",
    "get-id 0 '" + SERIAL: "get-id 0 '",
}
VARIANTS = {
    "plain": ("", ""),
    "indirect-evidx-4k": ("indirect evidx assign", ",logical_block_size=4096,physical_block_size=4096"),
}


@functools.cache
def vmd_has_virtio_blk() -> bool:
    result = subprocess.run([sys.executable, "-m", "vmd", "-device", "help"], capture_output=True,
                            text=True, check=False, timeout=60)
    return 'name "virtio-blk-pci"' in result.stdout


def require(engine: str) -> None:
    reason = engine_skip_reason(engine)
    if reason is None and engine == "vmd" and not vmd_has_virtio_blk():
        reason = "vmd has no virtio-blk-pci yet"
    if reason is not None:
        pytest.skip(reason)


def expected(variant: str) -> str:
    if variant == "plain":
        return EXPECTED
    text = EXPECTED
    for old, new in BIG_BLOCKS.items():
        assert old in text
        text = text.replace(old, new)
    return text


def prepared_image(path: Path, fmt: str) -> Path:
    """A 1 MiB image whose first 64 KiB hold 0xa5 (what the guest expects)."""
    qimg("create", "-f", fmt, path, "1M")
    qio(path, "write -P 0xa5 0 64k")
    return path


def drive_args(image: Path, fmt: str, device_options: str) -> list[str]:
    if fmt == "raw":
        blockdev = f"driver=raw,node-name=disk0,file.driver=file,file.filename={image}"
    else:
        blockdev = f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={image}"
    return ["-blockdev", blockdev, "-device", f"virtio-blk-pci,drive=disk0,id=vd0{device_options}"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_guest_requests_give_qemus_answers(engine: str, variant: str, tmp_path: Path) -> None:
    require(engine)
    append, options = VARIANTS[variant]
    image = prepared_image(tmp_path / "disk.raw", "raw")
    if variant == "plain":
        options += f",serial={SERIAL}"
    args = ["-m", "16", *drive_args(image, "raw", options)] + (["-append", append] if append else [])
    output, code = run_to_exit(engine, "blkio", tmp_path, *args)
    assert (output, code) == (expected(variant), (0x20 << 1) | 1)
    if variant == "plain":
        qio(image, "read -P 0xa5 0 8k", "read -P 0 8k 4k", "read -P 0x22 16k 512", "read -P 0x33 16896 1k",
            "read -P 0x44 17920 512", "read -P 0x5a 32k 4k", "read -P 0x66 24k 4k", "read -P 0 64k 64k")


@pytest.mark.parametrize("engine", ENGINES)
def test_qcow2_disk_holds_what_the_guest_wrote(engine: str, tmp_path: Path) -> None:
    require(engine)
    image = prepared_image(tmp_path / "disk.qcow2", "qcow2")
    output, code = run_to_exit(engine, "blkio", tmp_path, "-m", "16",
                               *drive_args(image, "qcow2", f",serial={SERIAL}"))
    assert (output, code) == (EXPECTED, (0x20 << 1) | 1)
    qio(image, "read -P 0 8k 4k", "read -P 0x5a 32k 4k", "read -P 0x22 16k 512", "read -P 0xa5 40k 24k")
    assert "No errors were found" in qimg("check", image)
