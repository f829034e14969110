"""The readline HMP monitor on a chardev (``-monitor``, ``-mon mode=readline``).

The monitor is the chardev's front end (see ``vmd.chardev.base``). When a
peer appears it prints QEMU's banner and the ``(qemu)`` prompt; typed keys
go through ``ReadLine``; each entered line runs as a task (``run_line``)
and its output is followed by a new prompt.

Flow control, so a peer that types but never reads costs bounded memory:
the monitor takes input one byte at a time and only while no command runs
and no output waits. Output the chardev does not take at once is kept (at
most ``OUTPUT_LIMIT`` bytes; beyond that it is dropped) until
``chr_writable``; meanwhile ``chr_can_receive`` is 0, so the backend stops
reading. On a mux the monitor also gets ``chr_mux_out``/``chr_mux_in``
when it loses or gains the focus, and then holds its output, as QEMU does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from vmd.chardev.base import OUTPUT_LIMIT, Chardev
from vmd.hmp import commands
from vmd.hmp.readline import ReadLine
from vmd.version import QEMU_VERSION

if TYPE_CHECKING:
    from vmd.daemon import Daemon

log = logging.getLogger(__name__)

BANNER = (f"QEMU {'.'.join(map(str, QEMU_VERSION))} monitor - "
          f"type 'help' for more information\n")


class HmpMonitor:
    """A human monitor: QEMU's MonitorHMP with readline."""

    def __init__(self, daemon: Daemon, chardev: Chardev) -> None:
        self.daemon = daemon
        self.chardev = chardev
        self.readline = ReadLine(self.print, self._on_line, complete)
        self._output = bytearray()
        self._open = False
        self._reset_seen = False   # has printed its banner once
        self._mux_out = False      # another front end of the mux has focus
        self._running: asyncio.Task[None] | None = None
        self._suspended = False    # after quit: no prompt, no input
        self.dropped = 0           # output bytes lost to OUTPUT_LIMIT

    def start(self) -> None:
        self.chardev.attach(self)

    # -- output ---------------------------------------------------------------

    def print(self, text: str) -> None:
        """monitor_puts(): queue ``text`` with every LF sent as CR LF."""
        self._write(text.replace("\n", "\r\n").encode("utf-8", "replace"))

    def _write(self, data: bytes) -> None:
        room = OUTPUT_LIMIT - len(self._output)
        if len(data) > room:
            self.dropped += len(data) - max(room, 0)
            data = data[:max(room, 0)]
        self._output += data
        self._flush()

    def _flush(self) -> None:
        if self._output and not self._mux_out:
            taken = self.chardev.write(bytes(self._output))
            del self._output[:taken]

    @property
    def output_pending(self) -> int:
        return len(self._output)

    # -- commands -------------------------------------------------------------

    def _on_line(self, line: str) -> None:
        self._running = asyncio.get_running_loop().create_task(
            self._execute(line))

    async def _execute(self, line: str) -> None:
        try:
            output = await commands.run_line(self, line)
        except Exception:  # a bug must not kill the monitor
            log.exception("HMP command %r failed", line)
            output = "Error: internal error\r\n"
        self._running = None
        self._write(output.encode("utf-8", "replace"))
        if not self._mux_out and not self._suspended:
            self.readline.show_prompt()
        self._input_ready()

    def suspend(self) -> None:
        """Take no more input and show no prompt (monitor_suspend)."""
        self._suspended = True

    def _input_ready(self) -> None:
        if self.chr_can_receive():
            self.chardev.accept_input()

    # -- CharFrontend ---------------------------------------------------------

    def chr_open(self) -> None:
        self._open = True
        self.print(BANNER)
        if not self._mux_out:
            self.readline.restart()
            self.readline.show_prompt()
        self._reset_seen = True

    def chr_close(self) -> None:
        self._open = False
        self._output.clear()  # nobody is left to read it

    def chr_can_receive(self) -> int:
        busy = (self._running is not None or self._output or self._mux_out
                or self._suspended)
        return 0 if busy or not self._open else 1

    def chr_receive(self, data: bytes) -> None:
        for byte in data:
            self.readline.handle_byte(byte)

    def chr_writable(self) -> None:
        self._flush()
        self._input_ready()

    def chr_break(self) -> None:
        pass

    # -- mux focus (optional hooks, see vmd.chardev.mux) -------------------

    def chr_mux_out(self) -> None:
        """Another front end got the focus: end the line, hold output."""
        if self._reset_seen and self._running is None:
            self.print("\n")
        self._mux_out = True

    def chr_mux_in(self) -> None:
        """The focus is back: a fresh, empty prompt and the held output."""
        self._mux_out = False
        if self._reset_seen:
            self.readline.restart()
            if self._running is None and not self._suspended:
                self.readline.show_prompt()
        self._flush()
        self._input_ready()


def complete(text: str) -> tuple[int, list[str]]:
    """Complete HMP command names: the first word, or ``info``/``help`` args."""
    words = text.split()
    if not text or text[-1].isspace():
        words.append("")
    start = len(text) - len(words[-1])
    if len(words) == 1:
        table = commands.command_names()
    elif len(words) == 2 and words[0] in ("help", "?"):
        table = commands.command_names()
    elif len(words) == 2 and commands.sub_table(words[0]) is not None:
        table = commands.command_names(commands.sub_table(words[0]))
    else:
        return start, []
    return start, [name for name in table if name.startswith(words[-1])]
