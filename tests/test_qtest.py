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


def stats_of(qmp: RawQMP) -> dict[str, tuple[int, int]]:
    """(rd_bytes, rd_operations) of each drive."""
    reply = qmp.command({"execute": "query-blockstats"})
    return {entry["device"]: (entry["stats"]["rd_bytes"], entry["stats"]["rd_operations"])
            for entry in reply["return"]}


def test_backend_limits_round_robin_and_release(tmp_path: Path) -> None:
    """I/O limits on BlockBackends (-drive iops=, block_set_io_throttle) in
    one group: what one clock_step allows is shared evenly between the
    drives; taking one drive out of the group lets its held reads go at
    once while the other's wait for the clock (QEMU's iotest 093,
    test_remove_group_member)."""
    qtest_path = tmp_path / "qtest.sock"
    drive = "driver=null-co,read-zeroes=on,iops=10,group=g"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(qtest_path))
        listener.listen(1)
        vmd = start_vmd(tmp_path, "-accel", "qtest", "-qtest", f"unix:path={qtest_path}",
                        "-drive", f"if=none,id=d0,{drive}", "-drive", f"if=none,id=d1,{drive}")
        try:
            listener.settimeout(10)
            qtest, _ = listener.accept()
            qtest.settimeout(10)
            reader = qtest.makefile("rb")

            def step(ns: int) -> None:
                qtest.sendall(f"clock_step {ns}\n".encode())
                assert reader.readline().startswith(b"OK ")
            with RawQMP(vmd.qmp_path) as qmp:
                qmp.negotiate()
                step(1_000_000_000)
                for _ in range(20):
                    for name in ("d0", "d1"):
                        assert hmp(qmp, f'qemu-io {name} "aio_read 0 512"') == ""
                before = stats_of(qmp)
                step(2_000_000_000)
                after = stats_of(qmp)
                done = [after[name][1] - before[name][1] for name in ("d0", "d1")]
                assert abs(done[0] - done[1]) <= 1 and 18 <= sum(done) <= 22, (before, after)
                step(10_000_000_000)   # the rest goes
                assert stats_of(qmp) == {"d0": (10240, 20), "d1": (10240, 20)}

                limits = {"bps": 0, "bps_rd": 4096, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}
                for name in ("d0", "d1"):
                    assert qmp.command({"execute": "block_set_io_throttle",
                                        "arguments": {**limits, "device": name, "group": "test"}}) == {"return": {}}
                for name, length in (("d0", 4096), ("d0", 2048), ("d0", 2048), ("d1", 4096)):
                    assert hmp(qmp, f'qemu-io {name} "aio_read 0 {length}"') == ""
                assert stats_of(qmp) == {"d0": (14336, 21), "d1": (10240, 20)}
                assert qmp.command({"execute": "block_set_io_throttle",
                                    "arguments": {**limits, "bps_rd": 0, "device": "d0"}}) == {"return": {}}
                assert stats_of(qmp) == {"d0": (18432, 23), "d1": (10240, 20)}
                step(5_000_000_000)
                assert stats_of(qmp) == {"d0": (18432, 23), "d1": (14336, 21)}
            reader.close()
            qtest.close()
        finally:
            vmd.process.kill()
            vmd.process.wait()
