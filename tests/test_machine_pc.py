"""The pc machine end to end: vmd boots guests on KVM, driven over QMP.

The demo guest (built with the system gcc) serves commands on COM1, which
the tests reach through a socket chardev; tiny guests made here from bytes
(multiboot images with the address fields) cover exits that need no C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.harness import RawQMP, running_vmd, vmd_command
from vmd.machine import demo
from vmd.machine.boot import multiboot

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm is absent")]

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def demo_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    return demo.build(tmp_path_factory.mktemp("guest") / "demo.elf")


def tiny_guest(path: Path, code: bytes) -> Path:
    """A multiboot image (address fields) whose 32-bit ``code`` runs at 0x100020."""
    flags = 0x00010003
    header = struct.pack("<3I5I", multiboot.HEADER_MAGIC, flags, -(multiboot.HEADER_MAGIC + flags) & 0xFFFFFFFF,
                         0x100000, 0x100000, 0, 0, 0x100020)
    path.write_bytes(header.ljust(0x20, b"\0") + code)
    return path


class Console:
    """The guest's serial port, through a socket chardev."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(TIMEOUT)
        self.seen = b""

    def expect(self, text: str) -> None:
        marker = text.encode()
        deadline = time.monotonic() + TIMEOUT
        while marker not in self.seen:
            assert time.monotonic() < deadline, f"no {text!r} in {self.seen!r}"
            data = self.sock.recv(4096)
            assert data, f"console closed before {text!r}: {self.seen!r}"
            self.seen += data
        self.seen = self.seen[self.seen.index(marker) + len(marker):]

    def type(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r")


class Guest:
    """A running vmd with a guest: QMP client, console and the process."""

    def __init__(self, qmp: RawQMP, console: Console | None, process: subprocess.Popen[bytes]) -> None:
        self.qmp = qmp
        self.console = console
        self.process = process
        self.events: list[dict[str, Any]] = []

    def execute(self, name: str, **arguments: Any) -> dict[str, Any]:
        """The reply; events that come first are kept for ``event``."""
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self.qmp.send(json.dumps(request))
        while "event" in (message := self.qmp.read()):
            self.events.append(message)
        return message

    def command(self, name: str, **arguments: Any) -> Any:
        reply = self.execute(name, **arguments)
        assert "return" in reply, reply
        return reply["return"]

    def hmp(self, line: str) -> str:
        result: str = self.command("human-monitor-command", **{"command-line": line})
        return result

    def wait_console_connected(self) -> None:
        """Until vmd has accepted the console (output before that is dropped, as in QEMU)."""
        deadline = time.monotonic() + TIMEOUT
        while not any(chardev["label"] in ("con", "con-base") and chardev["filename"].startswith("unix:")
                      for chardev in self.command("query-chardev")):
            assert time.monotonic() < deadline, "vmd did not accept the console connection"
            time.sleep(0.01)

    def event(self, name: str) -> dict[str, Any]:
        while self.events:
            message = self.events.pop(0)
            if message["event"] == name:
                return message
        while True:
            message = self.qmp.read()
            if message.get("event") == name:
                return message


@contextmanager
def booted(tmp_path: Path, kernel: Path, *extra: str, console: bool = True, start: bool = True,
           monitor_on_console: bool = False) -> Iterator[Guest]:
    """vmd with ``kernel``, started with -S so the console is connected before the guest prints.

    ``monitor_on_console`` muxes a readline monitor onto the console (``mon:``-style).
    """
    socket_path = tmp_path / "console.sock"
    mux = ",mux=on" if monitor_on_console else ""
    chardev = ["-chardev", f"socket,id=con,path={socket_path},server=on,wait=off{mux}", "-serial", "chardev:con"]
    if monitor_on_console:
        chardev += ["-mon", "chardev=con,mode=readline"]
    args = ["-M", "pc", "-accel", "kvm", "-m", "32", "-kernel", str(kernel), "-S",
            *(chardev if console else []), *extra]
    with running_vmd(tmp_path, *args) as vmd:
        with RawQMP(vmd.qmp_path, timeout=TIMEOUT) as qmp:
            qmp.negotiate()
            guest = Guest(qmp, Console(socket_path) if console else None, vmd.process)
            if console:
                guest.wait_console_connected()
            if start:
                guest.command("cont")
                guest.event("RESUME")
            yield guest


def test_demo_guest_boots_with_qemus_multiboot_info(tmp_path: Path, demo_guest: Path) -> None:
    with booted(tmp_path, demo_guest, "-append", "hello world") as guest:
        assert guest.console is not None
        guest.console.expect("vmd demo guest: hello from a virtual machine")
        guest.console.expect(f"cmdline: {demo_guest} hello world")
        guest.console.expect("demo> ")
        guest.console.type("mem")
        guest.console.expect("mem_lower=639 KiB mem_upper=31616 KiB")
        guest.console.expect("mmap 0000000000100000 0000000001ee0000 1")
        assert guest.command("query-status") == {"running": True, "singlestep": False, "status": "running"}
        assert guest.command("query-kvm") == {"enabled": True, "present": True}


def test_guest_console_and_monitor_share_a_mux(tmp_path: Path, demo_guest: Path) -> None:
    """The UART attaches beside a monitor on a mux and takes the focus; Ctrl-A c reaches the monitor."""
    with booted(tmp_path, demo_guest, monitor_on_console=True) as guest:
        assert guest.console is not None
        guest.console.expect("demo> ")
        guest.console.type("mem")
        guest.console.expect("mem_lower=639 KiB")
        guest.console.sock.sendall(b"\x01c")
        guest.console.type("info status")
        guest.console.expect("VM status: running")


def test_stop_and_cont_pause_the_guest(tmp_path: Path, demo_guest: Path) -> None:
    with booted(tmp_path, demo_guest) as guest:
        assert guest.console is not None
        guest.console.expect("demo> ")
        guest.command("stop")
        guest.event("STOP")
        assert guest.command("query-status")["status"] == "paused"
        guest.console.type("help")          # waits in the UART until the guest runs
        registers = guest.hmp("info registers")
        assert registers.startswith("\r\nCPU#0\r\nEAX=") and "CS =0008 00000000 ffffffff 00c09b00 DPL=0 CS32 [-RA]" \
            in registers
        guest.command("cont")
        guest.event("RESUME")
        guest.console.expect("commands: help")
        assert guest.command("query-status")["status"] == "running"


def test_system_powerdown_reaches_the_guest(tmp_path: Path, demo_guest: Path) -> None:
    with booted(tmp_path, demo_guest) as guest:
        assert guest.console is not None
        guest.console.expect("demo> ")
        guest.command("system_powerdown")
        guest.event("POWERDOWN")
        guest.console.expect("power button pressed")
        assert guest.event("SHUTDOWN")["data"] == {"guest": True, "reason": "guest-shutdown"}
        assert guest.process.wait(TIMEOUT) == 0


def test_no_shutdown_then_system_reset_boots_again(tmp_path: Path, demo_guest: Path) -> None:
    with booted(tmp_path, demo_guest, "-no-shutdown") as guest:
        assert guest.console is not None
        guest.console.expect("demo> ")
        guest.console.type("poweroff")
        assert guest.event("SHUTDOWN")["data"] == {"guest": True, "reason": "guest-shutdown"}
        guest.event("STOP")
        assert guest.command("query-status")["status"] == "shutdown"
        reply = guest.execute("cont")
        assert reply["error"]["desc"] == "Resetting the Virtual Machine is required"
        guest.command("system_reset")
        assert guest.event("RESET")["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        assert guest.command("query-status")["status"] == "prelaunch"
        guest.command("cont")
        guest.console.expect("vmd demo guest")


def test_guest_reboot_resets_the_machine(tmp_path: Path, demo_guest: Path) -> None:
    with booted(tmp_path, demo_guest) as guest:
        assert guest.console is not None
        guest.console.expect("demo> ")
        guest.console.type("reboot")
        assert guest.event("RESET")["data"] == {"guest": True, "reason": "guest-reset"}
        guest.console.expect("vmd demo guest")
        assert guest.command("query-status")["status"] == "running"


def test_no_reboot_turns_a_reset_into_shutdown(tmp_path: Path, demo_guest: Path) -> None:
    with booted(tmp_path, demo_guest, "-no-reboot") as guest:
        assert guest.console is not None
        guest.console.expect("demo> ")
        guest.console.type("reboot")
        assert guest.event("SHUTDOWN")["data"] == {"guest": True, "reason": "guest-reset"}
        assert guest.process.wait(TIMEOUT) == 0


def test_emulation_failure_is_an_internal_error_and_qmp_goes_on(tmp_path: Path) -> None:
    # mov eax, 0xfeb00000; jmp eax: instructions fetched from where nothing is mapped.
    kernel = tiny_guest(tmp_path / "bad.bin", bytes.fromhex("b80000b0fe" "ffe0"))
    with booted(tmp_path, kernel, console=False) as guest:
        guest.event("STOP")
        assert guest.command("query-status") == {"running": False, "singlestep": False, "status": "internal-error"}
        assert "EIP=" in guest.hmp("info registers")
        reply = guest.execute("cont")
        assert reply["error"]["desc"] == "Resetting the Virtual Machine is required"


def test_isa_debug_exit_status(tmp_path: Path) -> None:
    kernel = tiny_guest(tmp_path / "exit.bin", bytes.fromhex("b021" "e6f4" "f4"))  # mov al, 0x21; out 0xf4, al
    with booted(tmp_path, kernel, "-device", "isa-debug-exit,iobase=0xf4,iosize=4", console=False) as guest:
        assert guest.process.wait(TIMEOUT) == (0x21 << 1) | 1


def test_smp_cpus_and_monitor_trees(tmp_path: Path) -> None:
    kernel = tiny_guest(tmp_path / "halt.bin", bytes.fromhex("f4ebfd"))
    with booted(tmp_path, kernel, "-smp", "2", start=False) as guest:
        assert guest.command("query-status")["status"] == "prelaunch"
        cpus = guest.command("query-cpus-fast")
        assert [cpu["cpu-index"] for cpu in cpus] == [0, 1]
        assert [cpu["props"] for cpu in cpus] == [{"socket-id": 0, "core-id": 0, "thread-id": 0},
                                                  {"socket-id": 0, "core-id": 1, "thread-id": 0}]
        assert len({cpu["thread-id"] for cpu in cpus}) == 2 and all(cpu["target"] == "x86_64" for cpu in cpus)
        assert guest.hmp("info cpus") == (f"* CPU #0: thread_id={cpus[0]['thread-id']}\r\n"
                                          f"  CPU #1: thread_id={cpus[1]['thread-id']}\r\n")
        mtree = guest.hmp("info mtree").replace("\r\n", "\n")
        assert ("    0000000000000000-0000000001ffffff (prio 0, ram): alias ram-below-4g @pc.ram "
                "0000000000000000-0000000001ffffff\n") in mtree
        assert "  0000000000000000-000000000000ffff (prio 0, i/o): io\n" in mtree
        assert "    00000000000003f8-00000000000003ff (prio 0, i/o): serial\n" in mtree
        assert "memory-region: pc.ram\n  0000000000000000-0000000001ffffff (prio 0, ram): pc.ram\n" in mtree
        qtree = guest.hmp("info qtree").replace("\r\n", "\n")
        assert qtree.startswith("bus: main-system-bus\n  type System\n  dev: i440FX-pcihost, id \"\"\n"
                                "    bus: pci.0\n      type PCI\n")
        assert '      dev: PIIX3, id ""\n        addr = 01.0\n' in qtree
        assert '          dev: isa-serial, id ""\n' in qtree and '          dev: mc146818rtc, id ""\n' in qtree


def test_unwritable_kvm_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run vmd as a user without access to /dev/kvm")
    if os.stat("/dev/kvm").st_mode & 0o006:
        pytest.skip("/dev/kvm is writable by everyone here")
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             *vmd_command("-M", "pc", "-display", "none")],
                            capture_output=True, text=True, timeout=TIMEOUT, check=False,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 1
    assert result.stderr == ("vmd: Could not access KVM kernel module: Permission denied\n"
                             "failed to initialize kvm: Permission denied\n")


def test_sigterm_powers_the_guest_down(tmp_path: Path, demo_guest: Path) -> None:
    with booted(tmp_path, demo_guest) as guest:
        assert guest.console is not None
        guest.console.expect("demo> ")
        guest.process.send_signal(signal.SIGTERM)
        guest.event("POWERDOWN")
        guest.console.expect("power button pressed")
        assert guest.event("SHUTDOWN")["data"] == {"guest": True, "reason": "guest-shutdown"}
        assert guest.process.wait(TIMEOUT) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["-kernel", "/nonexistent/kernel"],
     "vmd: could not load kernel '/nonexistent/kernel': No such file or directory\n"),
    (["-smp", "4096"], "vmd: Number of SMP cpus requested (4096) exceeds the maximum cpus supported by KVM"),
    (["-cpu", "pentium9"], "vmd: unable to find CPU model 'pentium9'\n"),
    (["-m", "1P"], "vmd: cannot set up guest memory 'pc.ram': Cannot allocate memory\n"),
])
def test_machine_errors_exit_1_without_traceback(args: list[str], message: str) -> None:
    result = subprocess.run(vmd_command("-M", "pc", "-display", "none", *args), capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr
