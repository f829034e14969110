"""A daemon-wide cap on the memory clients can make vmd hold.

Each connection already bounds itself (a QMP client's unread output, an NBD
client's requests in flight), but those bounds multiply with the number of
clients. The cap adds one bound for all of them together: the bytes held
for QMP output a client has not read and for NBD requests and replies a
client has not taken. When the sum passes the cap, the client holding the
most is disconnected and the reason logged; the others go on.

The cap is ``VMD_MEMORY_CAP`` bytes (suffixes k, M, G), 512 MiB by default.
Everything here runs on the event loop thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_CAP = 512 << 20
_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
#: Holders below this are not worth a look (it keeps the common path cheap).
_CHECK_ABOVE = 1 << 20


class Holder:
    """One client: how much it holds now, and how to drop it (compared by identity)."""

    __slots__ = ("describe", "held", "drop")

    def __init__(self, describe: str, held: Callable[[], int], drop: Callable[[], None]) -> None:
        self.describe = describe
        self.held = held
        self.drop = drop


class MemoryCap:
    """The sum of what all holders hold, kept under ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._holders: set[Holder] = set()
        #: Clients disconnected for holding too much (for tests and logs).
        self.dropped = 0

    def add(self, holder: Holder) -> None:
        self._holders.add(holder)

    def remove(self, holder: Holder) -> None:
        self._holders.discard(holder)

    def check(self, holder: Holder) -> bool:
        """After ``holder`` grew: drop the biggest holder if the sum is over
        the cap. Returns whether ``holder`` itself was dropped."""
        if holder.held() < _CHECK_ABOVE:
            return False
        sizes = {each: each.held() for each in self._holders}
        total = sum(sizes.values())
        if total <= self.limit:
            return False
        biggest = max(sizes, key=lambda each: sizes[each])
        log.warning("%s disconnected: it holds %d bytes and all clients %d, over vmd's memory cap "
                    "of %d bytes (VMD_MEMORY_CAP)", biggest.describe, sizes[biggest], total, self.limit)
        self._holders.discard(biggest)
        self.dropped += 1
        biggest.drop()
        return biggest is holder


def parse_cap(text: str) -> int:
    """``512M`` and the like; raises ValueError."""
    text = text.strip()
    unit = text[-1:].lower() if text[-1:].isalpha() else ""
    number = text[:-1] if unit else text
    if unit not in _SUFFIXES or not number.isdigit():
        raise ValueError(f"invalid VMD_MEMORY_CAP {text!r}")
    return int(number) * _SUFFIXES[unit]


def _from_environment() -> MemoryCap:
    text = os.environ.get("VMD_MEMORY_CAP")
    if text is None:
        return MemoryCap(DEFAULT_CAP)
    try:
        return MemoryCap(parse_cap(text))
    except ValueError as error:
        log.warning("%s; using %d bytes", error, DEFAULT_CAP)
        return MemoryCap(DEFAULT_CAP)


#: The daemon's cap (one per process, like the memory it guards).
CAP = _from_environment()
