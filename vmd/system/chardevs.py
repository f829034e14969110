"""Creating the command line's chardevs and the monitors on them.

Order follows QEMU: every ``-chardev`` (and the chardevs implied by
``-qmp``/``-monitor``/``-serial``) is opened first, then monitors attach as
front ends. A control monitor on a server socket is a ``QMPMonitor`` (it
serves many clients at once and owns its socket); every other monitor is
the front end of a chardev from the registry.

Back-ends and the chardev monitor are imported only when the command line
asks for them: ``-qmp unix:...`` alone loads none of them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from vmd.cli.config import ChardevConfig, Config
from vmd.cli.errors import OptionError
from vmd.early_greeter import EarlyGreeter
from vmd.qmp.access import check_monitor_listener
from vmd.qmp.errors import QMPError
from vmd.qmp.server import QMPMonitor
from vmd.system.process import StartupError

if TYPE_CHECKING:
    from vmd._generated.types import ChardevBackend
    from vmd.daemon import Daemon


async def create_chardevs(daemon: Daemon, config: Config,
                          early: EarlyGreeter) -> None:
    """Open all chardevs, then start all monitors on them."""
    for monitor_config in config.monitors:
        try:
            check_monitor_listener(_chardev(config, monitor_config.chardev))
        except OptionError as error:
            raise StartupError(str(error)) from None
    listeners = {m.chardev for m in config.monitors if m.mode == "control"
                 and QMPMonitor.serves(_chardev(config, m.chardev))}
    for chardev in config.chardevs:
        if chardev.id not in listeners:
            await _open(daemon, chardev)
    for monitor_config in config.monitors:
        chardev = _chardev(config, monitor_config.chardev)
        if chardev.id in listeners:
            monitor = QMPMonitor(daemon, chardev, early)
            await monitor.start()
            daemon.monitors.append(monitor)
        elif monitor_config.mode == "control":
            from vmd.qmp.chardev_monitor import QMPChardevMonitor
            QMPChardevMonitor(daemon, daemon.chardevs.find(chardev.id)).start()
        else:
            from vmd.hmp.monitor import HmpMonitor
            HmpMonitor(daemon, daemon.chardevs.find(chardev.id)).start()


def _chardev(config: Config, chardev_id: str) -> ChardevConfig:
    chardev = config.chardev(chardev_id)
    assert chardev is not None, "the command-line parser checks references"
    return chardev


async def _open(daemon: Daemon, chardev: ChardevConfig) -> None:
    from vmd.chardev.cli import backend_spec
    try:
        spec, mux = backend_spec(chardev)
        base_id = chardev.id if mux is None else f"{chardev.id}-base"
        if _waits(spec):
            print(f"vmd: info: waiting for connection on chardev "
                  f"'{chardev.id}'", file=sys.stderr, flush=True)
        await daemon.chardevs.add(base_id, spec)
        if mux is not None:
            await daemon.chardevs.add(chardev.id, mux)
    except (OptionError, QMPError) as error:
        raise StartupError(f"-chardev {chardev.id}: {error}") from None


def _waits(spec: ChardevBackend) -> bool:
    """A server socket that holds start-up until its first client."""
    from vmd._generated.types import ChardevSocketWrapper
    if not isinstance(spec.u, ChardevSocketWrapper):
        return False
    return bool(spec.u.data.server and spec.u.data.wait)
