"""The QMP server as a process: monitors, clients, bounds, signals, start-up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import ROOT, RawQMP, VmdProcess, rss_kib, running_vmd, vmd_command, wait_gone
from vmd.qmp.json_writer import encode_message
from vmd.version import greeting_line, version_info


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _connect_when_listening(path: Path, timeout: float = 20.0) -> RawQMP:
    """Connect as soon as the socket accepts (the daemon's bind is the event)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return RawQMP(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_greeting_written_by_hand_matches_the_encoder() -> None:
    greeting = {"QMP": {"version": version_info(), "capabilities": ["oob"]}}
    assert greeting_line() == encode_message(greeting)


def test_several_monitors_at_once(tmp_path: Path) -> None:
    second = tmp_path / "second.sock"
    third = tmp_path / "third.sock"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with running_vmd(
            tmp_path, "-qmp", f"unix:{second},server=on,wait=off",
            "-chardev", f"socket,id=mon1,path={third},server=on,wait=off",
            "-mon", "chardev=mon1,mode=control",
            "-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off") as vmd:
        clients = [RawQMP(path) for path in (vmd.qmp_path, second, third)]
        tcp = socket.create_connection(("127.0.0.1", port), timeout=10)
        tcp_reader = tcp.makefile("rb")
        try:
            assert "QMP" in json.loads(tcp_reader.readline())
            tcp.sendall(b'{"execute":"qmp_capabilities"}')
            assert json.loads(tcp_reader.readline()) == {"return": {}}
            for client in clients[:2]:
                client.negotiate()
            # The third client has not negotiated: it gets no events.
            reply = clients[0].command({"execute": "stop", "id": 1})
            assert reply == {"return": {}, "id": 1}
            assert clients[1].read()["event"] == "STOP"
            assert json.loads(tcp_reader.readline())["event"] == "STOP"
            reply = clients[2].command({"execute": "query-status"})
            assert reply["error"]["class"] == "CommandNotFound"
        finally:
            tcp_reader.close()
            tcp.close()
            for client in clients:
                client.close()


def test_client_vanishing_mid_message_costs_nothing(vmd: VmdProcess) -> None:
    with RawQMP(vmd.qmp_path) as other:
        other.negotiate()
        for partial in (b'{"execute":"query-st', b'{"execute":"stop"}',
                        b"{'execute':'qmp_capabilities'}{\"exec"):
            rude = socket.socket(socket.AF_UNIX)
            rude.connect(str(vmd.qmp_path))
            rude.sendall(partial)
            rude.close()
        reply = other.command({"execute": "query-name", "id": "still"})
        assert reply == {"return": {"name": "testvm"}, "id": "still"}


def test_bad_input_keeps_connection_usable(vmd: VmdProcess) -> None:
    with RawQMP(vmd.qmp_path) as client:
        client.negotiate()
        for garbage in (b"\xff\xfe", b"[[[[", b"]]]]", b"}", b"nul ",
                        b'{"execute": 5}', b'"x"'):
            client.send(garbage)
        client.send(b'\n{"execute":"query-name","id":"ok"}')
        while True:
            reply = client.read()
            if reply.get("id") == "ok":
                break
            assert reply["error"]["class"] == "GenericError"
        assert reply["return"] == {"name": "testvm"}


def test_flooding_client_does_not_starve_others(vmd: VmdProcess) -> None:
    """A client that sends without reading its replies is throttled alone."""
    flood = socket.socket(socket.AF_UNIX)
    flood.connect(str(vmd.qmp_path))
    flood.setblocking(False)
    request = b'{"execute":"qmp_capabilities"}' + \
        b'{"execute":"query-qmp-schema"}' * 2000
    sent = 0
    with RawQMP(vmd.qmp_path) as other:
        other.negotiate()
        for _ in range(50):
            try:
                sent += flood.send(request)
            except BlockingIOError:
                break
            reply = other.command({"execute": "query-name"})
            assert reply == {"return": {"name": "testvm"}}
        used = rss_kib(vmd.process.pid)
        assert used < 400_000, f"vmd grew to {used} KiB"
        assert sent > 0
    flood.close()


def test_sigterm_emits_shutdown_and_exits_zero(tmp_path: Path) -> None:
    with running_vmd(tmp_path) as vmd, RawQMP(vmd.qmp_path) as client:
        client.negotiate()
        vmd.process.send_signal(signal.SIGTERM)
        event = client.read()
        assert event["event"] == "SHUTDOWN"
        assert event["data"] == {"guest": False, "reason": "host-signal"}
        assert vmd.process.wait(10) == 0
    assert not vmd.qmp_path.exists()


def test_quit_replies_then_closes(tmp_path: Path) -> None:
    with running_vmd(tmp_path) as vmd, RawQMP(vmd.qmp_path) as client:
        client.negotiate()
        client.send(b'{"execute":"quit","id":"q"}')
        assert client.read()["event"] == "SHUTDOWN"
        assert client.read() == {"return": {}, "id": "q"}
        with pytest.raises(EOFError):
            client.read()
        assert vmd.process.wait(10) == 0


def test_start_paused_then_cont(tmp_path: Path) -> None:
    with running_vmd(tmp_path, "-S") as vmd, RawQMP(vmd.qmp_path) as client:
        client.negotiate()
        status = client.command({"execute": "query-status"})["return"]
        assert status == {"running": False, "singlestep": False,
                          "status": "prelaunch"}
        client.send(b'{"execute":"cont"}')
        assert client.read()["event"] == "RESUME"
        assert client.read() == {"return": {}}


def test_server_wait_on_waits_for_first_client(tmp_path: Path) -> None:
    path = tmp_path / "wait.sock"
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        env = {**_env(), "NOTIFY_SOCKET": str(notify_path)}
        process = subprocess.Popen(
            vmd_command("-qmp", f"unix:{path},server=on"), env=env,
            stderr=subprocess.PIPE)
        try:
            assert process.stderr is not None
            line = process.stderr.readline().decode()
            assert "waiting for connection" in line
            notify.settimeout(0.3)
            with pytest.raises(TimeoutError):
                notify.recv(100)  # not ready while nobody has connected
            with _connect_when_listening(path) as client:
                notify.settimeout(20)
                assert b"READY=1" in notify.recv(100)
                client.negotiate()
        finally:
            process.kill()
            process.wait()


def test_daemonize_and_pidfile(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    pidfile = tmp_path / "vmd.pid"
    result = subprocess.run(
        vmd_command("-daemonize", "-pidfile", str(pidfile), "-qmp",
                    f"unix:{path},server=on,wait=off"),
        env=_env(), timeout=30, capture_output=True)
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        with RawQMP(path) as client:  # listening as soon as the parent exits
            client.negotiate()
            second = subprocess.run(
                vmd_command("-pidfile", str(pidfile), "-qmp",
                            f"unix:{tmp_path / 'e.sock'},server=on,wait=off"),
                env=_env(), timeout=30, capture_output=True, text=True)
            assert second.returncode == 1
            assert "cannot create PID file: Cannot lock pid file" in \
                second.stderr
            client.send(b'{"execute":"quit"}')
            client.read()
            client.read()
    finally:
        wait_gone(pid)
    assert not pidfile.exists()


@pytest.mark.parametrize("argv, message", [
    (["-bogus"], "vmd: -bogus: invalid option"),
    (["-qmp"], "vmd: -qmp: requires an argument"),
    (["-M", "q35"], "unsupported machine type"),
    (["-blockdev", "driver=file,node-name=n,filename=/nonexistent/x"],
     "Could not open '/nonexistent/x': No such file or directory"),
    (["-device", "virtio-blk,drive=n"], "-device needs a machine with a guest (-M pc)"),
])
def test_command_line_errors_exit_1(argv: list[str], message: str) -> None:
    result = subprocess.run(vmd_command(*argv), env=_env(), timeout=30,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_options() -> None:
    result = subprocess.run(vmd_command("--help"), env=_env(), timeout=30,
                            capture_output=True, text=True, check=True)
    starts = {line.split()[0] for line in result.stdout.splitlines()
              if line.startswith("-")}
    for option in ("-qmp", "-chardev", "-mon", "-blockdev", "-daemonize",
                   "-pidfile", "-name", "-S", "-machine|-M", "-nodefaults"):
        assert option in starts, f"{option} missing from --help"


def test_qmp_on_stdio() -> None:
    process = subprocess.Popen(
        vmd_command("-qmp", "stdio", "-name", "piped"), env=_env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    try:
        assert "QMP" in json.loads(process.stdout.readline())
        process.stdin.write(b'{"execute":"qmp_capabilities"}'
                            b'{"execute":"query-name","id":1}')
        process.stdin.flush()
        assert json.loads(process.stdout.readline()) == {"return": {}}
        assert json.loads(process.stdout.readline()) == {
            "return": {"name": "piped"}, "id": 1}
        process.stdin.write(b'{"execute":"quit"}')
        process.stdin.close()
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()
