"""Sockets passed at start: systemd socket activation and QEMU's ``fd=N``.

The test plays systemd: it binds and listens, hands the socket over as fd 3
(and 4) with ``$LISTEN_FDS``/``$LISTEN_PID``/``$LISTEN_FDNAMES``, and drops
its own copy, so only the daemon serves it. The same command line runs
under QEMU 7.2 (which ignores the ``LISTEN_*`` variables) for comparison.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from tests.harness import QEMU, ROOT, RawQMP, vmd_command
from tests.notify import NotifyReceiver, with_own_pid

QMP_SHELL = Path(sys.executable).with_name("qmp-shell")
MONITOR_ON_FD3 = ["-chardev", "socket,id=mon0,fd=3,server=on,wait=off", "-mon", "chardev=mon0,mode=control"]


def _listener(path: Path, listen: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    if listen:
        sock.listen(8)
    return sock


@contextmanager
def handed_over(argv: list[str], sockets: Sequence[socket.socket], names: str | None = None,
                env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` with ``sockets`` as fds 3, 4, ...; with ``names``, as systemd does."""
    process_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if names is not None:
        process_env.update(LISTEN_FDS=str(len(sockets)), LISTEN_FDNAMES=names)
        argv = with_own_pid(("LISTEN_PID",), argv)
    fds = [sock.fileno() for sock in sockets]

    def place() -> None:
        # Copy first (a source may sit at a target number), then dup2 into place.
        copies = [os.dup(fd) for fd in fds]
        for target, copy in enumerate(copies, 3):
            os.dup2(copy, target)

    process = subprocess.Popen(argv, env=process_env, preexec_fn=place, stderr=subprocess.PIPE,
                               pass_fds=tuple(range(3, 3 + len(fds))))
    for sock in sockets:
        sock.close()  # the daemon's now
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _vmd(receiver: NotifyReceiver, sockets: Sequence[socket.socket], *args: str,
         names: str = "qmp") -> Any:
    return handed_over(vmd_command(*args), sockets, names, env={"NOTIFY_SOCKET": str(receiver.path)})


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[NotifyReceiver]:
    with NotifyReceiver(tmp_path / "notify.sock") as notify:
        yield notify


async def test_qmpclient_and_qmp_shell_on_fd_3(tmp_path: Path, receiver: NotifyReceiver) -> None:
    path = tmp_path / "qmp.sock"
    with _vmd(receiver, [_listener(path)], *MONITOR_ON_FD3, "-name", "activated"):
        receiver.wait_for("READY")
        client = QMPClient("activation")
        await client.connect(str(path))
        try:
            assert await client.execute("query-name") == {"name": "activated"}
            chardevs = await client.execute("query-chardev")
        finally:
            await client.disconnect()
        assert {"label": "mon0", "filename": f"unix:{path},server=on", "frontend-open": True} in chardevs
        shell = subprocess.run([str(QMP_SHELL), str(path)], input="query-status\n", capture_output=True,
                               text=True, timeout=30, check=True)
        assert '"status": "running"' in shell.stdout


def test_a_socket_named_in_listen_fdnames(tmp_path: Path, receiver: NotifyReceiver) -> None:
    other, qmp = tmp_path / "other.sock", tmp_path / "qmp.sock"
    args = ["-chardev", "socket,id=mon0,fd=qmp,server=on,wait=off", "-mon", "chardev=mon0,mode=control"]
    with _vmd(receiver, [_listener(other), _listener(qmp)], *args, names="other:qmp"):
        receiver.wait_for("READY")
        with RawQMP(qmp) as client:
            client.negotiate()
            assert client.command({"execute": "query-status"})["return"]["status"] == "running"
        # A passed socket nobody asked for is closed after start-up.
        with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(other))


def test_qmp_on_the_path_of_a_passed_socket_adopts_it(tmp_path: Path, receiver: NotifyReceiver) -> None:
    """One ``-qmp unix:PATH`` line serves with and without the .socket unit."""
    path = tmp_path / "qmp.sock"
    listener = _listener(path, listen=False)  # bound only: vmd makes it listen
    inode = path.stat().st_ino
    with _vmd(receiver, [listener], "-qmp", f"unix:{path},server=on,wait=off") as process:
        receiver.wait_for("READY")
        with RawQMP(path) as client:
            client.negotiate()
        assert path.stat().st_ino == inode  # served, not replaced
        process.terminate()
        assert process.wait(10) == 0
    assert path.exists()  # the socket belongs to systemd, vmd leaves it


def test_socket_chardev_on_a_passed_fd(tmp_path: Path, receiver: NotifyReceiver) -> None:
    qmp, hmp = tmp_path / "qmp.sock", tmp_path / "hmp.sock"
    args = ["-qmp", f"unix:{qmp},server=on,wait=off",
            "-chardev", "socket,id=h,fd=3,server=on,wait=off", "-mon", "chardev=h,mode=readline"]
    with _vmd(receiver, [_listener(hmp)], *args, names="hmp"):
        receiver.wait_for("READY")
        with socket.socket(socket.AF_UNIX) as console:
            console.settimeout(10)
            console.connect(str(hmp))
            assert b"QEMU 7.2.0 monitor" in console.recv(200)


@pytest.mark.parametrize("spec, message", [
    ("7", "File descriptor '7' is not a socket"),
    ("nosuch", "Unable to parse FD number nosuch"),
])
def test_bad_fd_errors(tmp_path: Path, receiver: NotifyReceiver, spec: str, message: str) -> None:
    args = ["-chardev", f"socket,id=mon0,fd={spec},server=on,wait=off", "-mon", "chardev=mon0,mode=control"]
    with _vmd(receiver, [_listener(tmp_path / "qmp.sock")], *args) as process:
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert stderr.decode().endswith(f": {message}\n")
    assert b"Traceback" not in stderr


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_same_command_line_under_qemu(tmp_path: Path, receiver: NotifyReceiver) -> None:
    replies = []
    requests = [{"execute": "query-status"}, {"execute": "query-chardev"}]
    for name, argv in (("vmd", vmd_command()), ("qemu", [str(QEMU), "-M", "none", "-display", "none",
                                                           "-nodefaults"])):
        path = tmp_path / f"{name}.sock"
        with handed_over([*argv, *MONITOR_ON_FD3], [_listener(path)], "qmp"):
            with RawQMP(path, timeout=30) as client:  # queued until the daemon is up
                assert client.greeting["QMP"]["capabilities"] == ["oob"]
                client.negotiate()
                reply = [client.command(request)["return"] for request in requests]
                replies.append(_normalised(reply, str(path)))
    assert replies[0] == replies[1]


def _normalised(replies: list[Any], path: str) -> list[Any]:
    status, chardevs = replies
    return [status, sorted((c["label"], c["filename"].replace(path, "PATH"), c["frontend-open"])
                           for c in chardevs)]


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("spec", ["7", "nosuch"])
def test_fd_errors_match_qemu(tmp_path: Path, spec: str) -> None:
    chardev = f"socket,id=mon0,fd={spec},server=on,wait=off"
    texts = []
    for argv in (vmd_command(), [str(QEMU), "-M", "none", "-display", "none", "-nodefaults"]):
        result = subprocess.run([*argv, "-chardev", chardev, "-mon", "chardev=mon0,mode=control"],
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 1
        texts.append(result.stderr.rsplit(": ", 1)[1])
    assert texts[0] == texts[1]


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is missing")
def test_under_systemd_socket_activate(tmp_path: Path, receiver: NotifyReceiver) -> None:
    """systemd's own tool passes the socket and starts vmd on the first client."""
    path = tmp_path / "qmp.sock"
    args = ["-chardev", "socket,id=mon0,fd=qmp,server=on,wait=off", "-mon", "chardev=mon0,mode=control"]
    argv = ["systemd-socket-activate", "-l", str(path), "--fdname=qmp",
            "-E", f"PYTHONPATH={ROOT}", "-E", f"NOTIFY_SOCKET={receiver.path}", *vmd_command(*args)]
    activator = subprocess.Popen(argv, stderr=subprocess.PIPE)
    try:
        _wait_for_socket(path, activator)
        with RawQMP(path, timeout=30) as client:  # this connection starts vmd
            client.negotiate()
            assert client.command({"execute": "query-status"})["return"]["status"] == "running"
        assert "READY" in receiver.wait_for("READY")
    finally:
        activator.kill()
        activator.wait()


def _wait_for_socket(path: Path, process: subprocess.Popen[bytes]) -> None:
    assert process.stderr is not None
    line = process.stderr.readline().decode()  # "Listening on PATH as 3."
    assert str(path) in line, line
