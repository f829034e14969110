"""A progress line for long operations, like qemu-img's ``-p``.

``    (42.00/100%)`` rewritten in place with a carriage return, on stderr. It
is shown when ``-p`` is given, or when stderr is a terminal; otherwise every
call is a no-op. Updates are throttled to steps of ``min_step`` percent.
"""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    def __init__(self, enabled: bool | None = None, *, stream: TextIO | None = None,
                 min_step: float = 1.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = self.stream.isatty()
        self.enabled = enabled
        self.min_step = min_step
        self.current = 0.0
        self._shown = -1.0
        self._total = 0

    def start(self, total: int) -> None:
        """Begin a phase of ``total`` units of work (at least one)."""
        self._total = max(1, total)
        self.update(0)

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        percent = min(100.0, done * 100.0 / max(1, self._total))
        self.current = percent
        if percent - self._shown >= self.min_step or (percent == 100.0 and self._shown < 100.0):
            self._shown = percent
            self.stream.write(f"    ({percent:3.2f}/100%)\r")
            self.stream.flush()

    def finish(self) -> None:
        """Show 100% and end the line."""
        if not self.enabled:
            return
        if self._shown < 100.0:
            self.stream.write("    (100.00/100%)\r")
        self.stream.write("\n")
        self.stream.flush()
