"""The ``socket`` chardev: through QMP against a real vmd, and in-process for data flow.

The in-process tests run the backend on both event loops vmd may use
(asyncio's own and uvloop) with a small recording front end, and talk to it
with asyncio streams over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.harness import RawQMP, VmdProcess, until, vmd_command
from vmd._generated.types import visit_ChardevBackend
from vmd.chardev.base import OUTPUT_LIMIT
from vmd.chardev.registry import ChardevRegistry
from vmd.chardev.socket import SocketChardev
from vmd.qmp.errors import QMPError

DEADLINE = 10.0


# -- helpers (QMP) ---------------------------------------------------------------------------


def _unix(path: Path | str, **options: Any) -> dict[str, Any]:
    return {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": str(path)}}, **options}}


def _tcp(port: int, **options: Any) -> dict[str, Any]:
    addr = {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}}
    return {"type": "socket", "data": {"addr": addr, **options}}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _qmp(vmd: VmdProcess) -> RawQMP:
    client = RawQMP(vmd.qmp_path)
    client.negotiate()
    return client


def _add(qmp: RawQMP, chardev_id: str, backend: dict[str, Any]) -> dict[str, Any]:
    return qmp.command({"execute": "chardev-add", "arguments": {"id": chardev_id, "backend": backend}})


def _info(qmp: RawQMP, chardev_id: str) -> dict[str, Any] | None:
    reply = qmp.command({"execute": "query-chardev"})
    for info in reply["return"]:
        if info["label"] == chardev_id:
            return dict(info)
    return None


def _filename(qmp: RawQMP, chardev_id: str) -> str:
    info = _info(qmp, chardev_id)
    assert info is not None, f"no chardev {chardev_id}"
    return str(info["filename"])


def _wait_filename(qmp: RawQMP, chardev_id: str, expected: str) -> None:
    """Poll query-chardev until the filename is ``expected`` (or fail at the deadline)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        current = _filename(qmp, chardev_id)
        if current == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{chardev_id}: filename {current!r}, expected {expected!r}")
        time.sleep(0.01)


def _unix_client(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(DEADLINE)
    client.connect(str(path))
    return client


# -- through QMP ---------------------------------------------------------------------------------


def test_unix_server_filenames_frontend_open_and_remove(vmd: VmdProcess, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with _qmp(vmd) as qmp:
        assert _add(qmp, "s0", _unix(path)) == {"return": {}}
        assert path.exists()
        assert _info(qmp, "s0") == {"label": "s0", "filename": f"disconnected:unix:{path},server=on",
                                    "frontend-open": False}
        with _unix_client(path):
            _wait_filename(qmp, "s0", f"unix:{path},server=on")
            assert _info(qmp, "s0")["frontend-open"] is False  # type: ignore[index]  # no front end
        _wait_filename(qmp, "s0", f"disconnected:unix:{path},server=on")
        assert _add(qmp, "s0", _unix(tmp_path / "other.sock"))["error"]["desc"] == \
            "Chardev with id 's0' already exists"
        assert qmp.command({"execute": "chardev-remove", "arguments": {"id": "s0"}}) == {"return": {}}
        assert _info(qmp, "s0") is None
        assert not path.exists()
        with pytest.raises(OSError):
            _unix_client(path)


def test_tcp_server_shows_the_peer_when_connected(vmd: VmdProcess) -> None:
    port = _free_port()
    with _qmp(vmd) as qmp:
        assert _add(qmp, "t0", _tcp(port, nodelay=True)) == {"return": {}}
        listening = f"tcp:127.0.0.1:{port},server=on"
        assert _filename(qmp, "t0") == f"disconnected:{listening}"
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
            peer = client.getsockname()[1]
            _wait_filename(qmp, "t0", f"{listening} <-> 127.0.0.1:{peer}")
        _wait_filename(qmp, "t0", f"disconnected:{listening}")
        assert qmp.command({"execute": "chardev-remove", "arguments": {"id": "t0"}}) == {"return": {}}


def test_tcp_server_port_in_use(vmd: VmdProcess) -> None:
    with socket.socket() as busy, _qmp(vmd) as qmp:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        reply = _add(qmp, "t1", _tcp(busy.getsockname()[1]))
        assert reply["error"]["desc"] == \
            "Failed to add chardev 't1': Failed to find an available port: Address already in use"
        assert _info(qmp, "t1") is None


def test_server_serves_one_client_at_a_time(vmd: VmdProcess) -> None:
    port = _free_port()
    listening = f"tcp:127.0.0.1:{port},server=on"
    with _qmp(vmd) as qmp:
        assert _add(qmp, "one", _tcp(port)) == {"return": {}}
        first = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        first_port = first.getsockname()[1]
        _wait_filename(qmp, "one", f"{listening} <-> 127.0.0.1:{first_port}")
        # The second connection completes in the kernel's backlog but is not served.
        second = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        second_port = second.getsockname()[1]
        for _ in range(20):  # several round trips through vmd's loop
            assert _filename(qmp, "one") == f"{listening} <-> 127.0.0.1:{first_port}"
        first.close()
        _wait_filename(qmp, "one", f"{listening} <-> 127.0.0.1:{second_port}")
        second.close()
        _wait_filename(qmp, "one", f"disconnected:{listening}")


def test_unix_client_connects_to_a_listening_socket(vmd: VmdProcess, tmp_path: Path) -> None:
    path = tmp_path / "listen.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, _qmp(vmd) as qmp:
        listener.bind(str(path))
        listener.listen()
        listener.settimeout(DEADLINE)
        assert _add(qmp, "c0", _unix(path, server=False)) == {"return": {}}
        peer, _ = listener.accept()
        # QEMU shows the client's own (unnamed) address: "unix:".
        assert _filename(qmp, "c0") == "unix:"
        peer.close()
        _wait_filename(qmp, "c0", f"disconnected:unix:{path}")  # and stays so: no reconnect
        assert qmp.command({"execute": "chardev-remove", "arguments": {"id": "c0"}}) == {"return": {}}
        assert path.exists()  # a client never removes the server's socket


def test_tcp_client_shows_both_ends(vmd: VmdProcess) -> None:
    with socket.socket() as listener, _qmp(vmd) as qmp:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(DEADLINE)
        port = listener.getsockname()[1]
        assert _add(qmp, "c1", _tcp(port, server=False, nodelay=True)) == {"return": {}}
        peer, (_, local_port) = listener.accept()
        with peer:
            assert _filename(qmp, "c1") == f"tcp:127.0.0.1:{local_port} <-> 127.0.0.1:{port}"


def test_client_errors_use_qemus_text(vmd: VmdProcess, tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    port = _free_port()
    regular = tmp_path / "regular"
    regular.write_text("keep me")
    cases = [
        (_unix(missing, server=False), f"Failed to connect to '{missing}': No such file or directory"),
        (_tcp(port, server=False), f"Failed to connect to '127.0.0.1:{port}': Connection refused"),
        (_unix(regular, server=False), f"Failed to connect to '{regular}': Connection refused"),
        (_unix(missing, server=False, wait=False),
         "'wait' option is incompatible with socket in client connect mode"),
        (_unix(missing, reconnect=1), "'reconnect' option is incompatible with socket in server listen mode"),
        ({"type": "socket", "data": {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "abc"}}}},
         "address resolution failed for 127.0.0.1:abc: Servname not supported for ai_socktype"),
        (_unix(regular), f"Failed to bind socket to {regular}: Address already in use"),
        (_unix(tmp_path / "nodir" / "x.sock"),
         f"Failed to bind socket to {tmp_path / 'nodir' / 'x.sock'}: No such file or directory"),
    ]
    with _qmp(vmd) as qmp:
        for backend, reason in cases:
            reply = _add(qmp, "bad", backend)
            assert reply["error"] == {"class": "GenericError", "desc": f"Failed to add chardev 'bad': {reason}"}
        rejected: list[tuple[dict[str, Any], str]] = [
            ({"websocket": True}, "websocket"), ({"telnet": True}, "telnet"), ({"tls-creds": "tls0"}, "tls-creds")]
        for options, word in rejected:
            reply = _add(qmp, "bad", _unix(tmp_path / "x.sock", **options))
            assert word in reply["error"]["desc"] and "not supported" in reply["error"]["desc"]
        vsock = {"type": "socket", "data": {"addr": {"type": "vsock", "data": {"cid": "2", "port": "1"}}}}
        assert "not supported" in _add(qmp, "bad", vsock)["error"]["desc"]
        assert _info(qmp, "bad") is None
    assert regular.read_text() == "keep me"  # a regular file is never unlinked
    assert not (tmp_path / "x.sock").exists()


def test_server_replaces_a_stale_socket(vmd: VmdProcess, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(path))  # left behind when its owner went away
    with _qmp(vmd) as qmp:
        assert _add(qmp, "st", _unix(path)) == {"return": {}}
        with _unix_client(path):
            _wait_filename(qmp, "st", f"unix:{path},server=on")


def test_client_reconnects(vmd: VmdProcess, tmp_path: Path) -> None:
    path = tmp_path / "later.sock"
    with _qmp(vmd) as qmp:
        assert _add(qmp, "rc", _unix(path, server=False, reconnect=1)) == {"return": {}}
        assert _filename(qmp, "rc") == f"disconnected:unix:{path}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(path))
            listener.listen()
            listener.settimeout(DEADLINE)
            peer, _ = listener.accept()  # within a retry period
            _wait_filename(qmp, "rc", "unix:")
            peer.close()
            _wait_filename(qmp, "rc", f"disconnected:unix:{path}")
            again, _ = listener.accept()  # retried after the peer left
            _wait_filename(qmp, "rc", "unix:")
            again.close()
        assert qmp.command({"execute": "chardev-remove", "arguments": {"id": "rc"}}) == {"return": {}}


def test_server_wait_holds_only_the_caller(vmd: VmdProcess, tmp_path: Path) -> None:
    """``wait: true`` answers chardev-add once a client came; vmd serves others meanwhile."""
    path = tmp_path / "w.sock"
    with _qmp(vmd) as waiting, _qmp(vmd) as other:
        waiting.send(json.dumps({"execute": "chardev-add", "id": 7,
                                 "arguments": {"id": "w", "backend": _unix(path, wait=True)}}))
        deadline = time.monotonic() + DEADLINE
        while not path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert other.command({"execute": "query-name"}) == {"return": {"name": "testvm"}}
        with _unix_client(path):
            assert waiting.read_reply() == {"return": {}, "id": 7}
            assert _filename(other, "w") == f"unix:{path},server=on"


# -- in-process: data flow and flow control ---------------------------------------------------------

Runner = Callable[[Coroutine[Any, Any, None]], None]
RUNNERS = [pytest.param(asyncio.run, id="asyncio"), pytest.param(uvloop.run, id="uvloop")]


class Recorder:
    """A front end that records what it is told; ``room`` bounds its input."""

    def __init__(self, room: int = 1 << 40) -> None:
        self.room = room
        self.received = bytearray()
        self.events: list[str] = []
        self.got_input = asyncio.Event()
        self.writable = asyncio.Event()
        self.closed = asyncio.Event()

    def chr_open(self) -> None:
        self.events.append("open")

    def chr_close(self) -> None:
        self.events.append("close")
        self.closed.set()

    def chr_can_receive(self) -> int:
        return self.room

    def chr_receive(self, data: bytes) -> None:
        assert 0 < len(data) <= self.room
        self.room -= len(data)
        self.received += data
        self.got_input.set()

    def chr_writable(self) -> None:
        self.writable.set()

    def chr_break(self) -> None:
        self.events.append("break")


async def _open(data: dict[str, Any], chardev_id: str = "s0") -> SocketChardev:
    spec = visit_ChardevBackend({"type": "socket", "data": data}, None, "")
    chardev = await ChardevRegistry().open_backend(chardev_id, spec)
    assert isinstance(chardev, SocketChardev)
    return chardev


async def _server_and_client(path: Path, frontend: Recorder
                             ) -> tuple[SocketChardev, asyncio.StreamReader, asyncio.StreamWriter]:
    chardev = await _open({"addr": {"type": "unix", "data": {"path": str(path)}}})
    chardev.attach(frontend)
    reader, writer = await asyncio.open_unix_connection(str(path))
    await until(lambda: chardev.connected)
    assert frontend.events == ["open"] and chardev.frontend_open
    return chardev, reader, writer


PATTERN = bytes(range(251)) * 400  # 100400 bytes; offset o starts at PATTERN[o % 251]


def _pattern(offset: int, size: int) -> bytes:
    start = offset % 251
    return PATTERN[start:start + size]


@pytest.mark.parametrize("run", RUNNERS)
def test_bytes_flow_both_ways_in_order(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        frontend = Recorder()
        chardev, reader, writer = await _server_and_client(tmp_path / "d.sock", frontend)
        for i in range(100):
            writer.write(b"in%03d," % i)
            assert chardev.write(b"out%03d," % i) == 7
        await writer.drain()
        expected_in = b"".join(b"in%03d," % i for i in range(100))
        expected_out = b"".join(b"out%03d," % i for i in range(100))
        assert await reader.readexactly(len(expected_out)) == expected_out
        await until(lambda: len(frontend.received) >= len(expected_in))
        assert bytes(frontend.received) == expected_in
        writer.close()
        await chardev.close()
        assert not (tmp_path / "d.sock").exists()
    run(main())


@pytest.mark.parametrize("run", RUNNERS)
def test_full_front_end_stops_input_without_loss(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        frontend = Recorder(room=10)
        chardev, _, writer = await _server_and_client(tmp_path / "f.sock", frontend)
        sent = bytes(range(251)) * 8000  # 2 MB: more than the kernel buffers hold
        writer.write(sent)
        drain = asyncio.ensure_future(writer.drain())
        await until(lambda: len(frontend.received) == 10)
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(frontend.received) == 10  # nothing more while chr_can_receive() is 0
        assert chardev._link is not None and chardev._link.read_paused
        assert len(chardev._pending_input) <= 256 * 1024  # at most one read kept, the rest in the kernel
        assert not drain.done()  # the sender is held back by the kernel
        frontend.room = 1000
        chardev.accept_input()
        await until(lambda: len(frontend.received) == 1010)
        frontend.room = len(sent)
        chardev.accept_input()
        await until(lambda: len(frontend.received) == len(sent))
        assert bytes(frontend.received) == sent
        await drain
        writer.close()
        await chardev.close()
    run(main())


@pytest.mark.parametrize("run", RUNNERS)
def test_output_to_a_stalled_client_is_bounded(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        frontend = Recorder()
        chardev, reader, writer = await _server_and_client(tmp_path / "o.sock", frontend)
        link = chardev._link
        assert link is not None and link.transport is not None
        offered = accepted = 0
        short = False
        while offered < 50 * 1024 * 1024:
            chunk = _pattern(accepted, 65536)
            taken = chardev.write(chunk)
            assert 0 <= taken <= len(chunk)
            short = short or taken < len(chunk)
            offered += len(chunk)
            accepted += taken
            assert link.transport.get_write_buffer_size() <= OUTPUT_LIMIT
            await asyncio.sleep(0)  # let the transport move what it can into the kernel
        assert short
        sock = link.transport.get_extra_info("socket")
        kernel = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) * 4  # both ends' buffers, generously
        assert accepted <= OUTPUT_LIMIT + kernel, (accepted, kernel)
        assert not frontend.writable.is_set()
        received = await reader.readexactly(accepted)
        _check_pattern(received)
        await asyncio.wait_for(frontend.writable.wait(), DEADLINE)
        assert chardev.write(b"more") == 4
        assert await reader.readexactly(4) == b"more"
        writer.close()
        await chardev.close()
    run(main())


def _check_pattern(data: bytes) -> None:
    for offset in range(0, len(data), 65536):
        block = data[offset:offset + 65536]
        assert block == _pattern(offset, len(block)), f"mismatch at {offset}"


@pytest.mark.parametrize("run", RUNNERS)
def test_disconnect_closes_front_end_and_drops_output(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        frontend = Recorder()
        chardev, _, writer = await _server_and_client(tmp_path / "x.sock", frontend)
        writer.close()
        await asyncio.wait_for(frontend.closed.wait(), DEADLINE)
        assert frontend.events == ["open", "close"]
        assert not chardev.connected and not chardev.frontend_open
        assert chardev.write(b"x" * 1_000_000) == 1_000_000  # dropped, as in QEMU
        # The listener is polled again: the next client is served.
        _, writer2 = await asyncio.open_unix_connection(str(tmp_path / "x.sock"))
        await until(lambda: chardev.connected)
        assert frontend.events == ["open", "close", "open"]
        writer2.close()
        await until(lambda: not chardev.connected)
        await chardev.close()
    run(main())


@pytest.mark.parametrize("run", RUNNERS)
def test_server_wait_awaits_the_first_client(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "w.sock"
        opening = asyncio.ensure_future(_open({"addr": {"type": "unix", "data": {"path": str(path)}}, "wait": True}))
        await until(path.exists)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not opening.done()
        _, writer = await asyncio.open_unix_connection(str(path))
        chardev = await asyncio.wait_for(opening, DEADLINE)
        assert chardev.connected and chardev.filename() == f"unix:{path},server=on"
        writer.close()
        await chardev.close()
        assert not path.exists()
    run(main())


@pytest.mark.parametrize("run", RUNNERS)
def test_tcp_client_reconnect_in_process(run: Runner) -> None:
    async def main() -> None:
        port = _free_port()
        chardev = await _open({"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}},
                               "server": False, "reconnect": 1, "nodelay": True})
        frontend = Recorder()
        chardev.attach(frontend)
        assert chardev.filename() == f"disconnected:tcp:127.0.0.1:{port}"
        peers: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer)
            writer.write(b"hello")

        server = await asyncio.start_server(serve, "127.0.0.1", port)
        await asyncio.wait_for(frontend.got_input.wait(), DEADLINE)
        assert bytes(frontend.received) == b"hello" and frontend.events == ["open"]
        sock = chardev._link.transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert chardev.filename().endswith(f" <-> 127.0.0.1:{port}")
        peers[0].close()
        await asyncio.wait_for(frontend.closed.wait(), DEADLINE)
        await until(lambda: chardev.connected)  # reconnected after a period
        assert frontend.events == ["open", "close", "open"]
        await chardev.close()
        server.close()
        await server.wait_closed()
    run(main())


@pytest.mark.parametrize("run", RUNNERS)
def test_open_failure_is_qemus_text(run: Runner, tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(QMPError) as caught:
            await _open({"addr": {"type": "unix", "data": {"path": str(tmp_path / "none")}}, "server": False}, "c9")
        assert str(caught.value) == \
            f"Failed to add chardev 'c9': Failed to connect to '{tmp_path / 'none'}': No such file or directory"
    run(main())


def test_no_fds_leak_from_refused_clients(tmp_path: Path) -> None:
    async def main() -> None:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(50):
            with pytest.raises(QMPError):
                await _open({"addr": {"type": "unix", "data": {"path": str(tmp_path / "none")}}, "server": False})
        assert len(os.listdir("/proc/self/fd")) <= before + 2
    uvloop.run(main())


def test_monitor_on_an_already_connected_socket_passed_by_fd() -> None:
    """``-chardev socket,id=mon,fd=N`` with one end of a socketpair, as
    QEMU's Python test harness hands over its monitor: vmd serves QMP on
    the connected socket (a listener would refuse it: it cannot listen)."""
    ours, theirs = socket.socketpair()
    with ours:
        process = subprocess.Popen(
            vmd_command("-M", "none", "-chardev", f"socket,id=mon,fd={theirs.fileno()}",
                        "-mon", "chardev=mon,mode=control"),
            pass_fds=[theirs.fileno()])
        theirs.close()
        try:
            ours.settimeout(DEADLINE)
            stream = ours.makefile("rwb")
            assert "QMP" in json.loads(stream.readline())
            for command, expected in (("qmp_capabilities", {}), ("query-status", None), ("quit", {})):
                stream.write(json.dumps({"execute": command}).encode())
                stream.flush()
                reply = json.loads(stream.readline())
                while "event" in reply:  # SHUTDOWN may come before quit's reply
                    reply = json.loads(stream.readline())
                if expected is not None:
                    assert reply == {"return": expected}
                else:
                    assert reply["return"]["status"] in ("running", "prelaunch")
            assert process.wait(DEADLINE) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
