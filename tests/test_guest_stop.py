"""SIGTERM with a guest: power button, grace time, then stop (vmd/system/stop.py).

The ``powerdown`` test guest with ``-append s5`` answers the power button
as an OS does (ACPI S5); the ``count`` guest ignores it. vmd is watched as
systemd would: a ``NotifyReceiver`` gets STOPPING=1 and EXTEND_TIMEOUT_USEC=.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest_harness import GuestVM, require
from tests.notify import NotifyReceiver

pytestmark = pytest.mark.kvm


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyReceiver]:
    require("vmd")
    with NotifyReceiver(tmp_path / "notify.sock") as receiver:
        monkeypatch.setenv("NOTIFY_SOCKET", str(receiver.path))
        yield receiver


def test_guest_that_powers_off_on_the_button(tmp_path: Path, notify: NotifyReceiver) -> None:
    with GuestVM("vmd", "powerdown", tmp_path, "-m", "16", "-append", "s5", "-stop-grace", "60") as vm, \
            vm.qmp() as qmp:
        notify.wait_for("READY")
        vm.wait_for_output("waiting (acpi yes)\n")
        vm.process.send_signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING")
        assert stopping.fields == {"STOPPING": "1",
                                   "STATUS": "stopping: waiting up to 60 s for the guest to power down"}
        qmp.wait_event("POWERDOWN")
        assert qmp.wait_event("SHUTDOWN")["data"] == {"guest": True, "reason": "guest-shutdown"}
        assert vm.wait() == 0
    assert vm.output == "waiting (acpi yes)\npower button\npowering off\n"
    assert "EXTEND_TIMEOUT_USEC" in notify.keys()


def test_guest_that_ignores_the_button_is_stopped_after_the_grace(tmp_path: Path,
                                                                   notify: NotifyReceiver) -> None:
    with GuestVM("vmd", "count", tmp_path, "-m", "16", "-stop-grace", "2") as vm, vm.qmp() as qmp:
        notify.wait_for("READY")
        vm.wait_for_output("tick 1\n")
        vm.process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING")
        pressed = time.monotonic()
        qmp.wait_event("POWERDOWN")
        assert qmp.wait_event("SHUTDOWN")["data"] == {"guest": False, "reason": "host-signal"}
        waited = time.monotonic() - pressed
        assert vm.wait() == 0
    assert waited > 1.5  # the grace time (2 s) passed first
    assert notify.keys().count("EXTEND_TIMEOUT_USEC") >= 1


def test_second_sigterm_ends_the_grace_at_once(tmp_path: Path, notify: NotifyReceiver) -> None:
    with GuestVM("vmd", "count", tmp_path, "-m", "16", "-stop-grace", "600") as vm, vm.qmp() as qmp:
        notify.wait_for("READY")
        vm.wait_for_output("tick 1\n")
        vm.process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING")
        qmp.wait_event("POWERDOWN")
        vm.process.send_signal(signal.SIGTERM)
        assert qmp.wait_event("SHUTDOWN")["data"] == {"guest": False, "reason": "host-signal"}
        assert vm.wait(60) == 0


@pytest.mark.qemu
def test_qemu_powers_off_the_same_guest(tmp_path: Path) -> None:
    """The guest's S5 is what QEMU's pc does on it too (QEMU: system_powerdown over QMP)."""
    with GuestVM("qemu", "powerdown", tmp_path, "-m", "16", "-append", "s5") as vm, vm.qmp() as qmp:
        vm.wait_for_output("waiting (acpi yes)\n")
        assert qmp.command({"execute": "system_powerdown"}) == {"return": {}}
        assert qmp.wait_event("SHUTDOWN")["data"] == {"guest": True, "reason": "guest-shutdown"}
        assert vm.wait() == 0
    assert vm.output == "waiting (acpi yes)\npower button\npowering off\n"
