"""Access control: who can reach a monitor, and the log of who did."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import START_TIMEOUT, RawQMP, start_vmd, vmd_command


def wait_for_text(path: Path, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text()
        if text in content:
            return content
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in {path.read_text()!r}")


def test_qmp_sockets_are_private_and_peers_are_logged(tmp_path: Path) -> None:
    mon_path = tmp_path / "mon.sock"
    log = tmp_path / "stderr.log"
    with log.open("wb") as sink:
        vmd = start_vmd(tmp_path, "-chardev", f"socket,id=m,path={mon_path},server=on,wait=off",
                        "-mon", "chardev=m,mode=control", stderr=sink)
    try:
        for path in (vmd.qmp_path, mon_path):  # early-greeted and plain monitors
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            with RawQMP(path) as qmp:
                qmp.negotiate()
                wait_for_text(log, f"QMP client connected: pid={os.getpid()} uid={os.getuid()} gid={os.getgid()}")
    finally:
        vmd.stop()


@pytest.mark.parametrize("option", ["-qmp", "-monitor"])
@pytest.mark.parametrize("address", ["tcp::0", "tcp:0.0.0.0:0"])
def test_monitor_on_all_addresses_is_refused(tmp_path: Path, option: str, address: str) -> None:
    result = subprocess.run(vmd_command(option, f"{address},server=on,wait=off"), capture_output=True,
                            text=True, timeout=START_TIMEOUT)
    assert result.returncode == 1
    assert "would let other hosts control vmd" in result.stderr
    assert "x-allow-remote=on" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("address", ["tcp:127.0.0.1:0,server=on,wait=off",
                                     "tcp:0.0.0.0:0,server=on,wait=off,x-allow-remote=on"])
def test_loopback_or_explicitly_remote_monitor_starts(tmp_path: Path, address: str) -> None:
    vmd = start_vmd(tmp_path, "-qmp", address)
    try:
        with RawQMP(vmd.qmp_path) as qmp:
            qmp.negotiate()
            assert qmp.command({"execute": "query-status"})["return"]["status"] == "running"
    finally:
        assert vmd.stop() == 0
