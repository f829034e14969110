"""Instances under a runtime directory, as ``vmd@.service`` lays them out.

Each instance NAME has a directory ``RUNTIME/NAME`` holding ``qmp.sock``
and, while vmd runs, ``vmd.pid``, which vmd keeps locked (``-pidfile``).
Whether an instance runs is read from that lock, never by connecting: with
``vmd@.socket`` a connection would start the instance.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

QMP_SOCKET = "qmp.sock"
PID_FILE = "vmd.pid"


def default_runtime_dir() -> Path:
    """``/run/vmd`` for root, ``$XDG_RUNTIME_DIR/vmd`` for others (systemd's ``%t/vmd``)."""
    if os.geteuid() != 0 and os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "vmd"
    return Path("/run/vmd")


@dataclass
class Instance:
    name: str
    qmp: Path
    pid: int | None  # None: not running

    @property
    def running(self) -> bool:
        return self.pid is not None


def find(runtime_dir: Path, name: str) -> Instance:
    """The instance ``name``, or the one whose QMP socket is the path ``name``."""
    if "/" in name:
        qmp = Path(name)
        return Instance(qmp.parent.name, qmp, running_pid(qmp.parent / PID_FILE))
    directory = runtime_dir / name
    return Instance(name, directory / QMP_SOCKET, running_pid(directory / PID_FILE))


def scan(runtime_dir: Path) -> list[Instance]:
    """Every instance directory with a QMP socket, by name."""
    try:
        names = sorted(entry.name for entry in runtime_dir.iterdir() if (entry / QMP_SOCKET).exists())
    except OSError:
        return []
    return [find(runtime_dir, name) for name in names]


def running_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if a process holds its lock (vmd runs)."""
    try:
        fd = os.open(pid_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held: vmd runs
            return int(os.read(fd, 32) or b"0") or None
        return None  # nobody holds it: left behind by a killed vmd
    except ValueError:
        return None
    finally:
        os.close(fd)
