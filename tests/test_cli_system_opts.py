"""The options libvirt puts on a domain's command line, and accelerators.

Errors vmd shares with QEMU are compared with QEMU 7.2's own output; the
forms vmd refuses on purpose (a boot order without firmware, a local-time
RTC) say why. What is honoured is checked on the running process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.harness import QEMU, RawQMP, running_vmd, start_vmd, vmd_command
from vmd.cli.errors import CliError
from vmd.cli.parser import parse_args
from vmd.system.accel import kvm_usable

LIBVIRT_ARGS = [
    "-name", "guest=vmdtest,debug-threads=on", "-S", "-no-user-config", "-nodefaults",
    "-uuid", "4dea22b3-1d52-d8f3-2516-782e98ab3fa0", "-display", "none",
    "-machine", "none,usb=off,dump-guest-core=off",
    "-overcommit", "mem-lock=off", "-rtc", "base=utc", "-no-shutdown", "-boot", "strict=on",
    "-audiodev", '{"id":"audio1","driver":"none"}',
    "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-msg", "timestamp=on",
]


def test_libvirts_domain_options_start_vmd(tmp_path: Path) -> None:
    """The -M none part of a libvirt command line, with its master key."""
    key = tmp_path / "master-key.aes"
    key.write_bytes(b"0" * 32)
    secret = json.dumps({"qom-type": "secret", "id": "masterKey0", "format": "raw", "file": str(key)})
    with running_vmd(tmp_path, *LIBVIRT_ARGS, "-object", secret) as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        assert qmp.command({"execute": "query-name"}) == {"return": {"name": "vmdtest"}}
        reply = qmp.command({"execute": "qom-get", "arguments": {"path": "/objects/masterKey0",
                                                                 "property": "type"}})
    assert reply == {"return": "secret"}


def test_machine_memory_backend_is_the_ram(tmp_path: Path) -> None:
    """libvirt's ``-machine memory-backend=pc.ram`` with its RAM object."""
    ram = json.dumps({"qom-type": "memory-backend-ram", "id": "pc.ram", "size": 64 << 20})
    with running_vmd(tmp_path, "-m", "64", "-object", ram, "-machine", "none,memory-backend=pc.ram") as vmd, \
            RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        link = qmp.command({"execute": "qom-get", "arguments": {"path": "/machine",
                                                                "property": "memory-backend"}})
        delete = qmp.command({"execute": "object-del", "arguments": {"id": "pc.ram"}})
    assert link == {"return": "/objects/pc.ram"}
    assert delete["error"]["desc"] == "object 'pc.ram' is in use, can not be deleted"
    result = subprocess.run(vmd_command("-m", "32", "-object", ram, "-machine", "none,memory-backend=pc.ram"),
                            capture_output=True, text=True, timeout=20, check=False,
                            env={"PYTHONPATH": str(Path(__file__).parent.parent)})
    assert result.stderr.strip() == "vmd: Machine memory size does not match the size of the memory backend"


def vmd_error(*args: str) -> str:
    try:
        parse_args(list(args))
    except CliError as error:
        return str(error)
    raise AssertionError(f"{args} was accepted")


def qemu_error(*args: str) -> str:
    assert QEMU is not None
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([QEMU, "-M", "none", "-display", "none", "-nodefaults", *args, "-S",
                                 "-daemonize", "-pidfile", f"{tmp}/pid"],
                                capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode != 0
    return result.stderr.strip().replace("qemu-system-x86_64:", "vmd:", 1)


def test_libvirts_domain_options_are_accepted() -> None:
    config = parse_args(LIBVIRT_ARGS)
    assert not isinstance(config, type(None))
    assert config.uuid == "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"  # type: ignore[union-attr]
    assert config.no_new_privs and config.msg_timestamp  # type: ignore[union-attr]
    assert not config.mem_lock  # type: ignore[union-attr]


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("args", [
    ("-uuid", "xyz"),
    ("-rtc", "base=utc,foo=1"),
    ("-overcommit", "mem-lock=maybe"),
    ("-overcommit", "foo=on"),
    ("-msg", "timestamp=maybe"),
    ("-sandbox", "on,foo=bar"),
    ("-add-fd", "fd=99,set=1"),
    ("-add-fd", "set=1"),
    ("-add-fd", "fd=1,set=1"),
    ("-machine", "none,foo=1"),
    ("-machine", "none,usb=maybe"),
])
def test_errors_are_qemus(args: tuple[str, ...]) -> None:
    assert vmd_error(*args) == qemu_error(*args)


@pytest.mark.parametrize("args, reason", [
    (("-rtc", "base=localtime"), "base=utc only"),
    (("-rtc", "clock=vm"), "clock=host only"),
    (("-boot", "order=c"), "no firmware"),
    (("-boot", "menu=on"), "no firmware"),
    (("-overcommit", "cpu-pm=on"), "cpu-pm=on is not supported"),
    (("-audiodev", "driver=pa,id=a"), "no sound device"),
    (("-machine", "none,usb=on"), "no USB"),
    (("-machine", "none,graphics=on"), "no graphics"),
])
def test_what_vmd_cannot_do_is_refused(args: tuple[str, ...], reason: str) -> None:
    assert reason in vmd_error(*args)


def test_add_fd_joins_an_fd_set(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as file:
        config = parse_args(["-add-fd", f"fd={file.fileno()},set=2,opaque=disk"])
        entry = config.fdsets[0]  # type: ignore[union-attr]
        assert (entry.fdset, entry.fd, entry.opaque) == (2, file.fileno(), "disk")


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_sandbox_and_mem_lock_are_honoured(tmp_path: Path) -> None:
    with running_vmd(tmp_path, "-sandbox", "on,elevateprivileges=deny",
                     "-overcommit", "mem-lock=on") as vmd:
        status = _status(vmd.process.pid)
    assert status["NoNewPrivs"].strip() == "1"
    assert int(status["VmLck"].split()[0]) > 0


def test_msg_timestamp_prefixes_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with running_vmd(tmp_path, "-msg", "timestamp=on", "-D", str(log)) as vmd:
        with RawQMP(vmd.qmp_path) as qmp:
            qmp.negotiate()
        assert vmd.stop() == 0
    first = log.read_text().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z vmd: info: ", first), first


@pytest.mark.parametrize("accel, enabled", [("kvm:tcg", kvm_usable()), ("tcg", False), ("kvm", True)])
def test_machine_none_takes_the_first_accelerator_that_works(tmp_path: Path, accel: str,
                                                             enabled: bool) -> None:
    if accel == "kvm" and not kvm_usable():
        pytest.skip("/dev/kvm is not usable")
    with running_vmd(tmp_path, "-machine", f"none,accel={accel}") as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        reply = qmp.command({"execute": "query-kvm"})
        machines = qmp.command({"execute": "query-machines"})["return"]
    assert reply == {"return": {"enabled": enabled, "present": True}}
    if not enabled:
        assert [m["name"] for m in machines] == ["none"]


def test_unknown_accelerator_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(vmd_command("-machine", "none,accel=foo"), capture_output=True,
                            text=True, timeout=20, check=False,
                            env={"PYTHONPATH": str(Path(__file__).parent.parent)})
    assert result.returncode == 1
    assert result.stderr.strip() == "vmd: invalid accelerator foo"


def test_help_lists_the_options() -> None:
    text = parse_args(["-help"]).text  # type: ignore[union-attr]
    for option in ("-uuid", "-rtc", "-boot", "-overcommit", "-msg", "-sandbox", "-add-fd",
                   "-no-user-config"):
        assert f"\n{option}" in text, option
    assert json.dumps(text)


def test_fd_sets_open_by_access_mode(tmp_path: Path) -> None:
    """/dev/fdset/N gives a duplicate of the set's fd with the asked mode."""
    log, disk = tmp_path / "monitor.log", tmp_path / "disk.raw"
    disk.write_bytes(bytes(65536))
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
    disk_fd = os.open(disk, os.O_RDWR)
    try:
        vmd = start_vmd(tmp_path, "-add-fd", f"fd={log_fd},set=3", "-add-fd", f"fd={disk_fd},set=4",
                        "-chardev", "file,id=f0,path=/dev/fdset/3", "-mon", "chardev=f0",
                        "-blockdev", "driver=file,node-name=d0,filename=/dev/fdset/4",
                        pass_fds=(log_fd, disk_fd))
    finally:
        os.close(log_fd)
        os.close(disk_fd)
    try:
        with RawQMP(vmd.qmp_path) as qmp:
            qmp.negotiate()
            nodes = qmp.command({"execute": "query-named-block-nodes"})["return"]
            wrong_mode = qmp.command({"execute": "blockdev-add", "arguments": {
                "driver": "file", "node-name": "d1", "filename": "/dev/fdset/3"}})
            no_set = qmp.command({"execute": "blockdev-add", "arguments": {
                "driver": "file", "node-name": "d2", "filename": "/dev/fdset/9"}})
    finally:
        vmd.stop()
    assert [node["node-name"] for node in nodes] == ["d0"]
    assert nodes[0]["image"]["virtual-size"] == 65536
    assert wrong_mode["error"]["desc"] == "Could not open '/dev/fdset/3': Permission denied"
    assert no_set["error"]["desc"] == "Could not open '/dev/fdset/9': No such file or directory"
    assert "monitor - type 'help' for more information" in log.read_text()


def _dumped_mapping_flags(pid: int, size_kib: int) -> list[str]:
    """VmFlags of the anonymous mappings of ``size_kib`` (the guest RAM)."""
    flags, size = [], None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("VmFlags:") and size == size_kib:
            flags.append(line.split(":", 1)[1])
    return flags


@pytest.mark.kvm
@pytest.mark.parametrize("dump", ["on", "off"])
def test_dump_guest_core_off_keeps_ram_out_of_core_files(tmp_path: Path, dump: str) -> None:
    if not kvm_usable():
        pytest.skip("/dev/kvm is not usable")
    with running_vmd(tmp_path, "-S", "-m", "48", "-machine", f"pc,dump-guest-core={dump}") as vmd:
        flags = _dumped_mapping_flags(vmd.process.pid, 48 << 10)
    assert len(flags) == 1
    assert (" dd" in flags[0]) == (dump == "off")
