"""Who may reach a monitor, and who did.

A monitor client can make vmd open, create and write any file its user can
(``blockdev-add``, ``blockdev-create``, ``chardev-add``), so reaching a
monitor is as good as being that user. vmd therefore:

* creates monitor Unix sockets with mode 0600 (``early_greeter.listen_unix``);
* refuses, at start-up, a monitor (QMP or HMP) that listens on TCP on any
  address but loopback, unless the chardev says ``x-allow-remote=on``: TCP
  has no peer credentials and vmd no TLS, so anyone who can reach the port
  would own the daemon;
* logs each QMP client as it connects: the pid, uid and gid of a Unix
  socket peer (``SO_PEERCRED``), or the address of a TCP peer.

The README's "Security" section is the user-facing account of this.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from vmd.cli.chardev import socket_flags
from vmd.cli.config import ChardevConfig
from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import parse_bool

ALLOW_REMOTE = "x-allow-remote"
_UCRED = struct.Struct("3i")


def check_monitor_listener(chardev: ChardevConfig) -> None:
    """Refuse a monitor on a TCP server socket open to other hosts."""
    options = chardev.options
    # A passed socket (``fd=``, socket activation) was bound by whoever
    # passed it, on the address they chose.
    if chardev.backend != "socket" or "path" in options or "fd" in options or not socket_flags(chardev)[0]:
        return
    host = options.get("host", "")
    if is_loopback(host) or parse_bool(ALLOW_REMOTE, options.get(ALLOW_REMOTE, "off")):
        return
    shown = host or "all addresses"
    raise OptionError(
        f"chardev '{chardev.id}': a monitor listening on {shown} would let other hosts "
        f"control vmd; listen on 127.0.0.1 or a Unix socket, or add {ALLOW_REMOTE}=on")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (a loopback address or ``localhost``)."""
    if host == "localhost":
        return True
    import ipaddress  # only for TCP monitors: not on every start's path
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def describe_peer(sock: Any) -> str:
    """The credentials of a Unix peer, or the address of a TCP one."""
    if sock is None:  # a chardev, not a socket
        return "chardev"
    try:
        if sock.family == socket.AF_UNIX:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            pid, uid, gid = _UCRED.unpack(raw)
            return f"pid={pid} uid={uid} gid={gid}"
        host, port = sock.getpeername()[:2]
        return f"address={host} port={port}"
    except OSError as error:
        return f"unknown peer ({error.strerror})"
