"""Shared fixtures: a running vmd and, where installed, a running QEMU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import QEMU, VmdProcess, running_qemu, running_vmd


@pytest.fixture
def vmd(tmp_path: Path) -> Iterator[VmdProcess]:
    with running_vmd(tmp_path, "-name", "testvm") as process:
        yield process


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Path]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with running_qemu(tmp_path, "-name", "testvm") as path:
        yield path


_kvm_outcomes: dict[str, int] = {"ran": 0, "skipped": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the tests that need /dev/kvm, for the closing summary."""
    if "kvm" not in report.keywords:
        return
    if report.when == "call":
        _kvm_outcomes["ran"] += 1
    elif report.when == "setup" and report.skipped:
        _kvm_outcomes["skipped"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(
        f"tests needing /dev/kvm: {_kvm_outcomes['ran']} ran, "
        f"{_kvm_outcomes['skipped']} skipped")
