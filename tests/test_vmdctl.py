"""``vmdctl`` against a running vmd laid out as vmd@.service does, and QEMU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import QEMU, VmdProcess, running_qemu, start_vmd, wait_for_screen, wait_gone

VMDCTL = Path(sys.executable).with_name("vmdctl")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[tuple[Path, VmdProcess]]:
    """RUNTIME/web1 with qmp.sock, vmd.pid and a console (an HMP monitor here)."""
    runtime = tmp_path / "run"
    web1 = runtime / "web1"
    web1.mkdir(parents=True)
    vmd = start_vmd(web1, "-name", "web1", "-qmp", f"unix:{web1 / 'qmp.sock'},server=on,wait=off",
                    "-pidfile", str(web1 / "vmd.pid"),
                    "-chardev", f"socket,id=console,path={web1 / 'console.sock'},server=on,wait=off",
                    "-mon", "chardev=console,mode=readline", "-chardev", "ringbuf,id=ring", qmp=False)
    try:
        yield runtime, vmd
    finally:
        if vmd.process.poll() is None:
            vmd.process.kill()
        vmd.process.wait()


def vmdctl(runtime: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VMDCTL), "--runtime-dir", str(runtime), *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_list_and_status(runtime: tuple[Path, VmdProcess]) -> None:
    directory, vmd = runtime
    (directory / "gone").mkdir()
    (directory / "gone" / "qmp.sock").touch()  # left behind; nobody holds a pid file lock
    listing = vmdctl(directory, "list")
    assert listing.returncode == 0
    assert listing.stdout.split("\n")[1:3] == [
        "gone        -  not running",
        f"web1  {vmd.process.pid:>7}  running"]
    status = vmdctl(directory, "status", "web1")
    assert status.stdout.splitlines()[:3] == ["name:    web1", "status:  running", f"pid:     {vmd.process.pid}"]
    failed = vmdctl(directory, "status", "gone")
    assert failed.returncode == 1
    assert failed.stderr == f"vmdctl: cannot connect to {directory}/gone/qmp.sock: Connection refused\n"


def test_console_attach(runtime: tuple[Path, VmdProcess]) -> None:
    directory, _ = runtime
    result = vmdctl(directory, "console", "web1", stdin="info status\n")
    assert result.returncode == 0, result.stderr
    assert "VM status: running" in result.stdout
    refused = vmdctl(directory, "console", "web1", "--chardev", "ring")
    assert refused.returncode == 1
    assert refused.stderr == "vmdctl: chardev 'ring' (ringbuf) cannot be attached: use a Unix server socket or a pty\n"
    assert "no chardev 'nosuch'" in vmdctl(directory, "console", "web1", "--chardev", "nosuch").stderr


def test_stop_powers_down_then_quits(runtime: tuple[Path, VmdProcess]) -> None:
    directory, vmd = runtime
    result = vmdctl(directory, "stop", "web1", "--timeout", "0.2")
    assert result.returncode == 0
    assert result.stderr == "vmdctl: web1 did not power down within 0.2 s; quitting\n"  # no guest here
    assert vmd.process.wait(10) == 0
    assert not (directory / "web1" / "vmd.pid").exists()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_console_on_a_terminal_detaches_with_ctrl_bracket(runtime: tuple[Path, VmdProcess]) -> None:
    directory, _ = runtime
    session = f"vmdctl-test-{uuid.uuid4().hex[:8]}"
    done = directory / "detached"
    command = f"{VMDCTL} --runtime-dir {directory} console web1; echo exit=$? > {done}; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", "sh", "-c", command],
                   check=True)
    try:
        wait_for_screen(session, "(qemu)")
        subprocess.run(["tmux", "send-keys", "-t", session, "info status", "Enter"], check=True)
        wait_for_screen(session, "VM status: running")
        subprocess.run(["tmux", "send-keys", "-t", session, "C-]"], check=True)
        deadline = time.monotonic() + 15
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the shell writes the file when vmdctl has exited
        assert done.read_text() == "exit=0\n"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_status_and_stop_work_with_qemu(tmp_path: Path) -> None:
    with running_qemu(tmp_path, "-name", "q1") as qmp:
        pid = int((tmp_path / "qemu.pid").read_text())
        status = vmdctl(tmp_path, "status", str(qmp))
        assert status.stdout.splitlines()[:2] == ["name:    q1", "status:  running"]
        assert vmdctl(tmp_path, "stop", str(qmp), "-t", "0").returncode == 0
        wait_gone(pid)


def test_errors_are_one_line(tmp_path: Path) -> None:
    result = vmdctl(tmp_path, "stop", str(tmp_path / "nothing.sock"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []
