"""The graceful stop on SIGTERM: the guest's grace time (vmd/system/stop.py).

These run a real Daemon and StopController in the test's event loop and
send the test process real signals. The guest is played by the hook the
machine fills in (``Daemon.guest_power_down``): pressing the power button
either leads to a guest shutdown a little later (as the machine reports it:
``request_shutdown(guest-shutdown)``, or the ``shutdown`` run state under
``-no-shutdown``) or to nothing at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import until
from tests.notify import NotifyReceiver
from vmd._generated.commands import COMMANDS
from vmd._generated.types import RunState, ShutdownCause
from vmd.cli.config import Config
from vmd.daemon import Daemon
from vmd.qmp.dispatch import Dispatcher
from vmd.qmp.handlers import Handlers
from vmd.system.sd_notify import Notifier
from vmd.system.stop import CLOSE_MARGIN, StopController


@dataclass(eq=False)
class Events:
    """An event sink, as a QMP client connection is to the broadcaster."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    def send_event(self, encoded: bytes) -> None:
        self.seen.append(json.loads(encoded))


@dataclass
class Rig:
    daemon: Daemon
    notify: NotifyReceiver
    events: Events
    presses: list[float] = field(default_factory=list)

    def guest(self, then: Callable[[], object] | None, running: bool = True) -> None:
        """A guest whose power button runs ``then`` 50 ms later (None: ignored)."""
        def press() -> bool:
            self.presses.append(time.monotonic())
            if then is not None:
                asyncio.get_running_loop().call_later(0.05, then)
            return running
        self.daemon.guest_power_down = press

    def shutdown_events(self) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events.seen if e["event"] == "SHUTDOWN"]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    loop = asyncio.get_running_loop()
    daemon = Daemon(Config(), Dispatcher(COMMANDS, Handlers(COMMANDS)), loop)
    events = Events()
    daemon.events.add(events)
    with NotifyReceiver(tmp_path / "notify.sock") as notify:
        yield Rig(daemon, notify, events)


async def _stop(rig: Rig, grace: float, second: int | None = None) -> ShutdownCause:
    """SIGTERM (and, once the button was pressed, ``second``); the daemon's shutdown cause."""
    stopper = StopController(rig.daemon, Notifier(str(rig.notify.path)), grace)
    stopper.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        if second is not None:
            await until(lambda: rig.presses)
            os.kill(os.getpid(), second)
        return await asyncio.wait_for(rig.daemon.wait_for_shutdown(), 10)
    finally:
        stopper.close()


async def test_guest_that_powers_down_in_time(rig: Rig) -> None:
    rig.guest(lambda: rig.daemon.request_shutdown(ShutdownCause.GUEST_SHUTDOWN))
    assert await _stop(rig, grace=30) == ShutdownCause.GUEST_SHUTDOWN
    assert len(rig.presses) == 1
    assert rig.shutdown_events() == [{"guest": True, "reason": "guest-shutdown"}]
    first, second = rig.notify.receive(), rig.notify.receive()
    assert first.fields == {"STOPPING": "1",
                            "STATUS": "stopping: waiting up to 30 s for the guest to power down"}
    extend = int(second.fields["EXTEND_TIMEOUT_USEC"])
    assert (30 + CLOSE_MARGIN - 1) * 1e6 < extend <= (30 + CLOSE_MARGIN) * 1e6


async def test_guest_that_ignores_the_power_button(rig: Rig) -> None:
    rig.guest(None)
    assert await _stop(rig, grace=0.3) == ShutdownCause.HOST_SIGNAL
    assert time.monotonic() - rig.presses[0] >= 0.3  # the whole grace time, then the stop
    assert rig.shutdown_events() == [{"guest": False, "reason": "host-signal"}]
    keys = rig.notify.keys()
    assert keys[:2] == ["STOPPING", "STATUS"] and keys.count("EXTEND_TIMEOUT_USEC") >= 2


async def test_second_signal_stops_at_once(rig: Rig) -> None:
    rig.guest(None)
    assert await _stop(rig, grace=600, second=signal.SIGINT) == ShutdownCause.HOST_SIGNAL
    assert len(rig.presses) == 1
    assert rig.shutdown_events() == [{"guest": False, "reason": "host-signal"}]


async def test_guest_shutdown_under_no_shutdown_ends_the_wait(rig: Rig) -> None:
    def guest_off() -> None:
        rig.daemon.runstate.status = RunState.SHUTDOWN
    rig.guest(guest_off)
    assert await _stop(rig, grace=600) == ShutdownCause.HOST_SIGNAL


async def test_no_running_guest_stops_at_once(rig: Rig) -> None:
    rig.guest(None, running=False)
    assert await _stop(rig, grace=600) == ShutdownCause.HOST_SIGNAL
    assert rig.notify.receive().fields == {"STOPPING": "1", "STATUS": "stopping"}
    assert "EXTEND_TIMEOUT_USEC" not in rig.notify.keys()
