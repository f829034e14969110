"""The systemd notification protocol (sd_notify(3)), without libsystemd.

With ``Type=notify`` systemd waits for ``READY=1`` on the datagram socket
named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace).
vmd sends it once its monitors are listening; tests use the same signal to
know when the daemon is ready, instead of sleeping.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) if started under a notifier."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True
