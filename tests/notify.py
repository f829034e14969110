"""A stand-in for systemd's notify socket, for tests of sd_notify.

It records each datagram with its arrival time and the sender's pid from
SCM_CREDENTIALS (what systemd checks against ``NotifyAccess=``), and closes
any descriptors a sender attaches (``BARRIER=1`` from systemd-notify).
"""

from __future__ import annotations

import array
import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.harness import ROOT, vmd_command

_UCRED = struct.Struct("3i")


@dataclass
class Notification:
    time: float
    pid: int
    fields: dict[str, str]

    def __contains__(self, key: str) -> bool:
        return key in self.fields


class NotifyReceiver:
    """A bound ``SOCK_DGRAM`` socket playing the service manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.received: list[Notification] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NotifyReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def receive(self, timeout: float = 20.0) -> Notification:
        """The next datagram; TimeoutError if none comes in ``timeout`` s."""
        self.sock.settimeout(timeout)
        space = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(16 * 4)
        data, ancillary, _flags, _addr = self.sock.recvmsg(65536, space)
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[:_UCRED.size])[0]
            elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                for fd in fds:
                    os.close(fd)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        note = Notification(time.monotonic(), pid, fields)
        self.received.append(note)
        return note

    def wait_for(self, key: str, timeout: float = 20.0) -> Notification:
        """Receive until a datagram carries ``key``; return that one."""
        deadline = time.monotonic() + timeout
        while True:
            note = self.receive(max(deadline - time.monotonic(), 0.01))
            if key in note:
                return note

    def keys(self) -> list[str]:
        """Every key sent so far, in order (for order assertions)."""
        try:
            while True:
                self.receive(timeout=0)
        except (BlockingIOError, TimeoutError):
            pass
        return [key for note in self.received for key in note.fields]


def with_own_pid(names: tuple[str, ...], argv: list[str]) -> list[str]:
    """``argv`` run with each variable in ``names`` set to its own pid.

    What systemd does for ``$LISTEN_PID`` and ``$WATCHDOG_PID``: the pid is
    known only after the fork, so a shell exports its ``$$`` and execs.
    """
    exports = " ".join(f"{name}=$$" for name in names)
    return ["sh", "-c", f'export {exports}; exec "$@"', "sh", *argv]


def spawn_vmd(receiver: NotifyReceiver, *args: str, env: dict[str, str] | None = None,
              own_pid_in: tuple[str, ...] = (), **popen: object) -> subprocess.Popen[bytes]:
    """Start ``vmd ARGS`` with ``$NOTIFY_SOCKET`` set to ``receiver``
    (and the variables in ``own_pid_in`` set to vmd's pid)."""
    process_env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(receiver.path), **(env or {})}
    argv = vmd_command(*args)
    if own_pid_in:
        argv = with_own_pid(own_pid_in, argv)
    return subprocess.Popen(argv, env=process_env, **popen)  # type: ignore[call-overload]
