"""The systemd notification protocol (sd_notify(3)), without libsystemd.

With ``Type=notify`` systemd waits for ``READY=1`` on the datagram socket
named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace);
each datagram holds newline-separated ``KEY=VALUE`` lines. What vmd sends:

* ``READY=1`` once every QMP socket greets clients and the guest runs (or
  waits paused under ``-S``), with the first ``STATUS=``;
* ``STATUS=<run state>`` whenever the run state changes, and what a stop is
  waiting for;
* ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC``, from a timer on the event
  loop, so that a stuck loop stops the pings and systemd's watchdog fires;
* ``STOPPING=1`` when a stop begins, ``EXTEND_TIMEOUT_USEC=`` while a guest
  power-down takes long, ``MAINPID=`` from the parent of ``-daemonize``.

The environment is read once, before ``-daemonize`` forks: systemd names the
pid it started in ``$WATCHDOG_PID``, and the daemon keeps pinging after it
has taken over that role with ``MAINPID=``.

Tests use the same protocol to know when vmd is ready, instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from vmd.system import trace

log = logging.getLogger(__name__)


class Notifier:
    """The daemon's end of ``$NOTIFY_SOCKET``; owned by the event loop thread.

    Sending never blocks: the socket is non-blocking and a datagram the
    manager cannot take right now is dropped with a debug message (systemd
    reads its notify socket promptly; a lost STATUS= is harmless and a lost
    ping is made up by the next one).
    """

    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self._address = address
        self._socket: socket.socket | None = None
        self.watchdog_usec = watchdog_usec
        self._watchdog: asyncio.TimerHandle | None = None

    @classmethod
    def from_environ(cls) -> Notifier:
        """What systemd passed in the environment (nothing: a no-op notifier)."""
        address = os.environ.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        return cls(address, _watchdog_usec())

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: object) -> bool:
        """Send one datagram, e.g. ``send(READY=1, STATUS="running")``."""
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self._address)
        except OSError as error:
            log.debug("sd_notify: %s not sent: %s", message.replace("\n", " "), error)
            return False
        trace.event("vmd_sd_notify", message.replace("\n", " "))
        return True

    def start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping every half watchdog period from ``loop`` until ``close``."""
        if self.watchdog_usec <= 0 or self._address is None:
            return
        interval = self.watchdog_usec / 2e6

        def ping() -> None:
            self.send(WATCHDOG=1)
            self._watchdog = loop.call_later(interval, ping)

        ping()

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_usec() -> int:
    """``$WATCHDOG_USEC`` when it is meant for this process (sd_watchdog_enabled)."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        pid = os.environ.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return 0
    except ValueError:
        return 0
    return max(usec, 0)
