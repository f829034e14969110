"""The unit files, checked by systemd itself.

* ``systemd-analyze verify`` on both units (it exits 0 even on parse
  errors, so any output on stderr fails the test);
* an end-to-end run under a real systemd: this machine's PID 1 is not
  systemd, but a private ``systemd --user`` manager runs in a mount
  namespace where ``/run/systemd/system`` exists (what it checks to believe
  systemd is booted). The units are the shipped ones with the binary and
  the config directory pointed at this checkout, plus a test drop-in that
  (a) runs as the current user, (b) turns off what this container cannot
  set up (ProtectHome=, ProtectKernelLogs=, ProtectKernelTunables= fail
  with 226/NAMESPACE here; PrivateTmp= would hide the test's /tmp
  directories), and (c) shortens WatchdogSec= (3 s, so that a busy
  machine does not trip it; off for the socket test) and RestartSec=. Everything
  else -- Type=notify, NotifyAccess=main, ProtectSystem=strict, the
  syscall filter, RuntimeDirectory=, the socket unit -- runs as shipped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import ROOT, RawQMP

UNITS = ROOT / "systemd"
SYSTEMD = Path("/lib/systemd/systemd")
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")


def _instance_copies(directory: Path) -> list[Path]:
    """The templates as instance files, with ExecStart= pointing here."""
    vmd = Path(sys.executable).with_name("vmd")
    paths = []
    for template in ("vmd@.service", "vmd@.socket"):
        text = (UNITS / template).read_text().replace("/usr/local/bin/vmd", str(vmd))
        path = directory / template.replace("@.", "@test.")
        path.write_text(text)
        paths.append(path)
    return paths


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", *map(str, _instance_copies(tmp_path))],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr == ""


def test_service_is_hardened(tmp_path: Path) -> None:
    service = _instance_copies(tmp_path)[0]
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(service)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) < 3.0  # "OK"; 2.1 when written


# --- end to end under a private systemd --user -------------------------------------

_TEST_DROP_IN = """[Service]
Environment=PYTHONPATH={root} VMD_TEST_BLOCK_SECONDS=8
User=
Group=
SupplementaryGroups=
PrivateTmp=no
ProtectHome=no
ProtectKernelLogs=no
ProtectKernelTunables=no
WatchdogSec=3
RestartSec=100ms
"""


@dataclass
class UserManager:
    """A ``systemd --user`` of our own and its directories."""

    process: subprocess.Popen[bytes]
    env: dict[str, str]
    runtime: Path
    etc: Path

    def systemctl(self, *args: str) -> str:
        try:
            result = subprocess.run(["systemctl", "--user", *args], env=self.env, capture_output=True,
                                    text=True, timeout=60)
        except subprocess.TimeoutExpired:
            status = subprocess.run(["systemctl", "--user", "status", "--no-pager", "vmd@*"], env=self.env,
                                    capture_output=True, text=True, timeout=30)
            raise AssertionError(f"systemctl {' '.join(args)} hung:\n{status.stdout}") from None
        assert result.returncode == 0, result.stderr
        return result.stdout

    def show(self, unit: str, *names: str) -> dict[str, str]:
        lines = self.systemctl("show", unit, *(f"--property={name}" for name in names)).splitlines()
        return dict(line.split("=", 1) for line in lines)

    def wait_for(self, unit: str, timeout: float = 30.0, **expected: str) -> dict[str, str]:
        """Poll ``systemctl show`` until the properties match (systemd has no event for a test)."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.show(unit, *expected)
            if shown == expected or time.monotonic() > deadline:
                assert shown == expected
                return shown
            time.sleep(0.05)


def _can_run_user_manager() -> bool:
    return os.geteuid() == 0 and SYSTEMD.exists() and shutil.which("unshare") is not None


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserManager]:
    if not _can_run_user_manager():
        pytest.skip("needs root, unshare and /lib/systemd/systemd")
    base = tmp_path_factory.mktemp("systemd-user")
    runtime, config, etc, home = (base / name for name in ("run", "config", "etc", "home"))
    units = config / "systemd" / "user"
    (units / "vmd@.service.d").mkdir(parents=True)
    for path in (runtime, etc, home):
        path.mkdir()
    runtime.chmod(0o700)
    blocker = f"{sys.executable} {ROOT / 'tests' / 'loop_blocker.py'}"
    for template in ("vmd@.service", "vmd@.socket"):
        text = (UNITS / template).read_text()
        (units / template).write_text(text.replace("/usr/local/bin/vmd", blocker).replace("/etc/vmd/", f"{etc}/"))
    (units / "vmd@.service.d" / "test.conf").write_text(_TEST_DROP_IN.format(root=ROOT))
    (units / "vmd@e2s.service.d").mkdir()
    (units / "vmd@e2s.service.d" / "no-watchdog.conf").write_text("[Service]\nWatchdogSec=0\n")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "XDG_CONFIG_HOME": str(config), "HOME": str(home)}
    script = f"mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec {SYSTEMD} --user"
    process = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    user = UserManager(process, env, runtime, etc)
    try:
        _wait_for_path(runtime / "systemd" / "private", process)
        yield user
    finally:
        subprocess.run(["systemctl", "--user", "exit"], env=env, capture_output=True, timeout=60)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_path(path: Path, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            assert process.stderr is not None
            pytest.skip(f"systemd --user did not start: {process.stderr.read().decode().strip()}")
        assert time.monotonic() < deadline, "systemd --user did not start"
        time.sleep(0.05)


def test_service_start_watchdog_restart_and_stop(manager: UserManager) -> None:
    (manager.etc / "e2e.conf").write_text("# a null disk\n-blockdev driver=null-co,node-name=null0\n")
    unit = "vmd@e2e.service"
    manager.systemctl("start", unit)  # returns once vmd sent READY=1
    shown = manager.show(unit, "ActiveState", "StatusText", "MainPID", "NRestarts")
    assert (shown["ActiveState"], shown["StatusText"], shown["NRestarts"]) == ("active", "running", "0")
    qmp = manager.runtime / "vmd" / "e2e" / "qmp.sock"
    with RawQMP(qmp) as client:
        client.negotiate()
        assert client.command({"execute": "query-name"}) == {"return": {"name": "e2e"}}
        assert client.command({"execute": "query-named-block-nodes"})["return"][0]["node-name"] == "null0"
    # A stuck event loop (loop_blocker: SIGUSR1 sleeps 8 s) stops the pings;
    # systemd's watchdog (3 s) fires, kills vmd and Restart=on-failure restarts it.
    first_pid = int(shown["MainPID"])
    os.kill(first_pid, signal.SIGUSR1)
    manager.wait_for(unit, NRestarts="1", ActiveState="active", Result="success")
    assert int(manager.show(unit, "MainPID")["MainPID"]) != first_pid
    manager.systemctl("stop", unit)  # SIGTERM: no guest, so at once
    assert manager.show(unit, "ActiveState", "Result", "ExecMainStatus") == {
        "ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert not qmp.exists()
    assert not (manager.runtime / "vmd" / "e2e" / "vmd.pid").exists()


def test_socket_activation(manager: UserManager) -> None:
    (manager.etc / "e2s.conf").write_text("-S\n")
    manager.systemctl("start", "vmd@e2s.socket")
    assert manager.show("vmd@e2s.service", "ActiveState") == {"ActiveState": "inactive"}
    qmp = manager.runtime / "vmd" / "e2s" / "qmp.sock"
    inode = qmp.stat().st_ino
    for _ in range(2):  # started by a client, stopped, started again
        with RawQMP(qmp, timeout=30) as client:
            client.negotiate()
            reply = client.command({"execute": "query-status"})
            assert reply["return"]["status"] == "prelaunch"
        assert manager.show("vmd@e2s.service", "ActiveState", "StatusText") == {
            "ActiveState": "active", "StatusText": "prelaunch"}
        manager.systemctl("stop", "vmd@e2s.service")
        assert qmp.stat().st_ino == inode  # still systemd's socket
    manager.systemctl("stop", "vmd@e2s.socket")
    with pytest.raises(OSError), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(qmp))
