"""The qtest protocol on the ``-qtest`` chardev (its front end).

QEMU creates the chardev ``qtest`` from ``-qtest DEV`` (usually
``unix:path=P``: vmd connects to the test, which listens) and resets the
machine when the client connects; on ``-M none`` a reset changes nothing.
Answers go out as the commands come in, in order.
"""

from __future__ import annotations

from typing import Any

from vmd.chardev.base import Chardev
from vmd.qtest.clock import VirtualClock
from vmd.qtest.protocol import QtestProtocol


class QtestFrontend:
    """CharFrontend that runs each command line as it arrives."""

    def __init__(self, chardev: Chardev, clock: VirtualClock | None) -> None:
        self.chardev = chardev
        self.protocol = QtestProtocol(clock)

    def start(self) -> None:
        self.chardev.attach(self)

    def chr_open(self) -> None:
        pass

    def chr_close(self) -> None:
        pass

    def chr_can_receive(self) -> int:
        return 4096

    def chr_receive(self, data: bytes) -> None:
        answers = self.protocol.feed(data)
        if answers:
            self.chardev.write(answers)

    def chr_writable(self) -> None:
        pass

    def chr_break(self) -> None:
        pass


def start_qtest(daemon: Any, chardev_id: str) -> None:
    """Serve qtest on chardev ``chardev_id``; under ``-accel qtest`` it
    moves the virtual clock (which start-up made, at 0)."""
    from vmd.qtest import clock
    QtestFrontend(daemon.chardevs.find(chardev_id), clock.VIRTUAL).start()
