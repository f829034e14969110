"""Differential tests: the same raw bytes to QEMU and to vmd, same answers.

One QEMU (``-M none -nodefaults``) and one vmd, both named ``testvm``, are
started per module; every case opens a fresh connection to each, sends the
identical bytes and compares what comes back, message by message:

* errors exactly (``class``, ``desc``, and whether and which ``id`` is
  echoed); successful replies as parsed values, so member order (QEMU 7.2
  prints hash order, vmd insertion order) and number spelling (QEMU prints
  ``%.17g``) do not matter;
* events by name and data, their timestamps only by shape.

Most cases end with ``{"execute":"query-name","id":"after"}``, which shows
the connection is still usable after bad input and marks the end of the
answer. Known, intended deviations are tested as such at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import QEMU, RawQMP, VmdProcess, running_qemu, running_vmd

pytestmark = pytest.mark.qemu

SENTINEL = b'{"execute":"query-name","id":"after"}'
TIMEOUT = 5.0


# -- daemons, shared by the module -------------------------------------------

@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Path, Path]]:
    """(vmd socket, QEMU socket), started once for the whole module."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    vmd_dir = tmp_path_factory.mktemp("vmd")
    qemu_dir = tmp_path_factory.mktemp("qemu")
    with running_vmd(vmd_dir, "-name", "testvm") as vmd, \
            running_qemu(qemu_dir, "-name", "testvm") as qemu:
        yield vmd.qmp_path, qemu


# -- talking to both -----------------------------------------------------------

def read_message(qmp: RawQMP) -> dict[str, Any]:
    line = qmp.read_line()
    assert line.endswith(b"\r\n"), f"line not ended by CRLF: {line!r}"
    message: dict[str, Any] = json.loads(line)
    return message


def enter_mode(qmp: RawQMP, mode: str) -> None:
    """``raw``: still negotiating; ``cmd``: negotiated; ``oob``: with OOB."""
    if mode == "raw":
        return
    request: dict[str, Any] = {"execute": "qmp_capabilities"}
    if mode == "oob":
        request["arguments"] = {"enable": ["oob"]}
    qmp.send(json.dumps(request))
    assert read_message(qmp) == {"return": {}}


def read_until_reply(qmp: RawQMP, reply_id: Any = None
                     ) -> list[dict[str, Any]]:
    """Messages up to and including the next reply (with ``reply_id``)."""
    messages = []
    while True:
        message = read_message(qmp)
        messages.append(message)
        if "event" in message:
            continue
        if reply_id is None or message.get("id") == reply_id:
            return messages


def exchange(path: Path, data: bytes | list[bytes], mode: str = "cmd",
             sentinel: bool = True) -> list[dict[str, Any]]:
    """Send ``data`` (one write, or one write per chunk) on a fresh
    connection; return every message up to the sentinel's reply."""
    with RawQMP(path, timeout=TIMEOUT) as qmp:
        enter_mode(qmp, mode)
        for chunk in [data] if isinstance(data, bytes) else data:
            qmp.send(chunk)
        if not sentinel:
            return read_until_reply(qmp)
        qmp.send(SENTINEL)
        return read_until_reply(qmp, "after")


def normalize(message: dict[str, Any]) -> dict[str, Any]:
    """Events: check the timestamp's shape, then blank it out."""
    if "event" not in message:
        return message
    stamp = message.get("timestamp")
    assert isinstance(stamp, dict) and set(stamp) == {"seconds",
                                                      "microseconds"}, message
    assert all(type(value) is int for value in stamp.values()), message
    assert abs(stamp["seconds"] - time.time()) < 60, message
    assert 0 <= stamp["microseconds"] < 1_000_000, message
    assert set(message) <= {"timestamp", "event", "data"}, message
    return {**message, "timestamp": "<timestamp>"}


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def assert_same(case: Any, vmd: list[Any], qemu: list[Any]) -> None:
    """Compare message lists; on mismatch show only the differing ones."""
    if vmd == qemu:
        return
    lines = [f"vmd differs from QEMU for {_short(case, 120)}:"]
    for index in range(max(len(vmd), len(qemu))):
        mine = vmd[index] if index < len(vmd) else "<nothing>"
        theirs = qemu[index] if index < len(qemu) else "<nothing>"
        if mine != theirs:
            lines.append(f"  [{index}] vmd : {_short(mine)}")
            lines.append(f"  [{index}] qemu: {_short(theirs)}")
    raise AssertionError("\n".join(lines))


def compare(daemons: tuple[Path, Path], data: bytes | list[bytes],
            mode: str = "cmd", sentinel: bool = True
            ) -> list[dict[str, Any]]:
    """Run one case against both; assert equal answers; return QEMU's."""
    answers = [[normalize(message)
                for message in exchange(path, data, mode, sentinel)]
               for path in daemons]
    assert_same(data, *answers)
    return answers[1]


# -- greeting ------------------------------------------------------------------

def shape(value: Any) -> Any:
    """Member names recursively, with scalars replaced by their type."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def test_greeting(daemons: tuple[Path, Path]) -> None:
    greetings = []
    for path in daemons:
        with RawQMP(path, timeout=TIMEOUT) as qmp:
            greetings.append(qmp.greeting)
            # query-version answers with the greeting's version object.
            enter_mode(qmp, "cmd")
            qmp.send(b'{"execute":"query-version"}')
            assert read_message(qmp) == {
                "return": qmp.greeting["QMP"]["version"]}
    vmd, qemu = greetings
    assert_same("greeting shape", [shape(vmd)], [shape(qemu)])
    for greeting in greetings:
        assert set(greeting) == {"QMP"}
        assert set(greeting["QMP"]) == {"version", "capabilities"}
        version = greeting["QMP"]["version"]
        assert set(version) == {"qemu", "package"}
        assert set(version["qemu"]) == {"major", "minor", "micro"}
        assert all(type(number) is int for number in version["qemu"].values())
        assert isinstance(version["package"], str)
        assert greeting["QMP"]["capabilities"] == ["oob"]


def test_greeting_bytes_end_with_crlf(daemons: tuple[Path, Path]) -> None:
    for path in daemons:
        with RawQMP(path, timeout=TIMEOUT) as qmp:
            qmp.send(SENTINEL)
            assert read_message(qmp)["id"] == "after"


# -- capabilities negotiation -----------------------------------------------------

NEGOTIATION_CASES = [
    ("raw", b'{"execute":"query-status"}'),
    ("raw", b'{"execute":"query-status","id":1}'),
    ("raw", b'{"execute":"nonexistent-cmd"}'),
    ("raw", b'{"execute":"nonexistent-cmd","id":"x"}'),
    ("raw", b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}'),
    ("raw", b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]},'
            b'"id":7}'),
    ("raw", b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}'),
    ("raw", b'{"execute":"qmp_capabilities","arguments":{"enable":[1]}}'),
    ("raw", b'{"execute":"qmp_capabilities","arguments":{"foo":1}}'),
    ("raw", b'{"exec-oob":"qmp_capabilities","id":1}'),
    ("raw", b'[1,2]'),
    ("raw", b'{"id":5}'),
    ("cmd", b'{"execute":"qmp_capabilities"}'),
    ("cmd", b'{"execute":"qmp_capabilities","id":3}'),
    ("cmd", b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}'),
    ("cmd", b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}'),
]


@pytest.mark.parametrize("mode,data", NEGOTIATION_CASES,
                         ids=[f"{m}:{d.decode()}" for m, d in NEGOTIATION_CASES])
def test_negotiation(daemons: tuple[Path, Path], mode: str, data: bytes
                     ) -> None:
    compare(daemons, data, mode)


def test_negotiation_texts(daemons: tuple[Path, Path]) -> None:
    """Spot-check QEMU's texts, so both cannot agree on something else."""
    answer = compare(daemons, b'{"execute":"query-name","id":1}', "raw")
    assert answer[0] == {"id": 1, "error": {
        "class": "CommandNotFound",
        "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
    answer = compare(daemons, b'{"execute":"qmp_capabilities"}', "cmd")
    assert answer[0]["error"] == {
        "class": "CommandNotFound",
        "desc": "Capabilities negotiation is already complete, "
                "command ignored"}


# -- arguments ---------------------------------------------------------------------

def hmc(arguments: str) -> bytes:
    return (b'{"execute":"human-monitor-command","arguments":'
            + arguments.encode() + b',"id":"h"}')


ARGUMENT_CASES = [
    b'{"execute":"nonexistent-cmd"}',
    b'{"execute":"nonexistent-cmd","id":1}',
    hmc('{}'),
    b'{"execute":"query-status","arguments":{"foo":1}}',
    b'{"execute":"query-status","arguments":{"foo":1},"id":2}',
    hmc('{"command-line":"info status","foo":1}'),
    hmc('{"command-line":1}'),
    hmc('{"command-line":true}'),
    hmc('{"command-line":null}'),
    hmc('{"command-line":[]}'),
    hmc('{"command-line":{}}'),
    hmc('{"command-line":"info status","cpu-index":"0"}'),
    hmc('{"command-line":"info status","cpu-index":1.5}'),
    hmc('{"command-line":"info status","cpu-index":1}'),
    hmc('{"command-line":"info status","cpu-index":-1}'),
    b'{"execute":"qmp_capabilities","arguments":{"enable":["bogus"]},'
    b'"id":4}',
    b'{"execute":"yank","arguments":{"instances":[{"type":"bogus"}]}}',
    b'{"execute":"yank","arguments":{"instances":[{"type":"chardev"}]}}',
    b'{"execute":"yank","arguments":{"instances":[{"type":"chardev",'
    b'"id":"nope"}]}}',
    b'{"execute":"yank","arguments":{"instances":[1]}}',
    b'{"execute":"yank","arguments":{"instances":{}}}',
    b'{"execute":"yank","arguments":{}}',
    b'{"execute":"stop","arguments":{"a":null}}',
    b'{"execute":"query-name","arguments":{}}',
]


@pytest.mark.parametrize("data", ARGUMENT_CASES,
                         ids=[d.decode() for d in ARGUMENT_CASES])
def test_arguments(daemons: tuple[Path, Path], data: bytes) -> None:
    compare(daemons, data)


# -- the request envelope ---------------------------------------------------------

ENVELOPE_CASES = [
    ("cmd", b'[1,2]'),
    ("cmd", b'42 '),
    ("cmd", b'null '),
    ("cmd", b'"s"'),
    ("cmd", b'[]'),
    ("cmd", b'{}'),
    ("cmd", b'{"id":5}'),
    ("cmd", b'{"arguments":{}}'),
    ("cmd", b'{"arguments":{},"id":[1]}'),
    ("cmd", b'{"execute":1}'),
    ("cmd", b'{"execute":1,"id":"e"}'),
    ("cmd", b'{"execute":"query-name","foo":1}'),
    ("cmd", b'{"execute":"query-name","foo":1,"id":6}'),
    ("cmd", b'{"execute":"query-name","control":{"run-oob":true}}'),
    ("cmd", b'{"execute":"query-name","arguments":[],"id":1}'),
    ("cmd", b'{"execute":"query-name","arguments":null,"id":1}'),
    ("cmd", b'{"execute":"query-name","arguments":1,"id":1}'),
    ("raw", b'{"exec-oob":"query-yank","id":1}'),
    ("cmd", b'{"exec-oob":"query-yank","id":1}'),
    ("cmd", b'{"exec-oob":"query-yank"}'),
    ("oob", b'{"exec-oob":"query-status","id":1}'),
    ("oob", b'{"exec-oob":"qmp_capabilities","id":1}'),
    ("oob", b'{"exec-oob":"nonexistent-cmd","id":1}'),
    ("oob", b'{"exec-oob":1,"id":1}'),
    ("oob", b'{"exec-oob":"query-yank","arguments":{"x":1},"id":1}'),
    ("oob", b'{"exec-oob":"query-yank","id":"y"}'),
    ("oob", b'{"exec-oob":"query-yank"}'),
    # QEMU checks members in hash order, vmd in input order: this order is
    # the one where both report the same member.
    ("oob", b'{"exec-oob":"query-yank","execute":"query-name","id":1}'),
]


@pytest.mark.parametrize("mode,data", ENVELOPE_CASES,
                         ids=[f"{m}:{d.decode()}" for m, d in ENVELOPE_CASES])
def test_envelope(daemons: tuple[Path, Path], mode: str, data: bytes
                  ) -> None:
    compare(daemons, data, mode)


def test_exec_oob_query_yank_shape(daemons: tuple[Path, Path]) -> None:
    answer = compare(daemons, b'{"exec-oob":"query-yank","id":"y"}', "oob")
    reply = answer[0]
    assert set(reply) == {"return", "id"} and reply["id"] == "y"
    assert all(set(item) >= {"type"} for item in reply["return"])


# -- JSON syntax errors; the connection must survive each ------------------------

JSON_ERROR_CASES = [
    b'@',
    b'\x01',
    b'\xff',
    b'{"execute":"query-name","id":"a\nb"}',
    b'{"execute":"query-name",}',
    b'[1,]',
    b'}',
    b']',
    b'{"execute":"query-name"]',
    b'{"execute":"query-name" "id":1}',
    b'[1 2]',
    b'{"execute" "query-name"}',
    b'{1:2}',
    b'tru ',
    b'True ',
    b'nulll ',
    b'{"execute":"query-name","id":"\\q"}',
    b'{"execute":"query-name","id":"\\ud83d"}',
    b'{"execute":"query-name","id":"\\ud83dx"}',
    b'{"execute":"query-name","id":"\\ude00"}',
    b'{"execute":"query-name","id":"\\ud83d\\ud83d"}',
    b'{"execute":"query-name","id":"\\ud83d\\u12"}',
    b'{"execute":"query-name","id":"\\uzzzz"}',
    b'{"execute":"query-name","id":"\\u12"}',
    b'{"execute":"query-name","id":"\\u"}',
    b'{"execute":"query-name","id":"\xc3("}',
    b'{"execute":"query-name","id":"\xed\xa0\xbd"}',
    b'{"execute":"query-name","id":"\xf4\x90\x80\x80"}',
    b'{"execute":"query-name","id":1,"id":2}',
    b'01',
    b'{"execute":"query-name","id":01}',
    b'{"execute":"query-name","id":1.}',
    b'{"execute":"query-name","id":-}',
    b'{"execute":"query-name","id":+1}',
    b'{"execute":"query-name","id":.5}',
    b'{"execute":"query-name","id":"\t"}',
    b'[' * 1025 + b']' * 1025,
    b'{"execute":"query-name","id":' + b'[' * 1024 + b']' * 1024 + b'}',
]


@pytest.mark.parametrize("data", JSON_ERROR_CASES,
                         ids=[repr(d)[2:60] for d in JSON_ERROR_CASES])
def test_json_errors(daemons: tuple[Path, Path], data: bytes) -> None:
    answer = compare(daemons, data)
    assert answer[-1] == {"return": {"name": "testvm"}, "id": "after"}
    assert all("error" in message and "id" not in message
               for message in answer[:-1]), answer


def test_json_error_texts(daemons: tuple[Path, Path]) -> None:
    """Spot-check QEMU's texts (so both cannot agree on something else)."""
    expected = {
        b'@': "JSON parse error, stray '@'",
        b'[1,]': "JSON parse error, expecting value",
        b'[1 2]': "JSON parse error, expected separator in list",
        b'{"a" 1}': "JSON parse error, missing : in object pair",
        b'{1:2}': "JSON parse error, key is not a string in object",
        b'tru ': "JSON parse error, invalid keyword 'tru'",
        b'{"a":"\\ud83d"}':
            "JSON parse error, \\ud83d is not a valid Unicode character",
        b'{"a":"\\u12"}':
            "JSON parse error, \\u12\" is not a valid Unicode character",
        b'{"a":1,"a":2}': "JSON parse error, duplicate key",
    }
    for data, desc in expected.items():
        answer = compare(daemons, data)
        assert answer[0] == {"error": {"class": "GenericError",
                                       "desc": desc}}, data


# -- id echo, quoting, framing ----------------------------------------------------

IDS = ['"x"', '1', '-1', '1.5', 'null', 'true', 'false', '[1,"two",null]',
       '{"a":[1,2]}', '""', '18446744073709551615', '-9223372036854775808',
       '1e5', '"\\u00e9\\ud83d\\ude00/\\/\\b\\f\\n\\r\\t\\u007f\\u0000"',
       '"\xc3\xa9"']


ID_TEMPLATES = {
    "success": '{"execute":"query-name","id":@}',
    "not-found": '{"execute":"nonexistent-cmd","id":@}',
    "bad-arguments": '{"execute":"query-status","id":@,"arguments":["x"]}',
    "no-execute": '{"id":@}',
}


@pytest.mark.parametrize("template", ID_TEMPLATES)
@pytest.mark.parametrize("id_text", IDS)
def test_id_echo(daemons: tuple[Path, Path], template: str, id_text: str
                 ) -> None:
    data = ID_TEMPLATES[template].replace("@", id_text).encode()
    answer = compare(daemons, data)
    assert answer[0]["id"] == json.loads(id_text)


def test_id_output_escaping(daemons: tuple[Path, Path]) -> None:
    """Non-ASCII and 0x7F come back as upper-case ``\\uXXXX`` from both."""
    data = (b'{"execute":"query-name",'
            b'"id":"\\u00e9\\ud83d\\ude00\\u007f/"}')
    for path in daemons:
        with RawQMP(path, timeout=TIMEOUT) as qmp:
            enter_mode(qmp, "cmd")
            qmp.send(data)
            line = qmp.read_line()
            assert b'"\\u00E9\\uD83D\\uDE00\\u007F/"' in line, line


@pytest.mark.parametrize("data", [
    b"{'execute':'query-name','id':'sq'}",
    b"{'execute':'query-name','id':'s\\'q'}",
    b'{"execute":"query-name","id":"s\\\'q"}',
    b"{'execute':'nonexistent-cmd','id':'sq'}",
    b"{'execute':'query-name','id':'s\"q'}",
], ids=["single", "single-escape", "double-escape", "single-error",
        "single-dq"])
def test_single_quotes(daemons: tuple[Path, Path], data: bytes) -> None:
    compare(daemons, data)


def test_several_messages_in_one_write(daemons: tuple[Path, Path]) -> None:
    data = (b'{"execute":"query-name","id":1}{"execute":"query-status",'
            b'"id":2}\n\n  {"execute":"nonexistent-cmd","id":3}[1]'
            b'{"execute":"query-name"}\r\n')
    answer = compare(daemons, data)
    assert len(answer) == 6


def test_one_message_byte_by_byte(daemons: tuple[Path, Path]) -> None:
    data = (b'{"execute":"human-monitor-command","arguments":'
            b'{"command-line":"info status"},"id":"split \\u00e9\xc3\xa9"}'
            b"{'execute':'query-name','id':[1.5e3,-0,{'k':null}]}")
    compare(daemons, [bytes([byte]) for byte in data])


def test_message_split_in_two(daemons: tuple[Path, Path]) -> None:
    compare(daemons, [b'{"execute":"query-sta', b'tus","id":"two"}'])


# -- return values and state changes --------------------------------------------

def test_query_name_and_version(daemons: tuple[Path, Path]) -> None:
    compare(daemons, b'{"execute":"query-name","id":1}')
    answers = [exchange(path, b'{"execute":"query-version"}')
               for path in daemons]
    assert_same("query-version shape", [shape(answers[0][0])],
                [shape(answers[1][0])])


def test_query_yank(daemons: tuple[Path, Path]) -> None:
    compare(daemons, b'{"execute":"query-yank","id":1}')


def test_query_commands_subset(daemons: tuple[Path, Path]) -> None:
    names = []
    for path in daemons:
        answer = exchange(path, b'{"execute":"query-commands","id":1}')
        assert all(set(item) == {"name"} for item in answer[0]["return"])
        names.append({item["name"] for item in answer[0]["return"]})
    vmd, qemu = names
    assert vmd <= qemu, f"vmd-only commands: {sorted(vmd - qemu)}"
    assert {"qmp_capabilities", "query-commands", "query-status",
            "human-monitor-command", "query-yank", "yank"} <= vmd


def test_stop_cont_status_and_events(daemons: tuple[Path, Path]) -> None:
    """STOP/RESUME come before the reply; repeated verbs emit nothing."""
    steps = [b'{"execute":"query-status","id":0}',
             b'{"execute":"stop","id":1}',
             b'{"execute":"query-status","id":2}',
             hmc('{"command-line":"info status"}'),
             b'{"execute":"stop","id":3}',
             b'{"execute":"cont","id":4}',
             b'{"execute":"query-status","id":5}',
             b'{"execute":"cont","id":6}',
             hmc('{"command-line":"stop"}'),
             hmc('{"command-line":"info status"}'),
             hmc('{"command-line":"c"}'),
             b'{"execute":"query-status","id":7}']
    answers = []
    for path in daemons:
        with RawQMP(path, timeout=TIMEOUT) as qmp:
            enter_mode(qmp, "cmd")
            messages = []
            try:
                for step in steps:
                    qmp.send(step)
                    messages.append([normalize(message)
                                     for message in read_until_reply(qmp)])
            finally:  # leave the shared daemon running, whatever happened
                qmp.send(b'{"execute":"cont","id":"restore"}')
                read_until_reply(qmp, "restore")
            answers.append(messages)
    assert_same("stop/cont sequence", *answers)
    qemu = answers[1]
    assert [m.get("event") for m in qemu[1]] == ["STOP", None]
    assert qemu[2][0]["return"] == {"running": False, "singlestep": False,
                                    "status": "paused"}
    assert qemu[3][0]["return"] == "VM status: paused\r\n"
    assert len(qemu[4]) == 1  # no second STOP
    assert [m.get("event") for m in qemu[5]] == ["RESUME", None]
    assert len(qemu[7]) == 1  # no second RESUME


def test_system_reset_and_powerdown(daemons: tuple[Path, Path]) -> None:
    data = (b'{"execute":"system_reset","id":1}'
            b'{"execute":"system_powerdown","id":2}')
    answer = compare(daemons, data)
    assert [m.get("event") for m in answer] == ["RESET", None, "POWERDOWN",
                                                None, None]


HMP_LINES = ["info status", "info name", "help stop", "foo", "info foo",
             "info status x", "", "   ", "  info   status  ", "help help",
             "help cont", "help quit", "help q", "help s",
             "help system_reset", "help system_powerdown", "help ?",
             "help info name",
             "help info status", "help info  name", "help nosuch",
             "help nosuch extra", "help info foo bar", "stop x", "s x",
             "c x", "system_reset x", "info name x", "  info   status  x ",
             "info  foo", "  info   foo bar", " nosuch x", "stop/x",
             "info status/x", "INFO status", "info\tstatus", "help stop x"]


@pytest.mark.parametrize("line", HMP_LINES)
def test_human_monitor_command(daemons: tuple[Path, Path], line: str
                               ) -> None:
    answer = compare(daemons, hmc(json.dumps({"command-line": line})))
    assert isinstance(answer[0]["return"], str)


# vmd's own HMP command, not in QEMU.
VMD_ONLY_HELP = {"info commands  -- list the QMP commands vmd provides"}


@pytest.mark.parametrize("line", ["help", "info", "help info", "?"])
def test_hmp_help_lists_are_subsets(daemons: tuple[Path, Path], line: str
                                    ) -> None:
    """vmd has fewer commands; each line it prints must be QEMU's line."""
    data = hmc(json.dumps({"command-line": line}))
    vmd, qemu = ([message["return"] for message in exchange(path, data)[:1]]
                 for path in daemons)
    assert vmd[0].endswith("\r\n") and qemu[0].endswith("\r\n")
    vmd_lines = set(vmd[0].split("\r\n")) - VMD_ONLY_HELP
    extra = vmd_lines - set(qemu[0].split("\r\n"))
    assert not extra, f"vmd help lines QEMU does not print: {sorted(extra)}"


def test_quit(tmp_path: Path, vmd: VmdProcess, qemu: Path) -> None:
    """SHUTDOWN, then the reply, then EOF (private daemons)."""
    answers = []
    for path in (vmd.qmp_path, qemu):
        with RawQMP(path, timeout=TIMEOUT) as qmp:
            enter_mode(qmp, "cmd")
            qmp.send(b'{"execute":"quit","id":"q"}')
            messages = read_until_reply(qmp, "q")
            with pytest.raises(EOFError):
                qmp.read_line()
            answers.append([normalize(message) for message in messages])
    assert_same("quit", *answers)
    assert answers[1] == [
        {"timestamp": "<timestamp>", "event": "SHUTDOWN",
         "data": {"guest": False, "reason": "host-qmp-quit"}},
        {"return": {}, "id": "q"}]
    assert vmd.process.wait(TIMEOUT) == 0


# -- documented, intended deviations --------------------------------------------

def both(daemons: tuple[Path, Path], data: bytes, mode: str = "cmd"
         ) -> list[list[dict[str, Any]]]:
    return [exchange(path, data, mode) for path in daemons]


def test_deviation_cpu_index_0(daemons: tuple[Path, Path]) -> None:
    """vmd accepts ``cpu-index: 0`` with no CPUs so qmp-shell -H works."""
    vmd, qemu = both(daemons,
                     hmc('{"command-line":"info name","cpu-index":0}'))
    assert qemu[0] == {"id": "h", "error": {
        "class": "GenericError",
        "desc": "Parameter 'cpu-index' expects a CPU number"}}
    assert vmd[0] == {"return": "testvm\r\n", "id": "h"}


def test_deviation_first_bad_member_in_input_order(
        daemons: tuple[Path, Path]) -> None:
    """QEMU reports the first bad member in hash order, vmd in input order."""
    vmd, qemu = both(
        daemons, b'{"execute":"query-name","exec-oob":"query-yank","id":1}',
        "oob")
    assert qemu[0]["error"]["desc"] == (
        "QMP input member 'execute' clashes with 'exec-oob'")
    assert vmd[0]["error"]["desc"] == (
        "QMP input member 'exec-oob' clashes with 'execute'")
    vmd, qemu = both(daemons, b'{"execute":1,"foo":1,"id":1}')
    candidates = {"QMP input member 'execute' must be a string",
                  "QMP input member 'foo' is unexpected"}
    assert qemu[0]["error"]["desc"] in candidates
    assert vmd[0]["error"]["desc"] == (
        "QMP input member 'execute' must be a string")


def test_member_order_and_version(
        daemons: tuple[Path, Path]) -> None:
    """Same members in QEMU's (QDict hash) order; vmd's own version text."""
    raw = []
    for path in daemons:
        with RawQMP(path, timeout=TIMEOUT) as qmp:
            enter_mode(qmp, "cmd")
            qmp.send(b'{"execute":"query-status"}{"execute":"query-version"}')
            raw.append((qmp.read_line(), read_message(qmp)))
    (vmd_status, vmd_version), (qemu_status, qemu_version) = raw
    assert vmd_status == qemu_status
    assert qemu_status.startswith(b'{"return": {"status": ')  # hash order
    assert shape(vmd_version) == shape(qemu_version)
