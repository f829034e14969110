"""The main loop: QEMU's main thread and its AioContext.

Thread model (the equivalent of QEMU's big lock):
* the event loop thread owns the ``Daemon`` and everything reachable from
  it: run state, monitors, connections, and later the block graph and jobs.
  QMP handlers run on it, one at a time, so they need no locks;
* other threads (vCPU threads, I/O workers, added by later subsystems)
  never touch that state; they hand work to the loop with
  ``loop.call_soon_threadsafe`` (``EventBroadcaster.emit`` does this) and
  wait on futures, never the other way round.
"""

from __future__ import annotations

import asyncio
import logging
import os

from vmd._generated.commands import COMMANDS
from vmd.cli.config import Config
from vmd.daemon import Daemon
from vmd.early_greeter import EarlyGreeter
from vmd.qmp.dispatch import Dispatcher
from vmd.qmp.errors import QMPError
from vmd.qmp.handlers import Handlers
from vmd.system import listen_fds
from vmd.system.accel import AccelError, choose_accelerator
from vmd.system.chardevs import create_chardevs
from vmd.system.process import Daemonizer, PidFile, StartupError
from vmd.system.sd_notify import Notifier
from vmd.system.stop import StopController

log = logging.getLogger(__name__)


def check_supported(config: Config) -> None:
    """Refuse guest options on a machine without a guest, clearly."""
    if config.machine.get("type") != "none":
        return
    unsupported = [("-device", config.devices), ("-kernel", config.kernel)]
    for option, value in unsupported:
        if value:
            raise StartupError(f"{option} needs a machine with a guest (-M pc)")


async def run(config: Config, daemonizer: Daemonizer | None,
              early: EarlyGreeter, notifier: Notifier, stop_grace: float) -> int:
    """Start the monitors, serve until shutdown, return the exit status.

    ``READY=1`` goes out only after everything above it: every QMP socket
    listens and greets (the loop accepts as soon as this coroutine waits),
    and the guest is started, or left paused with ``-S``.
    """
    loop = asyncio.get_running_loop()
    dispatcher = Dispatcher(COMMANDS, Handlers(COMMANDS))
    daemon = Daemon(config, dispatcher, loop)
    try:
        daemon.accel = choose_accelerator(config)
    except AccelError as error:
        raise StartupError(str(error)) from None
    early.stop()
    if daemon.accel == "qtest":   # QEMU_CLOCK_VIRTUAL from the start: throttling and accounting use it
        from vmd.qtest import clock
        clock.VIRTUAL = clock.VirtualClock()
    if config.objects:
        from vmd.system.startup_commands import create_objects
        await create_objects(daemon, config)
    if "memory-backend" in config.machine:
        from vmd.qom.user_objects import use_machine_memory_backend
        try:
            use_machine_memory_backend(daemon.objects, config.machine["memory-backend"], config.memory_bytes)
        except QMPError as error:
            raise StartupError(str(error)) from None
    if config.blockdevs:
        from vmd.system.startup_commands import create_blockdevs
        await create_blockdevs(daemon, config)
    if config.drives:
        from vmd.system.startup_commands import create_drives
        await create_drives(daemon, config)
    await create_chardevs(daemon, config, early)
    if config.qtest is not None:
        from vmd.qtest.frontend import start_qtest
        start_qtest(daemon, config.qtest)
    early.abandon()  # anything the monitors did not take
    listen_fds.close_unused()
    if config.machine.get("type") != "none":
        from vmd.machine.vm import Machine
        daemon.machine = Machine(daemon, loop)
        daemon.runstate.vcpus = daemon.machine
        daemon.guest_power_down = daemon.machine.press_power_button
    for monitor in daemon.monitors:
        await monitor.wait_for_client_if_asked()
    pidfile = PidFile(config.pidfile) if config.pidfile else None
    stopper = StopController(daemon, notifier, stop_grace)
    stopper.install()
    if daemon.machine is not None:
        daemon.machine.start(running=daemon.runstate.running)
    if daemonizer is not None:
        await daemonizer.ready()  # the parent sends READY=1 and MAINPID=
        notifier.send(STATUS=daemon.runstate.status)
    else:
        notifier.send(READY=1, STATUS=daemon.runstate.status, MAINPID=os.getpid())
    daemon.runstate.add_listener(lambda status: notifier.send(STATUS=status))
    notifier.start_watchdog(loop)
    try:
        await daemon.wait_for_shutdown()
        stopper.stopping()
    finally:
        stopper.close()
        if daemon.machine is not None:
            daemon.machine.close()
        await daemon.chardevs.close_all()
        await daemon.close_storage()
        if pidfile is not None:
            pidfile.remove()
        await asyncio.sleep(0)  # let closing transports flush their output
        notifier.close()
    return daemon.exit_status
