"""Event notifiers: eventfds that call a device back on the event loop.

A device that wants work done off the vCPU thread (a virtio queue kick)
gets a ``LoopNotifier``: anyone may ``set`` it (a vCPU thread, another
device, or KVM itself when the eventfd is an ioeventfd), and the loop
runs the callback with the BQL held. Several signals before the loop gets
to it coalesce into one call, as eventfd counters do: callbacks must
process everything pending, not one item per call.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable


class LoopNotifier:
    """An eventfd watched by the event loop; created and closed on the loop thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, bql: threading.Lock,
                 callback: Callable[[], None]) -> None:
        self._loop = loop
        self._bql = bql
        self._callback = callback
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self.fd, self._ready)

    def set(self) -> None:
        os.eventfd_write(self.fd, 1)

    def _ready(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            return
        with self._bql:
            self._callback()

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)
