"""The qtest line protocol, without I/O (QEMU's softmmu/qtest.c).

The client sends one command a line (``clock_step 1000000``); each gets
one answer line, ``OK ...`` or ``FAIL ...``. vmd answers what its machines
can: the virtual clock under ``-accel qtest`` (``clock_step [NS]``,
``clock_set NS``, answered with the clock's new value in ns) and
``endianness``; anything else gets
QEMU's answer for an unknown command. With ``-M none`` there is no memory
or I/O space for the access commands to reach.
"""

from __future__ import annotations

from vmd.qtest.clock import VirtualClock


class QtestProtocol:
    """Feed bytes in, get the answer bytes out."""

    def __init__(self, clock: VirtualClock | None) -> None:
        self.clock = clock
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        """Take input; return the answers to every complete line in it."""
        self._buffer += data
        answers = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            words = line.decode("utf-8", "replace").split()
            if words:
                answers.append(self.command(words))
        return "".join(answers).encode()

    def command(self, words: list[str]) -> str:
        name, clock = words[0], self.clock
        if name == "clock_step" and clock is not None:
            step = _number(words[1]) if len(words) > 1 else clock.next_deadline()
            clock.warp(clock.now_ns + (step or 0))   # no timer: the clock stays
            return f"OK {clock.now_ns}\n"
        if name == "clock_set" and clock is not None and len(words) > 1:
            clock.warp(_number(words[1]))
            return f"OK {clock.now_ns}\n"
        if name == "endianness":
            return "OK little\n"
        return f"FAIL Unknown command '{name}'\n"


def _number(text: str) -> int:
    """qemu_strtoi64(..., base 0)."""
    return int(text, 0) if not (len(text) > 1 and text[0] == "0" and text[1].isdigit()) else int(text, 8)
