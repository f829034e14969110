"""``vmdctl console``: attach the terminal to a guest's serial console.

The console is a chardev the daemon reports in ``query-chardev``: a Unix
server socket (``-chardev socket,id=console,path=P,server=on,wait=off``)
is connected to, a pty is opened. Bytes are copied both ways until the
peer closes or the user types Ctrl-] (as in ``virsh console``). A terminal
on stdin is put in raw mode meanwhile; from a pipe, input is sent and the
end of it is passed on (the socket's write side is shut), and output is
copied until the console closes.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from typing import Any

ESCAPE = b"\x1d"  # Ctrl-]


class ConsoleError(Exception):
    """The chardev cannot be attached; the message says why."""


def console_target(chardevs: list[dict[str, Any]], label: str | None) -> tuple[str, str]:
    """``("unix", path)`` or ``("pty", device)`` of the console chardev.

    Without ``label``: the chardev ``console``, else ``serial0``.
    """
    by_label = {chardev["label"]: chardev["filename"] for chardev in chardevs}
    wanted = [label] if label else ["console", "serial0"]
    found = next((name for name in wanted if name in by_label), None)
    if found is None:
        raise ConsoleError(f"no chardev {' or '.join(repr(name) for name in wanted)}")
    filename = by_label[found].removeprefix("disconnected:")
    kind, _, rest = filename.partition(":")
    if kind == "unix" and rest.endswith(",server=on"):
        return "unix", rest.removesuffix(",server=on")
    if kind == "pty":
        return "pty", rest
    raise ConsoleError(f"chardev '{found}' ({filename}) cannot be attached: "
                       "use a Unix server socket or a pty")


def attach(kind: str, where: str) -> None:
    """Copy between the terminal and the console until either side ends."""
    if kind == "unix":
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.connect(where)
        fd, close = peer.fileno(), peer.close

        def end_input() -> None:
            peer.shutdown(socket.SHUT_WR)
    else:
        fd = os.open(where, os.O_RDWR | os.O_NOCTTY)

        def close() -> None:
            os.close(fd)

        def end_input() -> None:
            pass  # a pty has no half-close
    try:
        with _raw_terminal(sys.stdin.fileno()):
            _copy(fd, end_input)
    finally:
        close()


def _copy(fd: int, end_input: Callable[[], None]) -> None:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    interactive = os.isatty(stdin)
    watched = [fd, stdin]
    while True:
        readable, _, _ = select.select(watched, [], [])
        if fd in readable:
            data = os.read(fd, 65536)
            if not data:
                return
            _write_all(stdout, data)
        if stdin in readable:
            data = os.read(stdin, 4096)
            if interactive and ESCAPE in data:
                _write_all(fd, data[:data.index(ESCAPE)])
                return
            if data:
                _write_all(fd, data)
            else:
                watched.remove(stdin)
                end_input()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
