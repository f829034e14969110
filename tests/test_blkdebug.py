"""The blkdebug filter: its rule language, and injected errors compared with QEMU 7.2.

Errors are injected under an NBD export of each daemon and provoked with
qemu-io, so the client sees exactly what QEMU's clients see; the image is
then checked with qemu-img (no data lost beyond the failed request).
"""

from __future__ import annotations

import errno
import json
import re
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.harness import QEMU, RawQMP, running_qemu, running_vmd
from vmd._generated.types import BlkdebugEvent, BlkdebugIOType
from vmd.block.drivers.blkdebug import InjectRule, StateRule, parse_config
from vmd.errors import QMPError

CONFIG = """
# a comment
[inject-error]
once = "on"
errno = "28"
event = "write_aio"

[set-state]
new_state = "2"
event = "flush_to_disk"
state = "1"

[inject-error]
event = "l2_alloc.write"
iotype = "read"
sector = "8"
state = "2"
"""


def test_config_file_syntax() -> None:
    rules = parse_config(CONFIG)
    assert rules == [rules[0], rules[1], rules[2]]
    first, second, third = rules
    assert isinstance(first, InjectRule) and isinstance(second, StateRule) and isinstance(third, InjectRule)
    assert (first.event, first.errno, first.once, first.offset) == (BlkdebugEvent.WRITE_AIO, errno.ENOSPC, True, None)
    assert (second.event, second.state, second.new_state) == (BlkdebugEvent.FLUSH_TO_DISK, 1, 2)
    assert (third.event, third.iotypes, third.offset, third.state, third.errno) == (
        BlkdebugEvent.L2_ALLOC_WRITE, frozenset({BlkdebugIOType.READ}), 4096, 2, errno.EIO)


@pytest.mark.parametrize("text, message", [
    ("[nosuch]\n", "Could not parse blkdebug config file"),
    ('event = "read_aio"\n', "Could not parse blkdebug config file"),
    ('[inject-error]\nbogus = "1"\n', "Could not parse blkdebug config file"),
    ('[inject-error]\nevent = "nope"\n', 'Invalid event name "nope"'),
    ('[inject-error]\nevent = "read_aio"\nerrno = "x"\n', "Parameter 'errno' expects a number"),
])
def test_config_file_errors(text: str, message: str) -> None:
    with pytest.raises(QMPError) as info:
        parse_config(text)
    assert info.value.desc == message


def qemu_io(url: str, *commands: str) -> list[str]:
    args = ["qemu-io", "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=60)
    # Drop the timing lines; keep what was done and what failed.
    return [line for line in (result.stdout + result.stderr).splitlines() if not re.match(r"\w+ \d+/\d+ bytes", line)
            and "ops/sec" not in line]


def export(path: Path, image: Path, socket_path: Path, blkdebug: dict[str, Any]) -> list[dict[str, Any]]:
    requests = [
        {"execute": "blockdev-add", "arguments": {
            "driver": "raw", "node-name": "disk",
            "file": {"driver": "blkdebug", "node-name": "dbg",
                     "image": {"driver": "file", "filename": str(image)}, **blkdebug}}},
        {"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": str(socket_path)}}}},
        {"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e", "node-name": "disk",
                                                      "writable": True}},
    ]
    with RawQMP(path) as qmp:
        qmp.negotiate()
        return [qmp.command(json.dumps(request)) for request in requests]


def events_until_reply(qmp: RawQMP) -> list[str]:
    """Names of the events that came before the reply to a fresh request."""
    qmp.send('{"execute":"query-name","id":"mark"}')
    names = []
    while True:
        message = qmp.read()
        if message.get("id") == "mark":
            return names
        names.append(message.get("event", "?"))


SCENARIOS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "enospc-once-on-write": (
        {"inject-error": [{"event": "write_aio", "errno": 28, "once": True}]},
        ["write -P 0x11 0 64k", "write -P 0x22 0 64k", "read -P 0x22 0 64k"]),
    "eio-on-reads-after-a-flush": (
        {"inject-error": [{"event": "flush_to_disk", "iotype": "read", "immediately": True}]},
        ["flush", "read -P 0 0 4k", "write -P 0x33 4k 4k", "flush", "read 0 4k", "read 4k 4k"]),
    "only-the-sector-named": (
        {"inject-error": [{"event": "pwritev", "sector": 16}]},
        ["write -P 0x44 0 4k", "write -P 0x44 8k 4k", "read -P 0x44 0 4k"]),
    "state-machine": (
        {"set-state": [{"event": "pwritev_done", "state": 1, "new_state": 2}],
         "inject-error": [{"event": "pwritev", "state": 2, "errno": 5}]},
        ["write -P 0x55 0 4k", "write -P 0x55 4k 4k", "write -P 0x55 8k 4k", "read -P 0x55 0 4k"]),
}


@pytest.mark.qemu
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_injected_errors_match_qemu(tmp_path: Path, scenario: str) -> None:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    options, commands = SCENARIOS[scenario]
    outputs = []
    for name in ("vmd", "qemu"):
        work = tmp_path / name
        work.mkdir()
        image = work / "disk.raw"
        image.write_bytes(bytes(1 << 20))
        socket_path = work / "nbd.sock"
        with ExitStack() as stack:
            path = stack.enter_context(running_vmd(work)).qmp_path if name == "vmd" else \
                stack.enter_context(running_qemu(work))
            assert export(path, image, socket_path, options) == [{"return": {}}] * 3
            with RawQMP(path) as watcher:
                watcher.negotiate()
                outputs.append(qemu_io(f"nbd+unix:///disk?socket={socket_path}", *commands))
                outputs.append(events_until_reply(watcher))
    assert outputs[0] == outputs[2]
    # Neither sends BLOCK_IO_ERROR for an export's failed request: only guest
    # devices (werror/rerror) report it; the NBD client gets the error itself.
    assert outputs[1] == outputs[3] == []
    assert any("failed" in line for line in outputs[0]), outputs[0]


def test_config_file_rules_through_qmp(tmp_path: Path) -> None:
    config = tmp_path / "rules.cfg"
    config.write_text('[inject-error]\nevent = "pwritev"\nerrno = "28"\n')
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(1 << 20))
    with running_vmd(tmp_path) as vmd:
        replies = export(vmd.qmp_path, image, tmp_path / "nbd.sock", {"config": str(config)})
        assert replies == [{"return": {}}] * 3
        lines = qemu_io(f"nbd+unix:///disk?socket={tmp_path / 'nbd.sock'}", "write 0 4k", "read -P 0 0 4k")
        assert lines[0] == "write failed: No space left on device"
        with RawQMP(vmd.qmp_path) as qmp:
            qmp.negotiate()
            missing = {"execute": "blockdev-add", "arguments": {
                "driver": "blkdebug", "node-name": "x", "config": str(tmp_path / "none.cfg"),
                "image": {"driver": "file", "filename": str(image)}}}
            assert qmp.command(missing)["error"]["desc"] == \
                "Could not read blkdebug config file: No such file or directory"
