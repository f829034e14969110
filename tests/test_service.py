"""vmd as a systemd service: sd_notify, watchdog, signals, -daemonize, logs.

A ``NotifyReceiver`` plays systemd's notify socket: it records each
datagram, when it came and which pid sent it (SCM_CREDENTIALS, what
``NotifyAccess=main`` checks).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT, RawQMP, vmd_command, wait_gone
from tests.notify import NotifyReceiver, spawn_vmd


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[NotifyReceiver]:
    with NotifyReceiver(tmp_path / "notify.sock") as notify:
        yield notify


def _qmp_args(path: Path) -> list[str]:
    return ["-qmp", f"unix:{path},server=on,wait=off"]


def _stopped(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def test_ready_only_once_a_client_gets_the_greeting(tmp_path: Path, receiver: NotifyReceiver) -> None:
    qmp = tmp_path / "qmp.sock"
    process = spawn_vmd(receiver, *_qmp_args(qmp), "-name", "svc")
    try:
        ready = receiver.wait_for("READY")
        # The first connection attempt must work: no retry, no sleep.
        with RawQMP(qmp, timeout=10) as client:
            assert "QMP" in client.greeting
        assert ready.fields == {"READY": "1", "STATUS": "running", "MAINPID": str(process.pid)}
        assert ready.pid == process.pid
        assert receiver.keys()[0] == "READY"  # nothing before READY=1
    finally:
        _stopped(process)


def test_status_follows_the_run_state(tmp_path: Path, receiver: NotifyReceiver) -> None:
    qmp = tmp_path / "qmp.sock"
    process = spawn_vmd(receiver, *_qmp_args(qmp), "-S")
    try:
        assert receiver.wait_for("READY").fields["STATUS"] == "prelaunch"
        with RawQMP(qmp) as client:
            client.negotiate()
            client.command({"execute": "cont"})
            assert receiver.wait_for("STATUS").fields == {"STATUS": "running"}
            client.command({"execute": "stop"})
            assert receiver.wait_for("STATUS").fields == {"STATUS": "paused"}
            client.command({"execute": "stop"})  # no change, no message
            client.command({"execute": "cont"})
            assert receiver.wait_for("STATUS").fields == {"STATUS": "running"}
    finally:
        _stopped(process)


def test_sigterm_without_guest(tmp_path: Path, receiver: NotifyReceiver) -> None:
    qmp = tmp_path / "qmp.sock"
    process = spawn_vmd(receiver, *_qmp_args(qmp), stderr=subprocess.PIPE)
    try:
        receiver.wait_for("READY")
        with RawQMP(qmp) as client:
            client.negotiate()
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            stopping = receiver.wait_for("STOPPING")
            event = client.read()
            status = process.wait(10)
            elapsed = time.monotonic() - started
        assert stopping.fields == {"STOPPING": "1", "STATUS": "stopping"}
        assert stopping.pid == process.pid
        assert event["event"] == "SHUTDOWN"
        assert event["data"] == {"guest": False, "reason": "host-signal"}
        assert status == 0
        assert process.stderr is not None
        assert process.stderr.read().decode().splitlines()[-1] == "vmd: info: terminating on signal 15"
        print(f"SIGTERM to exit: {elapsed:.3f} s")
    finally:
        _stopped(process)


def _pings(receiver: NotifyReceiver, count: int) -> list[float]:
    return [receiver.wait_for("WATCHDOG", timeout=10).time for _ in range(count)]


def test_watchdog_pings_every_half_period(tmp_path: Path, receiver: NotifyReceiver) -> None:
    process = spawn_vmd(receiver, *_qmp_args(tmp_path / "qmp.sock"), env={"WATCHDOG_USEC": "1000000"})
    try:
        receiver.wait_for("READY")
        times = _pings(receiver, 7)
        gaps = [b - a for a, b in zip(times, times[1:])]
        # 0.5 s apart; generous bounds, the test machine is busy.
        assert 0.35 < statistics.median(gaps) < 0.9, gaps
        assert max(gaps) < 2.0, gaps
        assert all(note.fields == {"WATCHDOG": "1"} for note in receiver.received if "WATCHDOG" in note)
    finally:
        _stopped(process)


def test_watchdog_meant_for_another_pid_is_ignored(tmp_path: Path, receiver: NotifyReceiver) -> None:
    env = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    process = spawn_vmd(receiver, *_qmp_args(tmp_path / "qmp.sock"), env=env)
    try:
        receiver.wait_for("READY")
        with pytest.raises(TimeoutError):
            receiver.wait_for("WATCHDOG", timeout=1.0)  # five periods
    finally:
        _stopped(process)


def test_a_blocked_loop_stops_the_pings(tmp_path: Path, receiver: NotifyReceiver) -> None:
    """``tests/loop_blocker.py``: SIGUSR1 makes the loop sleep 2 s."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(receiver.path),
           "WATCHDOG_USEC": "400000"}
    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "loop_blocker.py"),
                                *_qmp_args(tmp_path / "qmp.sock")], env=env)
    try:
        receiver.wait_for("READY")
        before = _pings(receiver, 3)
        process.send_signal(signal.SIGUSR1)
        after = _pings(receiver, 3)
        gaps = [b - a for a, b in zip(before + after, (before + after)[1:])]
        # Pings every 0.2 s, then none while the loop sleeps 2 s, then again.
        assert max(gaps) > 1.5, gaps
        assert after[2] - after[1] < 1.0, gaps
    finally:
        _stopped(process)


def test_daemonize_hands_mainpid_to_systemd(tmp_path: Path, receiver: NotifyReceiver) -> None:
    qmp, pidfile = tmp_path / "qmp.sock", tmp_path / "vmd.pid"
    parent = spawn_vmd(receiver, *_qmp_args(qmp), "-daemonize", "-pidfile", str(pidfile),
                       env={"WATCHDOG_USEC": "1000000"}, own_pid_in=("WATCHDOG_PID",))
    assert parent.wait(30) == 0
    first = receiver.wait_for("READY")
    daemon_pid = int(pidfile.read_text())
    try:
        # The parent, the pid systemd started, announces the daemon.
        assert first.pid == parent.pid
        assert first.fields == {"MAINPID": str(daemon_pid), "READY": "1"}
        # Everything later comes from the new main pid, the watchdog included.
        status = receiver.wait_for("STATUS")
        assert (status.pid, status.fields) == (daemon_pid, {"STATUS": "running"})
        assert receiver.wait_for("WATCHDOG").pid == daemon_pid
        os.kill(daemon_pid, signal.SIGTERM)
        assert receiver.wait_for("STOPPING").pid == daemon_pid
        wait_gone(daemon_pid)
    finally:
        _kill(daemon_pid)
    assert not pidfile.exists()
    assert not qmp.exists()


def test_daemonize_reports_start_up_errors_in_exit_status(tmp_path: Path, receiver: NotifyReceiver) -> None:
    parent = spawn_vmd(receiver, *_qmp_args(tmp_path / "qmp.sock"), "-daemonize",
                       "-blockdev", "driver=file,node-name=n,filename=/nonexistent/disk",
                       stderr=subprocess.PIPE)
    _, stderr = parent.communicate(timeout=30)
    assert parent.returncode == 1
    assert b"Could not open '/nonexistent/disk'" in stderr
    assert b"Traceback" not in stderr
    with pytest.raises(TimeoutError):
        receiver.wait_for("READY", timeout=0.5)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- logging ------------------------------------------------------------------


def test_journal_gets_priority_prefixes(tmp_path: Path, receiver: NotifyReceiver) -> None:
    qmp, log = tmp_path / "qmp.sock", tmp_path / "journal"
    with open(log, "wb") as stderr:
        info = os.fstat(stderr.fileno())
        process = spawn_vmd(receiver, *_qmp_args(qmp), "-trace", "qmp_enter_query_name", stderr=stderr,
                            env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        try:
            receiver.wait_for("READY")
            with RawQMP(qmp) as client:
                client.negotiate()
                client.command({"execute": "query-name"})
            process.send_signal(signal.SIGTERM)
            assert process.wait(10) == 0
        finally:
            _stopped(process)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("<6>QMP client connected: pid=")
    assert lines[1:] == ["<7>qmp_enter_query_name {}", "<6>terminating on signal 15"]


def test_log_file_is_reopened_on_sighup(tmp_path: Path, receiver: NotifyReceiver) -> None:
    qmp, log, rotated = tmp_path / "qmp.sock", tmp_path / "vmd.log", tmp_path / "vmd.log.1"
    process = spawn_vmd(receiver, *_qmp_args(qmp), "-D", str(log), "-trace", "qmp_enter_query_*")
    try:
        receiver.wait_for("READY")
        with RawQMP(qmp) as client:
            client.negotiate()
            client.command({"execute": "query-name"})
            _wait_for_line(log, "qmp_enter_query_name {}")
            log.rename(rotated)  # what logrotate does
            process.send_signal(signal.SIGHUP)
            _wait_for_line(log, None)  # reopened: the file is there again
            client.command({"execute": "query-status"})
            _wait_for_line(log, "qmp_enter_query_status {}")
        assert process.poll() is None  # SIGHUP does not stop vmd
        assert "qmp_enter_query_status {}" not in rotated.read_text()
        assert "qmp_enter_query_name {}" not in log.read_text()
    finally:
        _stopped(process)


def _wait_for_line(path: Path, line: str | None, timeout: float = 10.0) -> None:
    """Until ``path`` exists (and has ``line``); another process writes it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (line is None or line in path.read_text().splitlines()):
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never held {line!r}")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vmd_command(*args), env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=30)


def test_trace_help_lists_events() -> None:
    result = _run("-trace", "help")
    names = result.stdout.splitlines()
    assert result.returncode == 0
    for name in ("runstate_set", "monitor_qmp_cmd_in_band", "qmp_enter_query_status", "qmp_exit_quit"):
        assert name in names
    assert _run("-d", "trace:help").stdout == result.stdout


@pytest.mark.parametrize("argv, message", [
    (["-D", "/nonexistent/dir/vmd.log"],
     "vmd: Error opening logfile /nonexistent/dir/vmd.log: No such file or directory"),
    (["-d", "in_asm"], "vmd: -d in_asm: unknown log item 'in_asm'"),
    (["-trace", "events=/nonexistent/events"], "error opening trace events file '/nonexistent/events'"),
    (["-trace", "enable=x,bogus=1"], "vmd: -trace enable=x,bogus=1: Invalid parameter 'bogus'"),
    (["-stop-grace", "soon"], "vmd: -stop-grace soon: expects a number of seconds"),
    (["@/nonexistent/vmd.conf"], "vmd: @/nonexistent/vmd.conf: No such file or directory"),
])
def test_user_errors_exit_1_without_traceback(argv: list[str], message: str) -> None:
    result = _run(*argv)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_trace_event_is_a_warning(tmp_path: Path, receiver: NotifyReceiver) -> None:
    process = spawn_vmd(receiver, *_qmp_args(tmp_path / "qmp.sock"), "-trace", "no_such_event",
                        "-trace", "no_such_*", stderr=subprocess.PIPE)
    try:
        receiver.wait_for("READY")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert process.stderr is not None
        lines = process.stderr.read().decode().splitlines()
        assert lines[0] == "vmd: -trace no_such_event: warning: trace event 'no_such_event' does not exist"
        assert len(lines) == 2  # the pattern matches nothing, silently (as QEMU)
    finally:
        _stopped(process)


def test_options_from_a_file(tmp_path: Path, receiver: NotifyReceiver) -> None:
    qmp = tmp_path / "qmp.sock"
    conf = tmp_path / "web1.conf"
    conf.write_text(f"# web1\n\n-name web one\n  -S\n-qmp   unix:{qmp},server=on,wait=off\n")
    process = spawn_vmd(receiver, f"@{conf}")
    try:
        assert receiver.wait_for("READY").fields["STATUS"] == "prelaunch"
        with RawQMP(qmp) as client:
            client.negotiate()
            assert client.command({"execute": "query-name"}) == {"return": {"name": "web one"}}
    finally:
        _stopped(process)


def test_option_file_errors_name_the_line(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("-S\nname web1\n")
    result = _run(f"@{conf}")
    assert result.returncode == 1
    assert result.stderr == f"vmd: {conf}:2: expected an option, found 'name web1'\n"


def test_notify_socket_in_the_abstract_namespace(tmp_path: Path) -> None:
    name = f"vmd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(20)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": "@" + name}
        process = subprocess.Popen(vmd_command(*_qmp_args(tmp_path / "qmp.sock")), env=env)
        try:
            assert sock.recv(4096).startswith(b"READY=1\n")
        finally:
            _stopped(process)


def test_second_sigterm_still_leaves_images_clean(tmp_path: Path, receiver: NotifyReceiver) -> None:
    """Two signals in a row: the stop does not wait, but every image is still flushed and closed."""
    image, qmp, nbd = tmp_path / "a.qcow2", tmp_path / "qmp.sock", tmp_path / "nbd.sock"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(image), "4M"],
                   check=True)
    process = spawn_vmd(receiver, *_qmp_args(qmp), "-blockdev",
                        f"driver=qcow2,node-name=a,file.driver=file,file.filename={image}")
    try:
        receiver.wait_for("READY")
        with RawQMP(qmp) as client:
            client.negotiate()
            for request in ({"execute": "nbd-server-start",
                             "arguments": {"addr": {"type": "unix", "data": {"path": str(nbd)}}}},
                            {"execute": "block-export-add",
                             "arguments": {"type": "nbd", "id": "e", "node-name": "a", "writable": True}}):
                assert client.command(request) == {"return": {}}
            write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5c 0 1M",
                                    f"nbd+unix:///a?socket={nbd}"], capture_output=True, text=True, timeout=60)
            assert write.returncode == 0, write.stderr
            assert _qcow2_dirty(image)  # lazy refcounts: dirty while open
            process.send_signal(signal.SIGTERM)
            receiver.wait_for("STOPPING")
            process.send_signal(signal.SIGTERM)  # while the images are being closed
            assert process.wait(30) == 0
    finally:
        _stopped(process)
    assert not _qcow2_dirty(image)
    check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout
    read = subprocess.run(["qemu-io", "-r", "-c", "read -P 0x5c 0 1M", str(image)], capture_output=True, text=True)
    assert read.returncode == 0 and "verification failed" not in read.stdout, read.stdout


def _qcow2_dirty(path: Path) -> bool:
    """The qcow2 header's dirty bit (incompatible feature bit 0)."""
    with open(path, "rb") as image:
        image.seek(72)
        return bool(int.from_bytes(image.read(8), "big") & 1)


def test_pidfile_must_be_a_regular_file(tmp_path: Path) -> None:
    """Not written, and never removed at exit (think of ``-pidfile /dev/null``)."""
    fifo = tmp_path / "not-a-file"
    os.mkfifo(fifo)
    result = _run("-pidfile", str(fifo), *_qmp_args(tmp_path / "qmp.sock"))
    assert result.returncode == 1
    assert result.stderr == "vmd: cannot create PID file: Failed to write pid file: not a regular file\n"
    assert fifo.exists()
