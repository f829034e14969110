"""Running qemu-img and qemu-io, the independent oracles of image tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


def qimg(*args: str | Path) -> str:
    """``qemu-img ARGS``; its stdout; fails the test if it fails."""
    result = run("qemu-img", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def qio(path: Path, *cmds: str) -> None:
    """``qemu-io -c CMD ... PATH``; fails the test on any reported error."""
    args: list[str] = []
    for c in cmds:
        args += ["-c", c]
    result = run("qemu-io", *args, path)
    assert result.returncode == 0 and "error" not in result.stdout.lower(), result.stdout + result.stderr
