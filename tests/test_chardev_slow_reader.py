"""A socket chardev whose client stops reading must cost the daemon nothing.

A readline monitor on a server socket chardev is the front end here: its
client types many commands and reads nothing, so output piles up at the
chardev. The daemon must keep answering QMP on another socket, must not
buffer without bound, and once the client reads, every byte must arrive,
in order.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from tests.harness import RawQMP, rss_kib, running_vmd

COMMANDS = 60000
# The peer's own socket buffers plus vmd's bounded output; generous.
MAX_GROWTH_KIB = 60_000


def test_client_that_stops_reading(tmp_path: Path) -> None:
    hmp_path = tmp_path / "hmp.sock"
    with running_vmd(tmp_path, "-chardev", f"socket,id=h,path={hmp_path},server=on,wait=off",
                     "-mon", "chardev=h,mode=readline") as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        idle = qmp.command({"execute": "query-chardev"})["return"]
        assert {"label": "h", "filename": f"disconnected:unix:{hmp_path},server=on",
                "frontend-open": False} in idle
        before = rss_kib(vmd.process.pid)

        peer = socket.socket(socket.AF_UNIX)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peer.connect(str(hmp_path))
        peer.setblocking(False)
        typed = b"".join(f"info status {i}\n".encode() for i in range(COMMANDS))
        sent = 0
        deadline = time.monotonic() + 20
        while sent < len(typed) and time.monotonic() < deadline:
            try:
                sent += peer.send(typed[sent:sent + 65536])
            except BlockingIOError:
                # vmd stopped reading us: prove QMP still answers meanwhile.
                start = time.monotonic()
                assert qmp.command({"execute": "query-status"})["return"]["status"] == "running"
                assert time.monotonic() - start < 2.0
                break
        assert sent < len(typed), "vmd read everything without anyone reading its output"
        for _ in range(20):
            assert qmp.command({"execute": "query-name"}) == {"return": {}}
        growth = rss_kib(vmd.process.pid) - before
        assert growth < MAX_GROWTH_KIB, f"vmd grew by {growth} KiB"

        # Now read: everything typed so far is answered, in order.
        peer.setblocking(True)
        peer.settimeout(120)  # a bound against hangs, generous for a loaded machine
        sender = threading.Thread(target=peer.sendall, args=(typed[sent:],))
        sender.start()
        received = b""
        expected_last = f"info status {COMMANDS - 1}".encode()
        while expected_last not in received or not received.endswith(b"(qemu) "):
            chunk = peer.recv(1 << 20)
            assert chunk, "vmd closed the monitor connection"
            received += chunk
        sender.join(120)
        peer.close()
        answers = received.count(b"extraneous characters")
        assert answers == COMMANDS
        positions = [received.find(f"info status {i}\r".encode()) for i in (0, 1, COMMANDS // 2, COMMANDS - 1)]
        assert all(p >= 0 for p in positions) and positions == sorted(positions)
