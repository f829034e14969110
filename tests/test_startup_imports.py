"""A monitor-only vmd loads a subsystem only when a command needs it.

Start-up time is mostly import time, so ``-M none`` with one ``-qmp``
socket must not import the block layer, NBD, chardev back-ends or jobs.
A ``sitecustomize`` module on the daemon's path writes ``sys.modules`` to a
file when the process exits, so the tests read what was imported, not how
long anything took.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness import ROOT, RawQMP, start_vmd, vmd_command

CHARDEV_BACKENDS = tuple("vmd.chardev." + name for name in (
    "cli", "commands", "fdstream", "file", "mux", "null", "pty", "ringbuf",
    "socket", "stdio"))
HEAVY = ("vmd.block", "vmd.job", *CHARDEV_BACKENDS,
         "vmd._generated.types_block_core", "vmd._generated.types_char",
         "vmd._generated.types_job", "vmd._generated.introspect",
         "vmd._generated.jsonschema", "vmd.qom")
#: Standard modules that asyncio and uvloop do not import and a monitor-only
#: vmd does not need: each costs 1-3 ms of every start (dataclasses with
#: every @dataclass, logging.handlers with pickle).
HEAVY_STDLIB = ("dataclasses", "logging.handlers", "pickle", "ipaddress", "ctypes")

_RECORDER = '''\
import atexit
import sys

atexit.register(lambda: open({out!r}, "w").write("\\n".join(sys.modules)))
'''


def recording_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose Python records its modules at exit, and where."""
    site = tmp_path / "site"
    site.mkdir()
    out = tmp_path / "modules.txt"
    (site / "sitecustomize.py").write_text(_RECORDER.format(out=str(out)))
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    return env, out


def run_commands(tmp_path: Path, *commands: str) -> list[str]:
    """Start vmd, negotiate, run ``commands``, quit; the modules it imported."""
    env, out = recording_env(tmp_path)
    vmd = start_vmd(tmp_path, "-M", "none", env=env)
    try:
        with RawQMP(vmd.qmp_path) as qmp:
            qmp.negotiate()
            for command in (*commands, "quit"):
                reply = qmp.command({"execute": command})
                assert "return" in reply, reply
        assert vmd.process.wait(10) == 0
    finally:
        vmd.stop()
    return out.read_text().split("\n")


def heavy(modules: list[str], names: tuple[str, ...] = HEAVY) -> list[str]:
    return [m for m in modules
            if any(m == h or m.startswith(h + ".") for h in names)]


def test_monitor_only_daemon_loads_no_subsystem(tmp_path: Path) -> None:
    modules = run_commands(tmp_path, "query-status", "query-version")
    assert "vmd.system.commands" in modules  # the record covers the commands
    assert heavy(modules) == []
    assert heavy(modules, HEAVY_STDLIB) == []


def test_a_command_loads_its_subsystem(tmp_path: Path) -> None:
    modules = run_commands(tmp_path, "query-named-block-nodes",
                           "query-block-exports")
    assert "vmd.block.commands" in modules
    assert "vmd.block.nbd.commands" in modules
    assert not set(CHARDEV_BACKENDS) & set(modules)


def test_help_loads_no_event_loop(tmp_path: Path) -> None:
    env, out = recording_env(tmp_path)
    result = subprocess.run(vmd_command("--help"), env=env, capture_output=True,
                            text=True, timeout=30, check=True)
    assert "-qmp" in result.stdout
    modules = out.read_text().split("\n")
    assert "vmd.cli" in modules and "uvloop" not in modules
