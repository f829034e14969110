"""A QMP monitor on a single-stream chardev (stdio, pty, pipe, file, ...).

The monitor is the chardev's front end. Each time a peer appears on the
chardev a fresh ``QMPConnection`` starts (greeting, negotiation), exactly
as on a socket; the connection writes through ``_ChardevTransport``, which
turns the chardev's flow control into asyncio's ``pause_writing`` /
``pause_reading`` so the connection code is the same for every transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmd.chardev.base import OUTPUT_LIMIT, Chardev
from vmd.qmp.connection import QMPConnection
from vmd.qmp.session import QMPSession

if TYPE_CHECKING:
    from vmd.daemon import Daemon

_INPUT_CHUNK = 4096


class _ChardevTransport:
    """The subset of ``asyncio.Transport`` a QMPConnection uses."""

    def __init__(self, monitor: QMPChardevMonitor) -> None:
        self._monitor = monitor
        self._pending = bytearray()
        self._high = OUTPUT_LIMIT
        self.reading = True
        self.closed = False

    def set_write_buffer_limits(self, high: int | None = None,
                                low: int | None = None) -> None:
        self._high = high or OUTPUT_LIMIT

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """A chardev has no socket, hence no peer to describe."""
        return default

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self._pending += data
        self.flush()
        if len(self._pending) > self._high:
            self._monitor.connection.pause_writing()

    def flush(self) -> None:
        """Move pending output into the chardev as far as it takes it."""
        if self._pending:
            taken = self._monitor.chardev.write(bytes(self._pending))
            del self._pending[:taken]
        if len(self._pending) <= self._high // 2:
            self._monitor.connection.resume_writing()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self._monitor.chardev.accept_input()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.close()
        self._pending.clear()


class QMPChardevMonitor:
    """A ``-mon chardev=ID,mode=control`` monitor on a non-socket chardev."""

    def __init__(self, daemon: Daemon, chardev: Chardev) -> None:
        self.daemon = daemon
        self.chardev = chardev
        self.connection: Any = None
        self._transport: _ChardevTransport | None = None

    def start(self) -> None:
        self.chardev.attach(self)

    # -- CharFrontend ----------------------------------------------------------

    def chr_open(self) -> None:
        session = QMPSession(self.daemon, self.daemon.dispatcher)
        self.connection = QMPConnection(session, lambda _connection: None)
        self._transport = _ChardevTransport(self)
        self.connection.connection_made(self._transport)

    def chr_close(self) -> None:
        if self.connection is not None:
            self.connection.connection_lost(None)
        self.connection = None
        self._transport = None

    def chr_can_receive(self) -> int:
        transport = self._transport
        return _INPUT_CHUNK if transport is not None and transport.reading else 0

    def chr_receive(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.data_received(data)

    def chr_writable(self) -> None:
        if self._transport is not None:
            self._transport.flush()

    def chr_break(self) -> None:
        pass
