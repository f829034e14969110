"""The daemon: the state every subsystem and command handler reaches.

QEMU keeps this state in globals guarded by the big QEMU lock. vmd keeps it
in one ``Daemon`` object owned by the event loop thread: command handlers
run on the loop and may touch it freely; other threads (vCPUs, I/O workers,
added by later subsystems) must hand work to the loop with
``loop.call_soon_threadsafe`` rather than touch it directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from vmd import version
from vmd._generated import events
from vmd._generated.types import ShutdownCause
from vmd.block.edge import drained
from vmd.block.graph import BlockGraph
from vmd.block.nbd.commands import NBDExports
from vmd.chardev.registry import ChardevRegistry
from vmd.cli.config import Config
from vmd.job.registry import JobRegistry
from vmd.qmp.dispatch import CommandTurns, Dispatcher
from vmd.qmp.events import EventBroadcaster
from vmd.system.runstate import RunStateMachine

log = logging.getLogger(__name__)

class Daemon:
    """Everything a running vmd instance owns."""

    def __init__(self, config: Config, dispatcher: Dispatcher,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.dispatcher = dispatcher
        #: In-band commands of all monitors run one at a time.
        self.turns = CommandTurns()
        self.events = EventBroadcaster(loop)
        self.runstate = RunStateMachine(self.events, config.start_paused)
        self.monitors: list[Any] = []
        self.chardevs = ChardevRegistry()
        self.block = BlockGraph()
        self.nbd = NBDExports()
        self.chardevs.quit_handler = self.request_shutdown
        self.jobs = JobRegistry(self.events)
        # Set by the machine: press the guest's power button; False when no
        # guest will act on it. SIGTERM waits for the guest (system/stop.py).
        self.guest_power_down: Callable[[], bool] | None = None
        self._shutdown = loop.create_future()

    @property
    def name(self) -> str | None:
        return self.config.name

    def version_info(self) -> dict[str, Any]:
        """``query-version``'s reply, also sent in every QMP greeting."""
        return version.version_info()

    def request_shutdown(self, cause: ShutdownCause) -> None:
        """Emit SHUTDOWN now and have the main loop exit soon after."""
        if self._shutdown.done():
            return
        guest = cause.startswith("guest-")
        events.qapi_event_send_shutdown(self.events, guest=guest, reason=cause)
        log.debug("shutting down (%s)", cause)
        self._shutdown.set_result(cause)

    async def close_storage(self) -> None:
        """Shut the block layer down in QEMU's order: quiesce every user
        and let its requests in flight finish, cancel the jobs and wait for
        them, stop the exports, then close the nodes (images are left
        clean)."""
        async with drained(*self.block):
            await self.jobs.cancel_sync_all()
        await self.nbd.stop()
        await self.block.close_all()

    async def wait_for_shutdown(self) -> ShutdownCause:
        result: ShutdownCause = await self._shutdown
        return result
