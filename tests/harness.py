"""Starting vmd and QEMU for tests and benchmarks, and talking raw QMP.

vmd is started with ``$NOTIFY_SOCKET`` pointing at a datagram socket of the
harness, and is ready when it sends ``READY=1`` (sd_notify), so no test
sleeps to wait for it. QEMU has no such signal; it is started with
``-daemonize``, whose parent exits only once the monitors are listening.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import pytest

ROOT = Path(__file__).resolve().parent.parent
QEMU = shutil.which("qemu-system-x86_64")
START_TIMEOUT = 20.0


def vmd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmd", *args]


class VmdProcess:
    """A running vmd; ``qmp_path`` is its QMP socket."""

    def __init__(self, process: subprocess.Popen[bytes], qmp_path: Path
                 ) -> None:
        self.process = process
        self.qmp_path = qmp_path

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_vmd(tmp_path: Path, *extra: str, qmp: bool = True,
              env: dict[str, str] | None = None, stderr: Any = None,
              pass_fds: tuple[int, ...] = ()) -> VmdProcess:
    """Start vmd with a QMP socket in ``tmp_path``; wait until READY=1.

    ``stderr`` is passed to ``subprocess.Popen`` (a file to check for tracebacks).
    """
    qmp_path = tmp_path / "vmd-qmp.sock"
    args = [f"unix:{qmp_path},server=on,wait=off"] if qmp else []
    argv = vmd_command(*(["-qmp", *args] if qmp else []), *extra)
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(0.2)
        process_env = dict(os.environ if env is None else env)
        process_env["NOTIFY_SOCKET"] = str(notify_path)
        process_env.setdefault("PYTHONPATH", str(ROOT))
        process = subprocess.Popen(argv, env=process_env, stderr=stderr, pass_fds=pass_fds)
        try:
            wait_ready(notify, process)
        except BaseException:
            process.kill()
            process.wait()
            raise
    return VmdProcess(process, qmp_path)


def wait_ready(notify: socket.socket, process: subprocess.Popen[bytes], name: str = "vmd",
               timeout: float = START_TIMEOUT) -> None:
    """Wait for READY=1 (sd_notify), noticing at once if ``process`` exits instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if b"READY=1" in notify.recv(4096).split(b"\n"):
                return
        except TimeoutError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}")
    raise RuntimeError(f"{name} did not become ready")


@contextmanager
def running_vmd(tmp_path: Path, *extra: str) -> Iterator[VmdProcess]:
    vmd = start_vmd(tmp_path, *extra)
    try:
        yield vmd
    finally:
        if vmd.process.poll() is None:
            vmd.process.kill()
            vmd.process.wait()


@contextmanager
def running_qemu(tmp_path: Path, *extra: str) -> Iterator[Path]:
    """QEMU ``-M none`` with a QMP socket; yields the socket path."""
    assert QEMU is not None
    qmp_path = tmp_path / "qemu-qmp.sock"
    pidfile = tmp_path / "qemu.pid"
    subprocess.run(
        [QEMU, "-M", "none", "-nodefaults", "-display", "none",
         "-qmp", f"unix:{qmp_path},server=on,wait=off", "-daemonize",
         "-pidfile", str(pidfile), *extra],
        check=True, timeout=START_TIMEOUT)
    pid = int(pidfile.read_text())
    try:
        yield qmp_path
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0,
               process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``condition`` until it holds; fail the test at ``timeout`` or
    when ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"process exited ({process.returncode}) before {what}: {stderr}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class RawQMP:
    """A raw socket to a QMP server: bytes in, parsed lines out."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._reader = self.sock.makefile("rb")
        self.greeting = self.read()

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def read_line(self) -> bytes:
        line = self._reader.readline()
        if not line:
            raise EOFError("QMP server closed the connection")
        return line

    def read(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.read_line())
        return value

    def read_reply(self) -> dict[str, Any]:
        """The next message that is not an event."""
        while True:
            message = self.read()
            if "event" not in message:
                return message

    def command(self, request: dict[str, Any] | bytes | str
                ) -> dict[str, Any]:
        self.send(request if isinstance(request, (bytes, str))
                  else json.dumps(request))
        return self.read_reply()

    def negotiate(self) -> None:
        reply = self.command({"execute": "qmp_capabilities"})
        if reply == self.greeting:
            # QEMU 7.2 sometimes greets twice a client that connects right
            # after another one left (seen in loaded runs); vmd's greeting is
            # checked on its own in test_qmp_server.
            reply = self.read_reply()
        assert reply == {"return": {}}, reply


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until process ``pid`` (not our child) has exited; else kill it and fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"process {pid} did not exit")


async def until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    """Wait on the running loop until ``condition()`` holds, or fail.

    For state that changes inside the event loop under test (a front end's
    counters, a transport's buffer), which has no event of its own to await.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


def wait_for_screen(session: str, text: str, timeout: float = 15.0) -> None:
    """Wait until the tmux pane shows ``text`` (the terminal is the event)."""
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                capture_output=True, text=True).stdout
        if text in screen:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared on screen:\n{screen}")
