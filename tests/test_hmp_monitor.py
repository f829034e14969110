"""The readline HMP monitor: in-process on fake chardevs, over a socket, in tmux."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.harness import start_vmd, vmd_command
from vmd.chardev.base import OUTPUT_LIMIT, Chardev
from vmd.chardev.mux import HELP_TEXT, MuxChardev
from vmd.chardev.registry import ChardevRegistry
from vmd.hmp.monitor import BANNER, HmpMonitor
from vmd.system.runstate import RunStateMachine

PROMPT = b"(qemu) "
HELP_END = b"system_reset  -- reset the system\r\n"


# -- in process ---------------------------------------------------------------


class FakeChardev(Chardev):
    """A chardev whose peer is the test: ``sent`` is what it has read.

    ``room`` limits how much ``write`` takes (None: everything), to play
    a peer that stops reading.
    """

    kind = "fake"

    def __init__(self, chardev_id: str = "fake") -> None:
        super().__init__(chardev_id)
        self.sent = bytearray()
        self.room: int | None = None
        self.paused = False

    def _write(self, data: bytes) -> int:
        taken = len(data) if self.room is None else min(self.room, len(data))
        if self.room is not None:
            self.room -= taken
        self.sent += data[:taken]
        return taken

    def _pause_input(self) -> None:
        self.paused = True

    def _resume_input(self) -> None:
        self.paused = False

    def take(self) -> bytes:
        data, self.sent = bytes(self.sent), bytearray()
        return data

    def drain(self) -> None:
        """The peer reads again."""
        self.room = None
        self.writable()


class FakeDaemon:
    def __init__(self) -> None:
        self.chardevs = ChardevRegistry()
        self.runstate = RunStateMachine(SimpleNamespace(emit=lambda *a, **k: None), False)
        self.name = "testvm"
        self.quit_cause: Any = None
        self.chardevs.quit_handler = self.request_shutdown

    def request_shutdown(self, cause: Any) -> None:
        self.quit_cause = cause


async def settle() -> None:
    """Let command tasks run to completion."""
    for _ in range(5):
        await asyncio.sleep(0)


def screen_line(data: bytes) -> str:
    """What a terminal shows for one line of echo (ESC [ D/C/K applied)."""
    line: list[str] = []
    cursor = 0
    text = data.decode()
    i = 0
    while i < len(text):
        if text.startswith("\033[D", i):
            cursor -= 1
            i += 3
        elif text.startswith("\033[C", i):
            cursor += 1
            i += 3
        elif text.startswith("\033[K", i):
            del line[cursor:]
            i += 3
        else:
            if cursor < len(line):
                line[cursor] = text[i]
            else:
                line.append(text[i])
            cursor += 1
            i += 1
    return "".join(line)


def opened_monitor() -> tuple[FakeChardev, HmpMonitor, FakeDaemon]:
    daemon = FakeDaemon()
    chardev = FakeChardev()
    monitor = HmpMonitor(daemon, chardev)  # type: ignore[arg-type]
    monitor.start()
    chardev.set_connected(True)
    return chardev, monitor, daemon


async def test_banner_prompt_and_command() -> None:
    chardev, _monitor, _daemon = opened_monitor()
    assert chardev.take() == BANNER.replace("\n", "\r\n").encode() + PROMPT
    assert BANNER == "QEMU 7.2.0 monitor - type 'help' for more information\n"
    chardev.deliver(b"info status\r\n")
    await settle()
    assert chardev.take() == b"info status\r\nVM status: running\r\n" + PROMPT


async def test_editing_history_and_completion() -> None:
    chardev, monitor, _daemon = opened_monitor()
    chardev.take()
    chardev.deliver(b"info stx\x7fatus\n")           # Backspace
    await settle()
    assert b"VM status: running" in chardev.take()
    chardev.deliver(b"garbage\x15info name\n")       # Ctrl-U kills the line
    await settle()
    assert chardev.take().endswith(b"\r\ntestvm\r\n" + PROMPT)
    chardev.deliver(b"\x1b[A\x1b[A")                # Up twice: older entry
    assert monitor.readline.line == "info status"
    chardev.deliver(b"\x1b[B")                      # Down: newer entry
    assert monitor.readline.line == "info name"
    chardev.deliver(b"\x1b[D\x1b[D\x1b[Dxx")       # Left, insert mid-line
    assert screen_line(chardev.take()) == "info nxxame"
    chardev.deliver(b"\x15info sta\t")              # unique: completed + space
    assert monitor.readline.line == "info status "
    chardev.deliver(b"\x15sys\t")                  # several: common prefix, list
    output = chardev.take()
    assert monitor.readline.line == "system_"
    assert b"system_powerdown  system_reset" in output
    assert output.endswith(b"\r\n" + PROMPT + b"system_")
    chardev.deliver(b"\x15zz\t")                   # none: nothing happens
    assert monitor.readline.line == "zz"
    chardev.deliver(b"\r\n")                       # CR LF is one Enter
    await settle()
    assert chardev.take().count(PROMPT) == 1


async def test_chardev_commands_and_errors() -> None:
    chardev, _monitor, daemon = opened_monitor()
    daemon.chardevs.insert(chardev)
    chardev.take()

    async def run(line: str) -> str:
        chardev.deliver(line.encode() + b"\n")
        for _ in range(50):
            await asyncio.sleep(0)
            if chardev.sent.endswith(PROMPT):
                break
        out = chardev.take().decode()
        assert out.startswith(line + "\r\n") and out.endswith("(qemu) ")
        return out[len(line) + 2:-len("(qemu) ")]

    assert await run("info chardev") == "fake: filename=fake\r\n"
    assert await run("chardev-add ringbuf,id=r1,size=128") == ""
    assert await run("ringbuf_write r1 hello") == ""
    assert await run('ringbuf_write r1 "a\\\\b\\n"') == ""
    assert await run("ringbuf_read r1 10") == "helloa\\\\b\r\n\r\n"
    assert await run("ringbuf_read r1") == (
        'unexpected end of expression\r\nTry "help ringbuf_read" for more information\r\n')
    assert await run("ringbuf_read r1 x") == (
        "invalid char 'x' in expression\r\nTry \"help ringbuf_read\" for more information\r\n")
    assert await run("ringbuf_read r1 0") == "Error: size must be greater than zero\r\n"
    assert await run("ringbuf_write nosuch x") == "Error: Device 'nosuch' not found\r\n"
    assert await run("ringbuf_write r1") == (
        'ringbuf_write: string expected\r\nTry "help ringbuf_write" for more information\r\n')
    assert await run("chardev-add foo=bar") == (
        "Invalid parameter 'foo'\r\nError: Parsing chardev args failed\r\n")
    assert await run("chardev-add ringbuf") == "Error: chardev: no id specified\r\n"
    assert await run("chardev-add ringbuf,id=r1") == (
        "Error: attempt to add duplicate property 'r1' to object (type 'container')\r\n")
    assert await run("chardev-add mux,id=m1,chardev=nosuch") == (
        "Error: mux: base chardev nosuch not found\r\n")
    assert await run("chardev-add ringbuf,id=r5,mux=on") == ""
    assert "r5-base: filename=ringbuf\r\nr5: filename=mux\r\n" in await run("info chardev")
    assert await run("chardev-remove r5-base") == "Error: Chardev 'r5-base' is busy\r\n"
    assert await run("chardev-remove r5") == "Error: Chardev 'r5' is busy\r\n"
    assert await run("chardev-remove nosuch") == "Error: Chardev 'nosuch' not found\r\n"
    assert await run("chardev-remove r1") == ""
    assert await run("help ringbuf_read") == (
        "ringbuf_read device size -- Read from a ring buffer character device\r\n")
    assert await run("ringbuf_read r5-base 1 extra") == (
        "ringbuf_read: extraneous characters at the end of line\r\n"
        'Try "help ringbuf_read" for more information\r\n')


async def test_peer_that_does_not_read_stops_input() -> None:
    chardev, monitor, _daemon = opened_monitor()
    chardev.take()
    chardev.room = 0                       # the peer stops reading
    flood = b"help\n" * 200               # 200 commands' output: far over the limit
    chardev.deliver(flood)
    await settle()
    assert chardev.paused                  # the backend stopped reading
    assert monitor.chr_can_receive() == 0
    assert monitor.output_pending <= OUTPUT_LIMIT
    assert len(chardev._pending_input) > len(flood) - 10  # still in the "kernel"
    # Reading again lets input flow, one command at a time.
    for _ in range(2000):
        chardev.drain()
        await settle()
        if not chardev._pending_input and monitor.chr_can_receive():
            break
    output = chardev.take()
    assert output.endswith(HELP_END + PROMPT)
    assert output.count(b"help\r\nchardev-add args") == 200 and monitor.dropped == 0
    assert not chardev.paused


class FakeFrontend:
    """A serial port: records input, open state and focus changes."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.events: list[str] = []
        self.accept = True

    def chr_open(self) -> None:
        self.events.append("open")

    def chr_close(self) -> None:
        self.events.append("close")

    def chr_can_receive(self) -> int:
        return 64 if self.accept else 0

    def chr_receive(self, data: bytes) -> None:
        self.received += data

    def chr_writable(self) -> None:
        pass

    def chr_break(self) -> None:
        self.events.append("break")

    def chr_mux_in(self) -> None:
        self.events.append("in")

    def chr_mux_out(self) -> None:
        self.events.append("out")


async def make_mux(daemon: FakeDaemon) -> tuple[FakeChardev, MuxChardev]:
    base = FakeChardev("base")
    daemon.chardevs.insert(base)
    mux = MuxChardev("mux", SimpleNamespace(chardev="base"), daemon.chardevs)
    await mux.open()
    daemon.chardevs.insert(mux)
    return base, mux


async def test_mux_switches_focus_between_front_ends() -> None:
    daemon = FakeDaemon()
    base, mux = await make_mux(daemon)
    first, second = FakeFrontend(), FakeFrontend()
    mux.attach(first)
    mux.attach(second)                     # the newest front end has focus
    assert first.events == ["in", "out"] and second.events == ["in"]
    base.set_connected(True)
    assert first.events[-1] == second.events[-1] == "open"
    base.deliver(b"to-second\x01cto-first\x01\x01\x01a")  # C-a a: nothing
    assert bytes(second.received) == b"to-second"
    assert bytes(first.received) == b"to-first\x01"     # C-a C-a is a C-a
    assert first.events[-1] == "in" and second.events[-1] == "out"
    base.deliver(b"\x01b\x01h")
    assert first.events[-1] == "break"
    assert base.take() == HELP_TEXT.encode()
    # Flow control: a front end that takes nothing holds the base back.
    first.accept = False
    base.deliver(b"x" * 100)
    assert base.paused and len(first.received) == len(b"to-first\x01")
    first.accept = True
    mux.accept_input()
    assert bytes(first.received).endswith(b"x" * 100) and not base.paused
    assert mux.write(b"out") == 3 and base.take() == b"out"
    base.deliver(b"\x01x")
    assert base.take() == b"QEMU: Terminated\n\r"
    assert daemon.quit_cause == "host-qmp-quit"


async def test_mux_with_monitor_and_serial() -> None:
    daemon = FakeDaemon()
    base, mux = await make_mux(daemon)
    base.set_connected(True)
    monitor = HmpMonitor(daemon, mux)  # type: ignore[arg-type]
    monitor.start()
    assert base.take().endswith(PROMPT)
    serial = FakeFrontend()
    mux.attach(serial)                     # the serial port takes the focus
    assert base.take() == b"\r\n"          # the monitor ends its line
    base.deliver(b"info status\n")
    assert bytes(serial.received) == b"info status\n"
    base.deliver(b"\x01cinfo status\n")    # back to the monitor
    await settle()
    assert base.take() == PROMPT + b"info status\r\nVM status: running\r\n" + PROMPT
    base.deliver(b"\x01c")
    assert base.take() == b"\r\n"


async def test_mux_with_only_the_monitor() -> None:
    """QEMU: C-a c with one front end gives a newline and a fresh prompt."""
    daemon = FakeDaemon()
    base, mux = await make_mux(daemon)
    base.set_connected(True)
    HmpMonitor(daemon, mux).start()  # type: ignore[arg-type]
    base.take()
    base.deliver(b"abc\x01c")
    assert base.take() == b"abc\r\n" + PROMPT


# -- end to end over a socket -------------------------------------------------


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(marker):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.endswith(marker), data
    return data


def test_hmp_over_socket(tmp_path: Path) -> None:
    if importlib.util.find_spec("vmd.chardev.socket") is None:
        pytest.skip("the socket chardev backend (vmd.chardev.socket) is not there yet")
    path = tmp_path / "hmp.sock"
    vmd = start_vmd(tmp_path, "-chardev", f"socket,id=h,path={path},server=on,wait=off",
                    "-mon", "chardev=h,mode=readline")
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            assert _read_until(sock, PROMPT) == BANNER.replace("\n", "\r\n").encode() + PROMPT

            def run(line: str) -> str:
                sock.sendall(line.encode() + b"\r")
                out = _read_until(sock, PROMPT).decode()
                return out[len(line) + 2:-len(PROMPT)]

            assert run("info status") == "VM status: running\r\n"
            assert f"h: filename=unix:{path},server=on\r\n" in run("info chardev")
            assert run("chardev-add ringbuf,id=r1,size=128") == ""
            assert run("ringbuf_write r1 hello") == ""
            assert run("ringbuf_read r1 10") == "hello\r\n"
            assert "r1: filename=ringbuf" in run("info chardev")
            sock.sendall(b"quit\n")
            assert vmd.process.wait(10) == 0
    finally:
        vmd.stop()


# -- the terminal: mon:stdio and -monitor stdio in tmux ----------------------------


def _screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                          capture_output=True, text=True).stdout


def _wait_for(session: str, check: Any, what: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _screen(session)
        if check(screen):
            return screen
        time.sleep(0.05)
    raise AssertionError(f"{what} never appeared on screen:\n{screen}")


def _keys(session: str, *keys: str) -> None:
    subprocess.run(["tmux", "send-keys", "-t", session, *keys], check=True)


def _prompts(screen: str) -> int:
    return screen.count("(qemu)")


def _tmux_vmd(tmp_path: Path, *args: str) -> str:
    session = f"vmd-hmp-{uuid.uuid4().hex[:8]}"
    qmp = tmp_path / "qmp.sock"
    status = tmp_path / "status"
    command = " ".join([*vmd_command("-nodefaults", *args, "-qmp", f"unix:{qmp},server=on,wait=off")])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "50",
                    "-c", str(Path(__file__).resolve().parent.parent),
                    f"{command}; echo vmd-exited-$? > {status}; sleep 60"], check=True)
    return session


needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
needs_stdio = pytest.mark.skipif(importlib.util.find_spec("vmd.chardev.stdio") is None,
                                 reason="the stdio chardev backend is not there yet")


@needs_tmux
@needs_stdio
def test_mon_stdio_session_in_tmux(tmp_path: Path) -> None:
    session = _tmux_vmd(tmp_path, "-serial", "mon:stdio")
    try:
        _wait_for(session, lambda s: "(qemu)" in s and "monitor - type 'help'" in s, "the banner")
        _keys(session, "info status", "Enter")
        _wait_for(session, lambda s: "VM status: running" in s, "VM status")
        _keys(session, "help", "Enter")
        _wait_for(session, lambda s: "info [subcommand] -- show various" in s, "help lines")
        before = _prompts(_screen(session))
        _keys(session, "C-a", "c")             # away (to the monitor itself, as in QEMU) ...
        _wait_for(session, lambda s: _prompts(s) > before, "a fresh prompt")
        _keys(session, "C-a", "h")
        _wait_for(session, lambda s: "C-a c    switch between console and monitor" in s, "mux help")
        before = _prompts(_screen(session))
        _keys(session, "C-a", "c")             # ... and back
        _wait_for(session, lambda s: _prompts(s) > before, "the prompt again")
        _keys(session, "info chardev", "Enter")
        _wait_for(session, lambda s: "serial0: filename=mux" in s, "info chardev")
        _keys(session, "quit", "Enter")
        status = tmp_path / "status"
        _wait_for(session, lambda s: status.exists() and status.read_text().strip(), "vmd's exit")
        assert status.read_text().strip() == "vmd-exited-0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


@needs_tmux
@needs_stdio
def test_monitor_stdio_in_tmux(tmp_path: Path) -> None:
    session = _tmux_vmd(tmp_path, "-monitor", "stdio")
    try:
        _wait_for(session, lambda s: "(qemu)" in s, "the prompt")
        _keys(session, "info stat", "Tab")
        _wait_for(session, lambda s: "(qemu) info status" in s, "the completion")
        _keys(session, "Enter")
        _wait_for(session, lambda s: "VM status: running" in s, "VM status")
        _keys(session, "stop", "Enter", "Up", "BSpace", "BSpace", "BSpace", "BSpace",
              "info status", "Enter")
        _wait_for(session, lambda s: "VM status: paused" in s, "the paused state")
        _keys(session, "quit", "Enter")
        status = tmp_path / "status"
        _wait_for(session, lambda s: status.exists() and status.read_text().strip(), "vmd's exit")
        assert status.read_text().strip() == "vmd-exited-0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
