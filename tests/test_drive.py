"""-drive, -accel help and qemu-io's report texts, the pieces QEMU's iotests
lean on (tests/test_iotests.py runs the iotests themselves)."""

import subprocess
import sys

import pytest

from tests.test_cli_parser import cfg, error
from vmd.cli import HelpRequest, parse_args
from vmd.hmp.qemu_io import cvtstr, report, timestr

QEMU = "qemu-system-x86_64"


def probe(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_accel_help_returns_at_once_with_qemus_heading() -> None:
    vmd = probe(sys.executable, "-m", "vmd", "-nodefaults", "-accel", "help")
    qemu = probe(QEMU, "-accel", "help")
    assert vmd.returncode == qemu.returncode == 0
    assert vmd.stdout.splitlines()[0] == qemu.stdout.splitlines()[0]
    assert set(vmd.stdout.splitlines()[1:]) == {"kvm", "tcg"}   # qtest is left out, as QEMU does


def test_machine_help_marks_the_default_as_qemu_does() -> None:
    vmd = probe(sys.executable, "-m", "vmd", "-machine", "help")
    qemu = probe(QEMU, "-machine", "help")
    defaults = [[line.split()[0] for line in out.stdout.splitlines() if line.endswith(" (default)")]
                for out in (vmd, qemu)]
    assert defaults == [["none"], ["pc-i440fx-7.2"]]   # vmd's default machine is none


def test_drive_format_help_is_read_as_the_iotests_read_it() -> None:
    vmd = probe(sys.executable, "-m", "vmd", "-accel", "qtest", "-drive", "format=help")
    qemu = probe(QEMU, "-drive", "format=help")
    assert vmd.returncode == qemu.returncode == 0
    lines = vmd.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [line.split(":")[0] for line in qemu.stdout.splitlines()]
    formats = lines[0].split(":")[1].split()
    assert {"qcow2", "raw", "file", "blkdebug"} <= set(formats) <= set(qemu.stdout.split())


def test_drive_ids_units_and_node_options() -> None:
    config = cfg("-drive", "if=none,file=a.qcow2", "-drive", "file=b,id=x,format=raw,readonly=on",
                 "-drive", "if=none,file=c,cache=none,backing.node-name=int,node-name=top")
    assert [drive.id for drive in config.drives] == ["none0", "x", "none2"]
    x, c = config.drives[1], config.drives[2]
    assert x.read_only and x.options == {"driver": "raw"}
    assert c.options == {"backing.node-name": "int", "node-name": "top",
                         "cache.direct": "on", "cache.no-flush": "off"}
    assert c.writeback


@pytest.mark.parametrize(("drive", "message"), [
    ("file=a,cache=bogus", "invalid cache option"),
    ("file=a,if=floppy", "vmd has no 'floppy' interface; use if=none with -device, or if=virtio"),
    ("file=a,if=usb", "unsupported bus type 'usb'"),
    ("file=a,format=raw,driver=raw", "Cannot specify both 'driver' and 'format'"),
    ("file=a,readonly=on,read-only=on", "'read-only' and its alias 'readonly' can't be used at the same time"),
    ("file=a,media=tape", "'tape' invalid media"),
])
def test_drive_errors_are_qemus(drive: str, message: str) -> None:
    assert error("-drive", drive) == f"vmd: -drive {drive}: {message}"


def test_drive_without_interface_on_a_pc_is_refused() -> None:
    assert "no default drive interface" in error("-M", "pc", "-drive", "file=a")


def test_drive_help_request() -> None:
    assert isinstance(parse_args(["-drive", "format=help"]), HelpRequest)


def test_qemu_io_numbers_as_qemu_io_prints_them() -> None:
    assert cvtstr(512) == "512 bytes"
    assert cvtstr(65536) == "64 KiB"
    assert cvtstr(1.5 * (1 << 20)) == "1.500 MiB"
    assert timestr(0.5) == "00.50 sec" and timestr(61.25) == "0:01:01.25"
    assert report("wrote", 0.5, 0, 1024, 1024, 1, False) == (
        "wrote 1024/1024 bytes at offset 0\n1 KiB, 1 ops; 00.50 sec (2 KiB/sec and 2.0000 ops/sec)\n")


def test_hmp_commit_copies_the_top_into_the_backing_file(tmp_path) -> None:
    from tests.harness import RawQMP, start_vmd
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 1 0 128k", str(base)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)],
                   check=True)
    subprocess.run(["qemu-io", "-c", "write -P 2 64k 64k", str(top)], check=True, capture_output=True)
    vmd = start_vmd(tmp_path, "-drive", f"if=none,id=disk,file={top},read-only=on")
    try:
        with RawQMP(vmd.qmp_path) as qmp:
            qmp.negotiate()
            def hmp(line: str) -> object:
                return qmp.command({"execute": "human-monitor-command", "arguments": {"command-line": line}})
            assert hmp("commit nosuch") == {"return": "Device 'nosuch' not found\r\n"}
            assert hmp("commit disk") == {"return": ""}
            assert qmp.command({"execute": "quit"}) == {"return": {}}
        assert vmd.process.wait(10) == 0
    finally:
        if vmd.process.poll() is None:
            vmd.process.kill()
    checked = subprocess.run(["qemu-io", "-c", "read -P 1 0 64k", "-c", "read -P 2 64k 64k", str(base)],
                             capture_output=True, text=True, check=True)
    assert "Pattern verification failed" not in checked.stdout, checked.stdout
    assert subprocess.run(["qemu-img", "check", "-q", str(base)], check=False).returncode == 0
