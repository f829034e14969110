"""Stopping vmd on a signal: the guest's grace time, then shutdown.

QEMU quits at once on SIGTERM, SIGINT and SIGHUP (``terminating on signal
15``, SHUTDOWN with reason ``host-signal``). vmd is run as a service that
keeps a guest for months, so it stops the way an administrator would:

1. the first SIGTERM or SIGINT begins a stop: ``STOPPING=1`` to systemd,
   then, if a guest runs, its power button is pressed (as
   ``system_powerdown``) and vmd waits up to the grace time
   (``-stop-grace``) for it to shut down, telling systemd
   ``EXTEND_TIMEOUT_USEC=`` meanwhile so the unit's stop timeout does not
   cut the wait short;
2. when the guest has shut down, or the grace time is over, or there is no
   guest, SHUTDOWN (``host-signal``) is emitted and the main loop closes
   everything (chardevs, exports, block nodes: flushed and closed) and
   exits 0;
3. a second SIGTERM or SIGINT during the grace time stops at once; the
   closing in step 2 still runs, so images are still flushed.

SIGHUP reopens the ``-D`` log file (logrotate) instead of quitting.

The guest half is a hook the machine fills in: ``Daemon.guest_power_down``
presses the power button and says whether a guest will act on it (False:
no guest, or not running). The wait is this module's (see
``_wait_for_guest``).

Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from vmd._generated.types import RunState, ShutdownCause
from vmd.system import trace
from vmd.system.log import reopen_log_file
from vmd.system.sd_notify import Notifier

if TYPE_CHECKING:
    from vmd.daemon import Daemon

log = logging.getLogger(__name__)

#: Default ``-stop-grace``: how long a guest gets to power down on SIGTERM.
DEFAULT_GRACE = 60.0
#: How often EXTEND_TIMEOUT_USEC= is renewed while waiting for the guest.
EXTEND_PERIOD = 5.0
#: What EXTEND_TIMEOUT_USEC= asks for beyond the remaining grace time:
#: closing block nodes (flushing their caches) after the wait.
CLOSE_MARGIN = 30.0


class StopController:
    """Signal handling and the graceful stop of one daemon."""

    def __init__(self, daemon: Daemon, notifier: Notifier, grace: float) -> None:
        self._daemon = daemon
        self._notifier = notifier
        self._grace = grace
        self._loop = asyncio.get_running_loop()
        self._wait: asyncio.Task[None] | None = None
        self._stopping = False
        self._guest_off = asyncio.Event()
        daemon.runstate.add_listener(self._on_runstate)

    def install(self) -> None:
        """Take over SIGTERM, SIGINT and SIGHUP on the loop."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self.on_stop_signal, signum)
        self._loop.add_signal_handler(signal.SIGHUP, self._on_hangup)

    def on_stop_signal(self, signum: int) -> None:
        """First signal: stop gracefully; another one during the wait: at once."""
        trace.event("vmd_signal", f"signal={signum}")
        if self._wait is not None and not self._wait.done():
            log.info("terminating on signal %d: not waiting for the guest any longer", signum)
            self._wait.cancel()
            self._daemon.request_shutdown(ShutdownCause.HOST_SIGNAL)
            return
        if self._stopping:
            return  # already closing down; closing still flushes everything
        power_down = self._daemon.guest_power_down
        if power_down is None or not power_down():
            log.info("terminating on signal %d", signum)
            self.stopping()
            self._daemon.request_shutdown(ShutdownCause.HOST_SIGNAL)
            return
        log.info("signal %d: the guest has %g s to power down", signum, self._grace)
        self.stopping(f"stopping: waiting up to {self._grace:g} s for the guest to power down")
        self._wait = self._loop.create_task(self._wait_for_guest())

    def stopping(self, status: str = "stopping") -> None:
        """Tell systemd a stop has begun (once, whatever began it)."""
        if not self._stopping:
            self._stopping = True
            trace.event("vmd_stop_begin", status)
            self._notifier.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        """End the wait for the guest (shutdown is under way).

        The signal handlers stay until the loop closes: a signal while the
        block layer flushes must not kill vmd with its default action.
        """
        if self._wait is not None:
            self._wait.cancel()

    async def _wait_for_guest(self) -> None:
        """Wait out the grace time unless the guest shuts down first.

        A guest that powers off normally makes the machine request the
        daemon's shutdown, which ends the main loop and cancels this wait;
        with ``-no-shutdown`` the run state becomes ``shutdown`` instead.
        """
        deadline = self._loop.time() + self._grace
        while not self._guest_off.is_set():
            remaining = max(deadline - self._loop.time(), 0.0)
            self._notifier.send(EXTEND_TIMEOUT_USEC=int((remaining + CLOSE_MARGIN) * 1e6))
            trace.event("vmd_stop_guest_wait", f"remaining={remaining:.1f}")
            if remaining <= 0:
                log.warning("the guest did not power down within %g s; stopping it", self._grace)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._guest_off.wait(), min(EXTEND_PERIOD, remaining))
        self._daemon.request_shutdown(ShutdownCause.HOST_SIGNAL)

    def _on_runstate(self, status: RunState) -> None:
        if status == RunState.SHUTDOWN:
            self._guest_off.set()

    def _on_hangup(self) -> None:
        trace.event("vmd_signal", f"signal={signal.SIGHUP}")
        self._loop.run_in_executor(None, reopen_log_file)
