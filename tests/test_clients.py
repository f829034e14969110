"""The clients users already have: qemu.qmp's QMPClient and qmp-shell.

These are the real programs from the qemu.qmp package, driven against a
real vmd over its Unix socket.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

from tests.harness import VmdProcess, wait_for_screen

QMP_SHELL = Path(sys.executable).with_name("qmp-shell")


def run_shell(vmd: VmdProcess, lines: list[str], *options: str) -> str:
    """Feed ``lines`` to qmp-shell on stdin; return what it printed."""
    result = subprocess.run(
        [str(QMP_SHELL), *options, str(vmd.qmp_path)],
        input="\n".join(lines) + "\n", capture_output=True, text=True,
        timeout=30, check=True)
    return result.stdout


async def test_qmpclient_executes_and_reports_errors(vmd: VmdProcess) -> None:
    client = QMPClient("test")
    await client.connect(str(vmd.qmp_path))
    try:
        assert client.greeting is not None
        assert client.greeting.QMP.capabilities == ["oob"]
        status = await client.execute("query-status")
        assert status == {"running": True, "singlestep": False,
                          "status": "running"}
        assert await client.execute("query-name") == {"name": "testvm"}
        with pytest.raises(ExecuteError) as info:
            await client.execute("human-monitor-command",
                                 {"command-line": 5})
        assert info.value.error_class == "GenericError"
        assert info.value.error.error.desc == (
            "Invalid parameter type for 'command-line', expected: string")
        with pytest.raises(ExecuteError) as info:
            await client.execute("no-such-command")
        assert info.value.error_class == "CommandNotFound"
    finally:
        await client.disconnect()


async def test_qmpclient_receives_events(vmd: VmdProcess) -> None:
    client = QMPClient("events")
    await client.connect(str(vmd.qmp_path))
    try:
        with client.listener(("STOP", "RESUME")) as listener:
            await client.execute("stop")
            stop = await asyncio.wait_for(listener.get(), 10)
            await client.execute("cont")
            resume = await asyncio.wait_for(listener.get(), 10)
        assert (stop["event"], resume["event"]) == ("STOP", "RESUME")
        assert set(stop["timestamp"]) == {"seconds", "microseconds"}
        assert abs(stop["timestamp"]["seconds"] - time.time()) < 60
    finally:
        await client.disconnect()


async def test_qmpclient_out_of_band(vmd: VmdProcess) -> None:
    client = QMPClient("oob")
    await client.connect(str(vmd.qmp_path))
    try:
        instances = await client.execute("query-yank", oob=True)
        assert {"type": "chardev", "id": "compat_monitor0"} in instances
        with pytest.raises(ExecuteError) as info:
            await client.execute("query-status", oob=True)
        assert info.value.error.error.desc == (
            "The command query-status does not support OOB")
    finally:
        await client.disconnect()


async def test_many_clients_each_negotiate(vmd: VmdProcess) -> None:
    clients = [QMPClient(f"c{i}") for i in range(5)]
    for client in clients:
        await client.connect(str(vmd.qmp_path))
    try:
        replies = await asyncio.gather(
            *(client.execute("query-name") for client in clients))
        assert replies == [{"name": "testvm"}] * len(clients)
        with clients[0].listener("STOP") as first, \
                clients[4].listener("STOP") as last:
            await clients[2].execute("stop")
            await asyncio.wait_for(first.get(), 10)
            await asyncio.wait_for(last.get(), 10)
    finally:
        for client in clients:
            await client.disconnect()


def test_legacy_sync_client(vmd: VmdProcess) -> None:
    monitor = QEMUMonitorProtocol(str(vmd.qmp_path))
    greeting = monitor.connect(negotiate=True)
    try:
        assert greeting["QMP"]["version"]["qemu"]["major"] >= 7
        assert monitor.cmd("query-status")["status"] == "running"
        reply = monitor.cmd_obj({"execute": "query-name", "id": "mine"})
        assert reply == {"return": {"name": "testvm"}, "id": "mine"}
    finally:
        monitor.close()


def test_qmp_shell_key_value_and_json_arguments(vmd: VmdProcess) -> None:
    output = run_shell(vmd, [
        "query-status",
        "human-monitor-command command-line=help",
        'yank instances=[{"type":"chardev","id":"none"}]',
        "query-status foo=1",
    ])
    assert "Connected to QEMU 7.2.0" in output
    assert "'status': 'running'" in output or '"status": "running"' in output
    assert "show the help" in output
    assert "Instance not found" in output
    assert "Parameter 'foo' is unexpected" in output


def test_qmp_shell_pretty(vmd: VmdProcess) -> None:
    output = run_shell(vmd, ["query-name"], "-p")
    assert '{\n    "return": {\n        "name": "testvm"\n    }\n}' in output


def test_qmp_shell_hmp_mode(vmd: VmdProcess) -> None:
    output = run_shell(vmd, ["info status", "stop", "info status"], "-H")
    assert "Welcome to the HMP shell!" in output
    assert "VM status: running" in output
    assert "VM status: paused" in output


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_qmp_shell_tab_completion(vmd: VmdProcess) -> None:
    session = f"vmd-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160",
                    "-y", "40", str(QMP_SHELL), str(vmd.qmp_path)],
                   check=True)
    try:
        wait_for_screen(session, "(QEMU)")
        subprocess.run(["tmux", "send-keys", "-t", session, "query-sta",
                        "Tab"], check=True)
        wait_for_screen(session, "(QEMU) query-status")
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"],
                       check=True)
        wait_for_screen(session, '"status": "running"')
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
