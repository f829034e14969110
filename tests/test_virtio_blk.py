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
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.guest_harness import BASE_ARGS, ENGINES, QEMU, GuestVM, engine_skip_reason, run_to_exit
from tests.qemu_tools import qimg, qio

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

SERIAL = "disk-serial-01"
EXPECTED = f"""\
device features 6e54
transport 101:30000000
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
#: QEMU 7.2 also offers VIRTIO_F_RING_RESET (bit 40); vmd's virtio-pci does not.
VMD_TRANSPORT = ("transport 101:30000000", "transport 1:30000000")
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


def expected(engine: str, variant: str = "plain") -> str:
    text = EXPECTED
    if variant != "plain":
        for old, new in BIG_BLOCKS.items():
            assert old in text
            text = text.replace(old, new)
    return text.replace(*VMD_TRANSPORT) if engine == "vmd" else text


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
    assert (output, code) == (expected(engine, variant), (0x20 << 1) | 1)
    if variant == "plain":
        qio(image, "read -P 0xa5 0 8k", "read -P 0 8k 4k", "read -P 0x22 16k 512", "read -P 0x33 16896 1k",
            "read -P 0x44 17920 512", "read -P 0x5a 32k 4k", "read -P 0x66 24k 4k", "read -P 0 64k 64k")


@pytest.mark.parametrize("engine", ENGINES)
def test_qcow2_disk_holds_what_the_guest_wrote(engine: str, tmp_path: Path) -> None:
    require(engine)
    image = prepared_image(tmp_path / "disk.qcow2", "qcow2")
    output, code = run_to_exit(engine, "blkio", tmp_path, "-m", "16",
                               *drive_args(image, "qcow2", f",serial={SERIAL}"))
    assert (output, code) == (expected(engine), (0x20 << 1) | 1)
    qio(image, "read -P 0 8k 4k", "read -P 0x5a 32k 4k", "read -P 0x22 16k 512", "read -P 0xa5 40k 24k")
    assert "No errors were found" in qimg("check", image)


#: What the hostile guest sees. QEMU serves a buffer outside RAM through a
#: bounce buffer (unassigned memory), takes a queue size that is not a power
#: of two and ignores one above its maximum; vmd takes guest RAM only and
#: queue sizes the split ring allows (powers of two up to the maximum), so
#: its device asks for a reset instead.
HOSTILE = """\
descriptor loop: needs reset
buffer outside RAM: {lenient}
buffer beyond the top of RAM: {lenient}
2 GiB buffer: needs reset
zero-length buffer: needs reset
no status byte: needs reset
8-byte header: needs reset
next beyond the table: needs reset
indirect chain of 2048: needs reset
indirect table of 24 bytes: needs reset
head beyond the queue: needs reset
avail index jump: needs reset
queue size 3: {lenient}
queue size 32768: {lenient}
after the attacks: read 0, first byte a5
"""
LENIENT = {"qemu": "completed ok", "vmd": "needs reset"}


@pytest.mark.parametrize("engine", ENGINES)
def test_hostile_guest_breaks_only_its_own_device(engine: str, tmp_path: Path) -> None:
    require(engine)
    image = prepared_image(tmp_path / "disk.raw", "raw")
    with GuestVM(engine, "vhostile", tmp_path, "-m", "16", *drive_args(image, "raw", "")) as vm:
        vm.wait_for_output("after the attacks")
        with vm.qmp() as qmp:
            assert qmp.command({"execute": "query-status"})["return"]["status"] == "running"
            blocks = qmp.command({"execute": "query-block"})["return"]
            assert [block["inserted"]["node-name"] for block in blocks] == ["disk0"]
        vm.send(b"x")
        assert vm.wait() == (0x22 << 1) | 1
        assert vm.output == HOSTILE.format(lenient=LENIENT[engine])
        assert "Traceback" not in vm.stderr


def _block_state(engine: str, tmp_path: Path, image: Path) -> dict[str, Any]:
    """query-block, the device's edge and blockdev-del's refusals, as ``engine`` answers them."""
    args = ["-m", "16", "-S", "-blockdev", f"driver=file,node-name=file0,filename={image}",
            "-blockdev", "driver=qcow2,node-name=disk0,file=file0",
            "-device", "virtio-blk-pci,drive=disk0,id=vd0,serial=xyz", "-device", "virtio-blk-pci,drive=file1"]
    extra = ["-blockdev", f"driver=file,node-name=file1,filename={image}.raw,locking=off"]
    with GuestVM(engine, "blkio", tmp_path, *args[:2], *extra, *args[2:]) as vm, vm.qmp() as qmp:
        blocks = qmp.command({"execute": "query-block"})["return"]
        for block in blocks:
            block["inserted"].pop("image")
        graph = qmp.command({"execute": "x-debug-query-block-graph"})["return"]
        names = {node["id"]: node["name"] for node in graph["nodes"]}
        edges = sorted((names[e["parent"]], e["name"], names[e["child"]], sorted(e["perm"]), sorted(e["shared-perm"]))
                       for e in graph["edges"])
        refusals = [qmp.command({"execute": "blockdev-del", "arguments": {"node-name": name}})["error"]["desc"]
                    for name in ("disk0", "file0", "file1")]
        return {"blocks": blocks, "edges": edges, "refusals": refusals}


def test_query_block_graph_and_blockdev_del_are_qemus(tmp_path: Path) -> None:
    require("vmd")
    require("qemu")
    image = tmp_path / "disk.qcow2"
    qimg("create", "-f", "qcow2", image, "1M")
    qimg("create", "-f", "raw", f"{image}.raw", "64k")
    theirs = _block_state("qemu", tmp_path / "qemu", image)
    assert theirs["blocks"][0]["qdev"] == "/machine/peripheral/vd0/virtio-backend"
    assert theirs["refusals"] == ["Node disk0 is in use", "Block device file0 is in use", "Node file1 is in use"]
    assert _block_state("vmd", tmp_path / "vmd", image) == theirs


@pytest.mark.parametrize("device", [
    "virtio-blk-pci", "virtio-blk-pci,drive=nope", "virtio-blk-pci,drive=disk0,num-queues=0",
    "virtio-blk-pci,drive=disk0,queue-size=2", "virtio-blk-pci,drive=disk0,queue-size=100",
    "virtio-blk-pci,drive=disk0,logical_block_size=1000", "virtio-blk-pci,drive=disk0,logical_block_size=4096",
    "virtio-blk-pci,drive=disk0,physical_block_size=256", "virtio-blk-pci,drive=disk0,min_io_size=1000",
    "virtio-blk-pci,drive=disk0,max-discard-sectors=0", "virtio-blk-pci,drive=disk0,iothread=io9",
])
def test_property_errors_are_qemus(device: str, tmp_path: Path) -> None:
    require("vmd")
    require("qemu")
    image = tmp_path / "disk.raw"
    qimg("create", "-f", "raw", image, "1M")
    args = [*BASE_ARGS, "-S", "-blockdev", f"driver=file,node-name=disk0,filename={image}", "-device", device]
    assert QEMU is not None
    theirs = subprocess.run([QEMU, *args], capture_output=True, text=True, timeout=60, check=False)
    ours = subprocess.run([sys.executable, "-m", "vmd", *args], capture_output=True, text=True, timeout=60,
                          check=False)
    message = theirs.stderr.strip().splitlines()[-1].split(f"-device {device}: ", 1)[1]
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.strip().splitlines()[-1].endswith(message), ours.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_query_iothreads_is_qemus(engine: str, tmp_path: Path) -> None:
    require(engine)
    args = ("-S", "-object", "iothread,id=io0", "-object", "iothread,id=io1,poll-max-ns=100,aio-max-batch=3")
    with GuestVM(engine, "blkio", tmp_path, *args) as vm, vm.qmp() as qmp:
        threads = qmp.command({"execute": "query-iothreads"})["return"]
    assert all(isinstance(thread.pop("thread-id"), int) for thread in threads)
    assert threads == [
        {"id": "io1", "poll-max-ns": 100, "poll-grow": 0, "poll-shrink": 0, "aio-max-batch": 3},
        {"id": "io0", "poll-max-ns": 32768, "poll-grow": 0, "poll-shrink": 0, "aio-max-batch": 0}]


def test_iothread_is_accepted(tmp_path: Path) -> None:
    require("vmd")
    image = prepared_image(tmp_path / "disk.raw", "raw")
    output, code = run_to_exit("vmd", "blkio", tmp_path, "-m", "16", "-object", "iothread,id=io0",
                               *drive_args(image, "raw", f",serial={SERIAL},iothread=io0"))
    assert (output, code) == (expected("vmd"), (0x20 << 1) | 1)


# -- block jobs on the disk of a running guest -------------------------------------

WRITER_ARGS = ("-m", "16")
SECTOR = 512


def _sector_passes(image: Path, tmp_path: Path) -> list[int]:
    """The pass that wrote each sector of ``image`` (0: never written); fails on a torn sector."""
    raw = tmp_path / f"{image.name}.raw"
    qimg("convert", "-O", "raw", image, raw)
    data = raw.read_bytes()
    passes = []
    for sector in range(len(data) // SECTOR):
        words = struct.unpack_from("<128I", data, sector * SECTOR)
        if not any(words):
            passes.append(0)
            continue
        assert words[0::2] == (sector,) * 64, f"sector {sector} holds another sector's data"
        assert len(set(words[1::2])) == 1, f"sector {sector} is torn: {set(words[1::2])}"
        passes.append(words[1])
    return passes


def _last_pass(output: str) -> int:
    match = re.search(r"^stopped after pass (\d+)$", output, re.M)
    assert match, output
    return int(match.group(1))


def _passes_seen(vm: GuestVM) -> int:
    return len(re.findall(r"^pass \d+$", vm.output, re.M))


def _stop_writer(vm: GuestVM, after_pass: int) -> int:
    """Let the writer complete ``after_pass``, stop it; the last pass it wrote."""
    vm.wait_for_output(f"pass {after_pass}\n")
    vm.send(b"s")
    assert vm.wait() == (0x23 << 1) | 1, vm.output
    return _last_pass(vm.output)


@pytest.mark.parametrize("engine", ENGINES)
def test_active_commit_under_guest_writes_loses_nothing(engine: str, tmp_path: Path) -> None:
    require(engine)
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qimg("create", "-f", "qcow2", base, "1M")
    qimg("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    args = ["-blockdev", f"driver=qcow2,node-name=base,file.driver=file,file.filename={base}",
            "-blockdev", f"driver=qcow2,node-name=top,backing=base,file.driver=file,file.filename={top}",
            "-device", "virtio-blk-pci,drive=top,id=vd0"]
    with GuestVM(engine, "blkwrite", tmp_path, *WRITER_ARGS, *args) as vm, vm.qmp() as qmp:
        vm.wait_for_output("pass 1\n")
        assert qmp.command({"execute": "block-commit", "arguments": {"job-id": "c", "device": "top"}}) == \
            {"return": {}}
        qmp.wait_event("BLOCK_JOB_READY")
        assert qmp.command({"execute": "job-complete", "arguments": {"id": "c"}}) == {"return": {}}
        completed = qmp.wait_event("BLOCK_JOB_COMPLETED")
        assert "error" not in completed["data"]
        blocks = qmp.command({"execute": "query-block"})["return"]
        assert [block["inserted"]["node-name"] for block in blocks] == ["base"]
        last = _stop_writer(vm, _passes_seen(vm) + 2)
    assert _sector_passes(base, tmp_path) == [last] * (1 << 20 >> 9)
    assert "No errors were found" in qimg("check", base)


@pytest.mark.parametrize("engine", ENGINES)
def test_backup_under_guest_writes_is_a_point_in_time(engine: str, tmp_path: Path) -> None:
    require(engine)
    disk, target = tmp_path / "disk.qcow2", tmp_path / "backup.qcow2"
    qimg("create", "-f", "qcow2", disk, "1M")
    qimg("create", "-f", "qcow2", target, "1M")
    args = ["-blockdev", f"driver=qcow2,node-name=disk,file.driver=file,file.filename={disk}",
            "-blockdev", f"driver=qcow2,node-name=target,file.driver=file,file.filename={target}",
            "-device", "virtio-blk-pci,drive=disk,id=vd0"]
    with GuestVM(engine, "blkwrite", tmp_path, *WRITER_ARGS, *args) as vm, vm.qmp() as qmp:
        vm.wait_for_output("pass 2\n")
        assert qmp.command({"execute": "blockdev-backup", "arguments": {
            "job-id": "b", "device": "disk", "target": "target", "sync": "full"}}) == {"return": {}}
        completed = qmp.wait_event("BLOCK_JOB_COMPLETED")
        assert "error" not in completed["data"]
        # Closed now: isa-debug-exit ends QEMU without closing its images.
        assert qmp.command({"execute": "blockdev-del", "arguments": {"node-name": "target"}}) == {"return": {}}
        last = _stop_writer(vm, _passes_seen(vm) + 1)
    assert _sector_passes(disk, tmp_path) == [last] * (1 << 20 >> 9)
    snapshot = _sector_passes(target, tmp_path)
    # The target is the disk at the job's start: the writer was in the middle
    # of pass g, so a prefix holds g and the rest g - 1.
    newest = snapshot[0]
    boundary = snapshot.index(newest - 1) if newest - 1 in snapshot else len(snapshot)
    assert newest >= 2 and snapshot == [newest] * boundary + [newest - 1] * (len(snapshot) - boundary), snapshot
    for image in (disk, target):
        assert "No errors were found" in qimg("check", image)


def test_device_help_is_qemus() -> None:
    require("vmd")
    require("qemu")
    assert QEMU is not None
    theirs = subprocess.run([QEMU, "-M", "pc", "-accel", "tcg", "-display", "none", "-device", "virtio-blk-pci,help"],
                            capture_output=True, text=True, timeout=60, check=False).stdout.splitlines()
    ours = subprocess.run([sys.executable, "-m", "vmd", "-device", "virtio-blk-pci,help"],
                          capture_output=True, text=True, timeout=60, check=False).stdout.splitlines()
    assert ours[0] == theirs[0] == "virtio-blk-pci options:"
    assert set(ours[1:]) <= set(theirs[1:]), set(ours[1:]) - set(theirs[1:])
    assert len(ours) > 25


# -- I/O errors: rerror/werror ------------------------------------------------------

def _failing_disk(tmp_path: Path, event: str, sector: int, device_options: str = "") -> list[str]:
    """Arguments for a paused guest whose disk (raw over blkdebug) fails every
    ``event`` at ``sector`` with EIO."""
    image = prepared_image(tmp_path / "disk.raw", "raw")
    rule = f"inject-error.0.event={event},inject-error.0.errno=5,inject-error.0.sector={sector}"
    return ["-m", "16", "-S",
            "-blockdev", f"driver=blkdebug,node-name=dbg,image.driver=file,image.filename={image},{rule}",
            "-blockdev", "driver=raw,node-name=disk0,file=dbg",
            "-device", f"virtio-blk-pci,drive=disk0,serial={SERIAL}{device_options}"]


@pytest.mark.parametrize("engine", ENGINES)
def test_failed_read_is_reported(engine: str, tmp_path: Path) -> None:
    require(engine)
    with GuestVM(engine, "blkio", tmp_path, *_failing_disk(tmp_path, "read_aio", 0)) as vm, vm.qmp() as qmp:
        assert qmp.command({"execute": "cont"}) == {"return": {}}
        error = qmp.wait_event("BLOCK_IO_ERROR")
        assert vm.wait() == (0x20 << 1) | 1
    assert error["data"] == {"device": "", "node-name": "disk0", "operation": "read", "action": "report",
                             "nospace": False, "reason": "Input/output error"}
    assert "read 0+8: 1 len 4097" in vm.output


@pytest.mark.parametrize("engine", ENGINES)
def test_werror_stop_pauses_and_cont_retries(engine: str, tmp_path: Path) -> None:
    require(engine)
    args = _failing_disk(tmp_path, "write_aio", 64, ",werror=stop")
    with GuestVM(engine, "blkio", tmp_path, *args) as vm, vm.qmp() as qmp:
        assert qmp.command({"execute": "cont"}) == {"return": {}}
        first = qmp.wait_event("BLOCK_IO_ERROR")
        qmp.wait_event("STOP")
        assert qmp.command({"execute": "query-status"})["return"]["status"] == "io-error"
        assert qmp.command({"execute": "query-block"})["return"][0]["io-status"] == "failed"
        # The write is tried again on cont, fails again and stops the VM again.
        assert qmp.command({"execute": "cont"}) == {"return": {}}
        qmp.wait_event("RESUME")
        second = qmp.wait_event("BLOCK_IO_ERROR")
        qmp.wait_event("STOP")
        assert qmp.command({"execute": "query-status"})["return"]["status"] == "io-error"
    assert first["data"] == second["data"] == {
        "device": "", "node-name": "disk0", "operation": "write", "action": "stop", "nospace": False,
        "reason": "Input/output error"}
    assert "write 64+8" not in vm.output and "read 0+8: 0 len 4097" in vm.output


@pytest.mark.parametrize("engine", ENGINES)
def test_drive_cache_mode_reaches_the_guest(engine: str, tmp_path: Path) -> None:
    require(engine)
    image = prepared_image(tmp_path / "disk.raw", "raw")
    args = ["-m", "16", "-drive", f"file={image},format=raw,if=none,id=d0,cache=writethrough",
            "-device", f"virtio-blk-pci,drive=d0,serial={SERIAL}"]
    output, code = run_to_exit(engine, "blkio", tmp_path, *args)
    # Writethrough: no volatile cache for the guest (wce 0); FLUSH is still
    # offered, as QEMU does while config-wce lets the guest turn the cache on.
    assert (output, code) == (expected(engine).replace("\nwce 1 ", "\nwce 0 "), (0x20 << 1) | 1)
    qio(image, "read -P 0x5a 32k 4k")
