"""Running a test guest under QEMU or vmd with the same command line.

``GuestVM`` starts ``ENGINE -accel kvm -M pc -cpu qemu64 -nodefaults
-display none -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel GUEST
...`` with COM1 on a chardev the test chooses, and a QMP socket:

* ``socket``: the test listens and the emulator connects as a client, so
  no output is lost and input can be sent before the guest runs;
* ``file``: read after the process ends;
* ``stdio``: the process's standard output;
* ``pipe``: FIFOs ``serial.in``/``serial.out`` the test holds open;
* ``pty``: the guest starts paused (pass ``-S``), the test opens the pty
  that ``query-chardev`` names, then continues it.

The vmd engine is used only when ``vmd -M help`` lists ``pc``; until then
its tests skip with "vmd machine not available yet". QEMU spends most of
its time here in SeaBIOS (about 4-10 s a run on the software KVM), so
``qemu_reference`` keeps what QEMU printed for a guest that runs to its
exit on disk, keyed by the guest binary, the arguments and QEMU's
version: vmd's runs are compared with it, and QEMU reruns only when one
of those changes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any

import pytest

from tests.guests.build import GuestBuildError, build_guest, cache_dir
from tests.harness import RawQMP

QEMU = shutil.which("qemu-system-x86_64")
ENGINES = ("qemu", "vmd")
BASE_ARGS = ("-accel", "kvm", "-M", "pc", "-cpu", "qemu64", "-nodefaults", "-display", "none",
             "-device", "isa-debug-exit,iobase=0xf4,iosize=4")
TIMEOUT = 90.0


@functools.cache
def vmd_has_pc_machine() -> bool:
    result = subprocess.run([sys.executable, "-m", "vmd", "-M", "help"], capture_output=True,
                            text=True, check=False, timeout=60)
    return any(line.split()[:1] == ["pc"] for line in result.stdout.splitlines())


def engine_skip_reason(engine: str) -> str | None:
    """Why ``engine`` cannot run guests here, or None."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is absent"
    if shutil.which("gcc") is None:
        return "gcc is not installed (it builds the test guests)"
    if engine == "qemu" and QEMU is None:
        return "qemu-system-x86_64 is not installed"
    if engine == "vmd" and not vmd_has_pc_machine():
        return "vmd machine not available yet"
    return None


def require(engine: str) -> None:
    reason = engine_skip_reason(engine)
    if reason is not None:
        pytest.skip(reason)


def command(engine: str) -> list[str]:
    assert QEMU is not None or engine == "vmd"
    program = [QEMU] if engine == "qemu" else [sys.executable, "-m", "vmd"]
    return [*program, *BASE_ARGS]  # type: ignore[list-item]


class EventQMP(RawQMP):
    """A QMP client that keeps the events arriving before a command's reply."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(path, timeout)
        self.events: list[dict[str, Any]] = []

    def read_reply(self) -> dict[str, Any]:
        while True:
            message = self.read()
            if "event" not in message:
                return message
            self.events.append(message)

    def wait_event(self, name: str) -> dict[str, Any]:
        """The first event ``name`` not waited for before, reading as needed."""
        while True:
            for index, event in enumerate(self.events):
                if event["event"] == name:
                    return self.events.pop(index)
            self.events.append(self.read())

    def wait_event_where(self, match: Any) -> dict[str, Any]:
        """The first event ``match`` accepts, reading as needed; it stays in ``events``."""
        seen = 0
        while True:
            for event in self.events[seen:]:
                if match(event):
                    return event
            seen = len(self.events)
            self.events.append(self.read())


class GuestVM:
    """One emulator process running one guest (a context manager)."""

    def __init__(self, engine: str, guest: str, tmp_path: Path, *args: str,
                 serial: str = "socket", early_input: bytes = b"") -> None:
        require(engine)
        try:
            elf = build_guest(guest)
        except GuestBuildError as error:
            pytest.fail(f"building guest {guest}: {error}")
        self.tmp = tmp_path / engine
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.qmp_path = self.tmp / "qmp.sock"
        self._output = bytearray()
        self._changed = threading.Condition()
        self._conn: socket.socket | None = None
        self._eof = False
        self._pipe_hold: int | None = None
        serial_args, listener = self._serial_args(serial)
        argv = [*command(engine), "-kernel", str(elf), *args, *serial_args,
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        stdout = subprocess.PIPE if serial == "stdio" else subprocess.DEVNULL
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                        stderr=subprocess.PIPE)
        self._serial_kind = serial
        if listener is not None:
            listener.settimeout(TIMEOUT)
            self._conn, _ = listener.accept()
            listener.close()
            if early_input:
                self._conn.sendall(early_input)
            self._start_reader(self._conn.recv)
        elif serial == "stdio":
            assert self.process.stdout is not None
            self._start_reader(self.process.stdout.read1)  # type: ignore[attr-defined]
        elif serial == "pipe":
            self._start_reader(functools.partial(os.read, self._pipe_out))
        elif serial == "pty":
            self._open_pty()

    def _serial_args(self, serial: str) -> tuple[list[str], socket.socket | None]:
        chardev = {"stdio": "stdio,id=s0", "pty": "pty,id=s0",
                   "file": f"file,id=s0,path={self.tmp / 'serial.out'}",
                   "pipe": f"pipe,id=s0,path={self.tmp / 'serial'}"}
        listener = None
        if serial == "socket":
            path = self.tmp / "serial.sock"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(1)
            chardev["socket"] = f"socket,id=s0,path={path}"
        elif serial == "pipe":
            self._open_pipes()
        return ["-chardev", chardev[serial], "-serial", "chardev:s0"], listener

    def _open_pipes(self) -> None:
        """FIFOs serial.in and serial.out, opened so the emulator's opens do not block."""
        for suffix in ("in", "out"):
            os.mkfifo(self.tmp / f"serial.{suffix}")
        self._pipe_in = os.open(self.tmp / "serial.in", os.O_RDWR)
        self._pipe_out = os.open(self.tmp / "serial.out", os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(self._pipe_out, True)
        # A writer of our own until the emulator exits: without one, reads
        # see end-of-file before the emulator has opened its end.
        self._pipe_hold = os.open(self.tmp / "serial.out", os.O_WRONLY)

    def _open_pty(self) -> None:
        """With -S: find the pty QMP reports, open it raw, then let the guest run."""
        with self.qmp() as qmp:
            chardevs = qmp.command({"execute": "query-chardev"})["return"]
            filename = next(c["filename"] for c in chardevs if c["label"] == "s0")
            fd = os.open(filename.removeprefix("pty:"), os.O_RDWR | os.O_NOCTTY)
            tty.setraw(fd)
            self._start_reader(functools.partial(os.read, fd))
            assert qmp.command({"execute": "cont"}) == {"return": {}}

    def _start_reader(self, read: Any) -> None:
        def pump() -> None:
            while True:
                try:
                    data = read(4096)
                except OSError:
                    data = b""
                with self._changed:
                    if not data:
                        self._eof = True
                        self._changed.notify_all()
                        return
                    self._output += data
                    self._changed.notify_all()
        threading.Thread(target=pump, daemon=True).start()

    @property
    def output(self) -> str:
        if self._serial_kind == "file":
            path = self.tmp / "serial.out"
            return path.read_text() if path.exists() else ""
        with self._changed:
            return self._output.decode(errors="replace")

    def wait_for_output(self, text: str, timeout: float = TIMEOUT) -> None:
        """Block until the serial output contains ``text``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while text not in self._output.decode(errors="replace"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {text!r} in {self._output!r}")
                self._changed.wait(left)

    def send(self, data: bytes) -> None:
        assert self._conn is not None
        self._conn.sendall(data)

    def qmp(self) -> EventQMP:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                client = EventQMP(self.qmp_path, timeout=TIMEOUT)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError("no QMP socket") from None
                time.sleep(0.05)  # the socket appears while the emulator starts
        client.negotiate()
        return client

    def wait(self, timeout: float = TIMEOUT) -> int:
        """The exit status; the output is complete afterwards."""
        status = self.process.wait(timeout)
        self._release_pipe()
        if self._serial_kind != "file":
            with self._changed:
                self._changed.wait_for(lambda: self._eof, TIMEOUT)
        return status

    @property
    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace") if self.process.poll() is not None else ""

    def _release_pipe(self) -> None:
        if self._pipe_hold is not None:
            os.close(self._pipe_hold)
            self._pipe_hold = None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._release_pipe()
        if self._conn is not None:
            self._conn.close()
        if self.process.stderr is not None:
            self.process.stderr.close()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> GuestVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _qemu_version() -> str:
    assert QEMU is not None
    return subprocess.run([QEMU, "--version"], capture_output=True, text=True,
                          check=False).stdout.splitlines()[0]


def run_to_exit(engine: str, guest: str, tmp_path: Path, *args: str,
                serial: str = "socket") -> tuple[str, int]:
    """Run ``guest`` until it exits: (serial output, exit status)."""
    with GuestVM(engine, guest, tmp_path, *args, serial=serial) as vm:
        code = vm.wait()
        return vm.output, code


def qemu_reference(guest: str, tmp_path: Path, *args: str) -> tuple[str, int]:
    """What QEMU prints and exits with for ``guest`` and ``args`` (memoized)."""
    output, code = memoized_qemu(guest, [guest, args],
                                 lambda: run_to_exit("qemu", guest, tmp_path / "reference", *args))
    return output, code


def memoized_qemu(guest: str, key: list[Any], run: Any) -> Any:
    """``run()``'s (JSON) result for a QEMU run of ``guest``, kept on disk by
    the guest binary, ``key`` (what else decides the run) and QEMU's version."""
    require("qemu")
    digest = hashlib.sha256(build_guest(guest).read_bytes())
    digest.update(json.dumps([*key, _qemu_version()]).encode())
    path = cache_dir() / f"qemu-{guest}-{digest.hexdigest()[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = run()
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(result))
    os.replace(partial, path)
    return result
