"""-accel qtest and -qtest: the qtest line protocol and the virtual clock,
and a throttle group whose waits follow that clock (as QEMU puts I/O
throttling on QEMU_CLOCK_VIRTUAL under qtest)."""

import json
import socket
import time
from pathlib import Path

from tests.harness import RawQMP, start_vmd
from vmd.qtest.clock import VirtualClock
from vmd.qtest.protocol import QtestProtocol


def test_protocol_moves_the_clock_forward_only() -> None:
    protocol = QtestProtocol(VirtualClock())
    assert protocol.feed(b"clock_step 100\n") == b"OK 100\n"
    assert protocol.feed(b"clock_step\n") == b"OK 100\n"   # no timer: the clock stays
    assert protocol.feed(b"clock_set 50\nclock_set 0x100\n") == b"OK 100\nOK 256\n"
    assert protocol.feed(b"endianness\nreadb 0x1000\n") == b"OK little\nFAIL Unknown command 'readb'\n"
    assert protocol.feed(b"clock_st") == b""   # a line is answered once complete
    assert protocol.feed(b"ep 4\n") == b"OK 260\n"


def test_without_qtest_accel_there_is_no_clock() -> None:
    assert QtestProtocol(None).feed(b"clock_step 1\n") == b"FAIL Unknown command 'clock_step'\n"


def hmp(qmp: RawQMP, line: str) -> str:
    reply = qmp.command({"execute": "human-monitor-command", "arguments": {"command-line": line}})
    assert "return" in reply, reply
    return str(reply["return"])


def test_throttled_read_waits_for_clock_step(tmp_path: Path) -> None:
    """bps-read 4096: a first 4 KiB read goes at once, a second waits until
    the bucket leaks below a tenth of a second's worth: 0.9 s of virtual time."""
    qtest_path = tmp_path / "qtest.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(qtest_path))
        listener.listen(1)
        vmd = start_vmd(tmp_path, "-accel", "qtest", "-qtest", f"unix:path={qtest_path}")
        try:
            listener.settimeout(10)
            qtest, _ = listener.accept()
            qtest.settimeout(10)
            reader = qtest.makefile("rb")
            with RawQMP(vmd.qmp_path) as qmp:
                qmp.negotiate()
                for request in (
                        {"execute": "object-add", "arguments": {"qom-type": "throttle-group", "id": "tg",
                                                                "limits": {"bps-read": 4096}}},
                        {"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "null"}},
                        {"execute": "blockdev-add", "arguments": {"driver": "throttle", "node-name": "thr",
                                                                  "throttle-group": "tg", "file": "null"}}):
                    assert qmp.command(json.dumps(request)) == {"return": {}}
                assert qmp.command({"execute": "object-del", "arguments": {"id": "tg"}}) == {
                    "error": {"class": "GenericError", "desc": "object 'tg' is in use, can not be deleted"}}
                assert hmp(qmp, 'qemu-io thr "read 0 4096"') == ""
                assert hmp(qmp, 'qemu-io thr "aio_read 0 4096"') == ""
                qtest.sendall(b"clock_step 100000000\n")
                assert reader.readline() == b"OK 100000000\n"
                # Without a timer "clock_step" leaves the clock alone; once the
                # aio read waits for the throttle it steps to that deadline.
                deadline = time.monotonic() + 10
                while True:
                    qtest.sendall(b"clock_step\n")
                    answer = reader.readline().split()
                    if answer != [b"OK", b"100000000"] or time.monotonic() > deadline:
                        break
                assert answer[0] == b"OK" and abs(int(answer[1]) - 900_000_000) <= 1, answer
                assert hmp(qmp, 'qemu-io thr "aio_flush"') == ""   # the read has ended
                qtest.sendall(b"clock_step\n")
                assert reader.readline() == answer[0] + b" " + answer[1] + b"\n"   # no timer left
            reader.close()
            qtest.close()
        finally:
            vmd.process.kill()
            vmd.process.wait()
