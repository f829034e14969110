"""The daemon: the state every subsystem and command handler reaches.

QEMU keeps this state in globals guarded by the big QEMU lock. vmd keeps it
in one ``Daemon`` object owned by the event loop thread: command handlers
run on the loop and may touch it freely; other threads (vCPUs, I/O workers,
added by later subsystems) must hand work to the loop with
``loop.call_soon_threadsafe`` rather than touch it directly.

The block graph, the NBD exports and the jobs are made when first used:
a monitor-only daemon never imports those subsystems, which keeps the time
from start to the first command reply short.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

from vmd import version
from vmd._generated import events
from vmd.chardev.registry import ChardevRegistry
from vmd.cli.config import Config
from vmd.qmp.dispatch import CommandTurns, Dispatcher
from vmd.qmp.events import EventBroadcaster
from vmd.system.runstate import RunStateMachine

if TYPE_CHECKING:
    from vmd._generated.types import ShutdownCause
    from vmd.block.graph import BlockGraph
    from vmd.block.nbd.commands import NBDExports
    from vmd.job.registry import JobRegistry
    from vmd.qom.user_objects import UserObjects

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
        self.chardevs.quit_handler = self.request_shutdown
        #: The accelerator in use, "kvm", "tcg" or "qtest" (vmd.system.accel).
        self.accel = "tcg"
        # Set by the machine: press the guest's power button; False when no
        # guest will act on it. SIGTERM waits for the guest (system/stop.py).
        self.guest_power_down: Callable[[], bool] | None = None
        #: The guest machine (``vmd.machine.vm.Machine``); None with ``-M none``.
        self.machine: Any = None
        self.exit_status = 0
        self._loop = loop
        self._shutdown = loop.create_future()

    @cached_property
    def block(self) -> BlockGraph:
        from vmd.block.graph import BlockGraph
        return BlockGraph()

    @cached_property
    def nbd(self) -> NBDExports:
        from vmd.block.nbd.commands import NBDExports
        return NBDExports()

    @cached_property
    def jobs(self) -> JobRegistry:
        from vmd.job.registry import JobRegistry
        return JobRegistry(self.events)

    @cached_property
    def objects(self) -> UserObjects:
        """``-object``/``object-add`` objects (vmd.qom.user_objects)."""
        from vmd.qom.user_objects import UserObjects
        return UserObjects()

    @cached_property
    def migration_capabilities(self) -> dict[Any, bool]:
        """Migration capability states (``vmd.migration.commands``)."""
        from vmd.migration.commands import new_capability_states
        return new_capability_states()

    @property
    def name(self) -> str | None:
        return self.config.name

    def version_info(self) -> dict[str, Any]:
        """``query-version``'s reply, also sent in every QMP greeting."""
        return version.version_info()

    def request_shutdown(self, cause: ShutdownCause) -> None:
        """Emit SHUTDOWN now and have the main loop exit soon after.

        A guest's shutdown under ``-no-shutdown`` stops the VM in state
        ``shutdown`` instead; host requests (quit, signals) always exit.
        """
        if self._shutdown.done():
            return
        guest = cause.startswith("guest-")
        if self.accel == "qtest" and not guest:
            # QEMU runs the request in the main loop; under qtest its
            # SHUTDOWN then follows the reply of ``quit`` (the order of its
            # own test suite), under TCG or KVM it comes first.
            self._loop.call_soon(partial(events.qapi_event_send_shutdown, self.events, guest=False, reason=cause))
        else:
            events.qapi_event_send_shutdown(self.events, guest=guest, reason=cause)
        if guest and self.config.no_shutdown:
            from vmd._generated.types import RunState
            self.runstate.stop(RunState.SHUTDOWN)
            return
        log.debug("shutting down (%s)", cause)
        self._shutdown.set_result(cause)

    async def close_storage(self) -> None:
        """Shut the block layer down in QEMU's order: quiesce every user
        and let its requests in flight finish, cancel the jobs and wait for
        them, stop the exports, then close the nodes (images are left
        clean). A daemon that never used the block layer, exports or jobs
        has nothing to do.
        """
        if not {"block", "nbd", "jobs"} & vars(self).keys():
            return
        from vmd.block.edge import drained
        async with drained(*self.block):
            await self.jobs.cancel_sync_all()
        await self.nbd.stop()
        await self.block.close_all()

    def request_exit(self, status: int) -> None:
        """Exit with ``status`` without a SHUTDOWN event (isa-debug-exit)."""
        if not self._shutdown.done():
            from vmd._generated.types import ShutdownCause
            self.exit_status = status
            self._shutdown.set_result(ShutdownCause.NONE)

    async def wait_for_shutdown(self) -> ShutdownCause:
        result: ShutdownCause = await self._shutdown
        return result
