"""A private libvirtd for tests that drive vmd the way libvirt users do.

libvirt is installed only for these tests, by ``scripts/setup-libvirt.sh``
(idempotent, no stdin); where that fails (no root, no Debian mirror) the
tests skip and say why. Each test gets its own libvirtd in system mode,
run as root inside a private mount namespace (``unshare -m``) whose
``/etc/libvirt``, ``/run/libvirt`` and ``/var/{lib,cache,log}/libvirt``
are bind mounts of directories under the test's tmp_path, so nothing of
the host's libvirt is read or changed, and capabilities are probed afresh
(libvirt caches them per emulator path in ``/var/cache/libvirt``). The
daemon's socket lives outside the namespace, under tmp_path, and virsh
reaches it with ``qemu:///system?socket=...``.

The daemon reports readiness with sd_notify (``READY=1``), so nothing
sleeps. ``qemu.conf`` runs guests as root without cgroups or a security
driver, and writes the emulator's output to ``/var/log/libvirt/qemu/NAME.log``
itself (no virtlogd); libvirt still wants the ``libvirt-qemu`` user to exist.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import ROOT, wait_ready

SETUP = ROOT / "scripts" / "setup-libvirt.sh"
#: The installed entry point: libvirt runs the emulator with a cleared
#: environment, so a PYTHONPATH would be lost; the venv's script finds
#: this worktree's code by itself.
VMD_BINARY = ROOT / ".venv" / "bin" / "vmd"
START_TIMEOUT = 30.0
VIRSH_TIMEOUT = 120.0

# The directories libvirtd (system mode) uses, each replaced by a private one.
_PRIVATE_DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
                 "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}

_QEMU_CONF = """\
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
"""

# Mount the private directories, then become libvirtd.
_NAMESPACE_SCRIPT = """\
set -e
root=$1; shift
for pair in {pairs}; do
    mkdir -p "${{pair#*=}}"
    mount --bind "$root/${{pair%%=*}}" "${{pair#*=}}"
done
exec "$@"
"""

#: Errors every private libvirtd logs here (no dnsmasq, D-Bus, udev, DMI or
#: cgroups); they have nothing to do with the emulator.
_LOG_NOISE = ("dnsmasqCaps", "virGDBus", "udevGetDMIData", "dmidecode", "virCgroup")

_setup_result: str | None = None


def require_libvirt() -> None:
    """Install libvirt once per test session, or skip saying why not."""
    global _setup_result
    if _setup_result is None:
        _setup_result = _install()
    if _setup_result:
        pytest.skip(_setup_result)


def _install() -> str:
    """"" if libvirt is usable, else the reason it is not."""
    if os.geteuid() != 0:
        return "libvirt tests need root (a system libvirtd in a private mount namespace)"
    if shutil.which("unshare") is None:
        return "libvirt tests need unshare(1) from util-linux"
    result = subprocess.run([str(SETUP)], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=600, check=False)
    if result.returncode != 0 or shutil.which("libvirtd") is None:
        return f"libvirt could not be installed: {(result.stderr or result.stdout).strip()[-300:]}"
    if not VMD_BINARY.exists():
        return f"{VMD_BINARY} is missing: run scripts/setup.sh"
    return ""


class Libvirtd:
    """A running private libvirtd; ``virsh`` talks to it."""

    def __init__(self, root: Path, process: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.process = process
        self.uri = f"qemu:///system?socket={root / 'sock' / 'libvirt-sock'}"

    @property
    def log(self) -> Path:
        return self.root / "log" / "libvirtd.log"

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``virsh -c URI ARGS``; with ``check``, fail the test on error."""
        result = subprocess.run(["virsh", "-c", self.uri, *args], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=VIRSH_TIMEOUT,
                                check=False)
        if check and result.returncode != 0:
            pytest.fail(f"virsh {' '.join(args)} failed: {result.stderr.strip()}\n"
                        f"{self.log_tail()}")
        return result

    def log_tail(self, lines: int = 40) -> str:
        """The end of the daemon's log, where libvirt says what went wrong."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no libvirtd log)"
        interesting = [line for line in text.splitlines()
                       if (": error :" in line or "QEMU_MONITOR_RECV_REPLY" in line and '"error"' in line)
                       and not any(noise in line for noise in _LOG_NOISE)]
        return "\n".join(line[:400] for line in interesting[-lines:])

    def stop(self) -> None:
        """Destroy the domains still running (libvirtd would leave them),
        then stop the daemon."""
        if self.process.poll() is None:
            running = self.virsh("list", "--name", check=False).stdout.split()
            for name in running:
                self.virsh("destroy", name, check=False)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _write_config(root: Path) -> None:
    for name in _PRIVATE_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "sock").mkdir(exist_ok=True)
    (root / "etc" / "qemu.conf").write_text(_QEMU_CONF)
    (root / "etc" / "libvirtd.conf").write_text(
        f'unix_sock_dir = "{root / "sock"}"\n'
        'log_filters = "1:qemu.qemu_monitor 1:qemu.qemu_process 3:util 3:rpc 3:event 3:object"\n'
        f'log_outputs = "1:file:{root / "log" / "libvirtd.log"}"\n')


@contextmanager
def private_libvirtd(tmp_path: Path) -> Iterator[Libvirtd]:
    """Start libvirtd in a private mount namespace; stop it afterwards."""
    require_libvirt()
    root = tmp_path / "libvirt"
    _write_config(root)
    pairs = " ".join(f"{name}={path}" for name, path in _PRIVATE_DIRS.items())
    script = _NAMESPACE_SCRIPT.format(pairs=pairs)
    notify_path = tmp_path / "libvirtd-notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(0.2)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "NOTIFY_SOCKET": str(notify_path), "LC_ALL": "C"}
        with open(root / "log" / "stderr", "wb") as stderr:
            process = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                 str(root), "libvirtd", "--config", str(root / "etc" / "libvirtd.conf"),
                 # not /run/libvirtd.pid: two test runs at once must not collide
                 "--pid-file", str(root / "libvirtd.pid")],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        daemon = Libvirtd(root, process)
        try:
            try:
                wait_ready(notify, process, "libvirtd", START_TIMEOUT)
            except RuntimeError as error:
                stderr = (root / "log" / "stderr").read_text(errors="replace")
                raise RuntimeError(f"{error}: {stderr}") from None
            yield daemon
        finally:
            daemon.stop()
