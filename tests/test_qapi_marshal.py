"""Generated marshallers: QEMU 7.2's error texts and calling convention."""

from __future__ import annotations

import asyncio
import importlib
import sys
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from qapi.main import generate
from vmd import qapi_runtime as rt
from vmd.qmp.errors import QMPError

TEST_SCHEMA = """
{ 'pragma': { 'command-returns-exceptions': [ 'echo-any' ] } }
{ 'enum': 'Color', 'data': [ 'red', 'green', '1st' ] }
{ 'struct': 'Inner', 'data': { 'filename': 'str', '*level': 'uint8' } }
{ 'struct': 'Base', 'data': { 'id': 'str' } }
{ 'struct': 'Outer', 'base': 'Base',
  'data': { 'file': 'Inner', '*colors': [ 'Color' ], '*from': 'int' } }
{ 'enum': 'Kind', 'data': [ 'disk', 'net', 'none' ] }
{ 'struct': 'DiskOpts', 'data': { 'size': 'size', '*ro': 'bool' } }
{ 'struct': 'NetOpts', 'data': { 'mac': 'str' } }
{ 'union': 'Dev', 'base': { 'kind': 'Kind', '*tag': 'str' },
  'discriminator': 'kind',
  'data': { 'disk': 'DiskOpts', 'net': 'NetOpts' } }
{ 'alternate': 'Ref', 'data': { 'def': 'Inner', 'name': 'str' } }
{ 'alternate': 'NumOrNull', 'data': { 'n': 'int16', 'z': 'null' } }
{ 'command': 'do-it',
  'data': { 'outer': 'Outer', '*devs': [ 'Dev' ], '*ref': 'Ref',
            '*num': 'NumOrNull', '*ratio': 'number', '*i8': 'int8',
            '*u32': 'uint32', '*blob': 'any' },
  'returns': 'Outer' }
{ 'command': 'add-dev', 'data': 'Dev', 'boxed': true }
{ 'command': 'echo-any', 'data': { 'v': 'any' }, 'returns': 'any',
  'coroutine': true }
{ 'command': 'plain' }
{ 'event': 'DEV_ADDED', 'data': { 'dev': 'Dev', '*note': 'str' } }
{ 'event': 'PING' }
"""


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """Generate the test schema into a fresh package and import it."""
    root = tmp_path_factory.mktemp("qapigen")
    (root / "t.json").write_text(TEST_SCHEMA)
    generate(str(root / "t.json"), str(root / "qapitestpkg"))
    sys.path.insert(0, str(root))
    try:
        pkg = importlib.import_module("qapitestpkg")
        for sub in ("types", "commands", "events", "introspect",
                    "jsonschema"):
            setattr(pkg, sub, importlib.import_module(f"qapitestpkg.{sub}"))
    finally:
        sys.path.remove(str(root))
    return pkg


GOOD: dict[str, Any] = {"outer": {"id": "x", "file": {"filename": "f"}}}


def run(gen: ModuleType, args: dict[str, Any],
        handler: Any = None, command: str = "do-it") -> Any:
    """Marshal ``args`` for ``command``; default handler echoes ``outer``."""
    cdef = gen.commands.COMMANDS[command]
    if handler is None:
        def handler(ctx: Any, **kw: Any) -> Any:
            return kw["outer"]
    return cdef.marshal(handler, None, args)


def error(gen: ModuleType, args: dict[str, Any],
          command: str = "do-it") -> str:
    """The QMPError text marshalling ``args`` produces."""
    with pytest.raises(QMPError) as exc:
        run(gen, args, command=command)
    assert exc.value.error_class == "GenericError"
    return exc.value.desc


def with_(**kw: Any) -> dict[str, Any]:
    """GOOD plus some more arguments."""
    return {**GOOD, **kw}


@pytest.mark.parametrize("args, desc", [
    ({}, "Parameter 'outer' is missing"),
    ({"outer": {"id": "x"}}, "Parameter 'outer.file' is missing"),
    ({"outer": {"id": "x", "file": {}}},
     "Parameter 'outer.file.filename' is missing"),
    ({"bogus": 1}, "Parameter 'outer' is missing"),
    (with_(bogus=1), "Parameter 'bogus' is unexpected"),
    ({"outer": {"id": "x", "file": {"filename": "f", "zz": 1}}},
     "Parameter 'outer.file.zz' is unexpected"),
    ({"outer": 1}, "Invalid parameter type for 'outer', expected: object"),
    ({"outer": {"id": None, "file": {"filename": "f"}}},
     "Invalid parameter type for 'outer.id', expected: string"),
    ({"outer": {"id": "x", "file": {"filename": "f", "level": 256}}},
     "Parameter 'level' expects uint8_t"),
    ({"outer": {"id": "x", "file": {"filename": "f", "level": -1}}},
     "Parameter 'level' expects uint8_t"),
    ({"outer": {"id": "x", "file": {"filename": "f", "level": "1"}}},
     "Parameter 'outer.file.level' expects uint64"),
    ({"outer": {"id": "x", "file": {"filename": "f", "level": 1.5}}},
     "Parameter 'outer.file.level' expects uint64"),
    ({"outer": {"id": "x", "file": {"filename": "f"}, "colors": "red"}},
     "Invalid parameter type for 'outer.colors', expected: array"),
    ({"outer": {"id": "x", "file": {"filename": "f"}, "colors": ["blue"]}},
     "Parameter 'null' does not accept value 'blue'"),
    ({"outer": {"id": "x", "file": {"filename": "f"}, "colors": [1]}},
     "Invalid parameter type for 'outer.colors[0]', expected: string"),
    ({"outer": {"id": "x", "file": {"filename": "f"}, "from": True}},
     "Invalid parameter type for 'outer.from', expected: integer"),
    ({"outer": {"id": "x", "file": {"filename": "f"}, "from": 2**63}},
     "Invalid parameter type for 'outer.from', expected: integer"),
    ({"outer": {"id": "x", "file": {"filename": "f"}, "from": 1.0}},
     "Invalid parameter type for 'outer.from', expected: integer"),
    (with_(i8=128), "Parameter 'i8' expects int8_t"),
    (with_(i8="1"), "Invalid parameter type for 'i8', expected: integer"),
    (with_(u32=2**32), "Parameter 'u32' expects uint32_t"),
    (with_(ratio="1"), "Invalid parameter type for 'ratio', expected: number"),
    (with_(devs=[{"kind": "disk"}]), "Parameter 'devs[0].size' is missing"),
    (with_(devs=[{}]), "Parameter 'devs[0].kind' is missing"),
    (with_(devs=[{"kind": "tape"}]),
     "Parameter 'kind' does not accept value 'tape'"),
    (with_(devs=[{"kind": "none", "mac": "m"}]),
     "Parameter 'devs[0].mac' is unexpected"),
    (with_(devs=[{"kind": "net", "mac": "m", "size": 1}]),
     "Parameter 'devs[0].size' is unexpected"),
    (with_(devs=["x"]),
     "Invalid parameter type for 'devs[0]', expected: object"),
    (with_(ref=1), "Invalid parameter type for 'ref', expected: Ref"),
    (with_(ref={}), "Parameter 'ref.filename' is missing"),
    (with_(num="x"), "Invalid parameter type for 'num', expected: NumOrNull"),
    (with_(num=40000), "Parameter 'num' expects int16_t"),
])
def test_marshal_errors(gen: ModuleType, args: dict[str, Any],
                        desc: str) -> None:
    assert error(gen, args) == desc


def test_marshal_success_and_conventions(gen: ModuleType) -> None:
    seen: dict[str, Any] = {}

    def handler(ctx: Any, **kw: Any) -> Any:
        seen.update(kw)
        return kw["outer"]

    args = {"outer": {"id": "x", "file": {"filename": "f", "level": 3},
                      "colors": ["1st"], "from": -5},
            "devs": [{"kind": "disk", "size": -1, "tag": "t"},
                     {"kind": "none"}],
            "ref": "node0", "num": None, "ratio": 2, "blob": {"a": [1]}}
    out = run(gen, args, handler)
    assert out == args["outer"]
    t = gen.types
    assert seen["outer"].from_ == -5
    assert seen["outer"].colors == [t.Color._1ST]
    assert seen["devs"][0].u == t.DiskOpts(size=2**64 - 1)
    assert seen["devs"][1].u is None
    # An explicit null picking an alternate's null branch is not "absent".
    assert seen["ref"] == "node0" and seen["num"] is rt.JSON_NULL
    assert seen["ratio"] == 2.0 and isinstance(seen["ratio"], float)
    assert seen["i8"] is None and seen["blob"] == {"a": [1]}
    assert gen.types.visit_Ref({"filename": "f"}, "ref", "ref") == t.Inner(
        filename="f")


def test_boxed_no_returns_and_no_args(gen: ModuleType) -> None:
    got: list[Any] = []
    result = run(gen, {"kind": "net", "mac": "m"},
                 lambda ctx, obj: got.append(obj), "add-dev")
    assert result == {}
    t = gen.types
    assert got == [t.Dev(kind=t.Kind.NET, u=t.NetOpts(mac="m"))]
    assert run(gen, {}, lambda ctx: None, "plain") == {}
    assert error(gen, {"x": 1}, "plain") == "Parameter 'x' is unexpected"


def test_coroutine_command(gen: ModuleType) -> None:
    async def handler(ctx: Any, v: Any) -> Any:
        return [v, gen.types.Color.RED]

    cdef = gen.commands.COMMANDS["echo-any"]
    assert cdef.coroutine and cdef.handler_name == "qmp_echo_any"
    result = asyncio.run(cdef.marshal(handler, None, {"v": None}))
    assert result == [None, "red"]


def test_events(gen: ModuleType) -> None:
    sent: list[tuple[str, Any]] = []

    class Emitter:
        def emit(self, name: str, data: Any) -> None:
            sent.append((name, data))

    t = gen.types
    gen.events.qapi_event_send_dev_added(
        Emitter(), dev=t.Dev(kind=t.Kind.DISK, u=t.DiskOpts(size=1)))
    gen.events.qapi_event_send_ping(Emitter())
    assert sent == [("DEV_ADDED", {"dev": {"kind": "disk", "size": 1}}),
                    ("PING", None)]
    assert gen.events.EVENTS == ("DEV_ADDED", "PING")


@pytest.mark.parametrize("args", [
    GOOD, with_(devs=[{"kind": "disk", "size": 5}]), with_(ref="n"),
    with_(num=None), with_(u32=7, i8=-128), {},
    with_(devs=[{"kind": "net", "size": 5}]), with_(ref=1), with_(i8=128),
    with_(extra=1), {"outer": {"id": "x", "file": {"filename": "f"},
                               "colors": ["blue"]}},
])
def test_jsonschema_agrees(gen: ModuleType, args: dict[str, Any]) -> None:
    """The exported JSON Schema accepts exactly what the marshaller does."""
    schema = gen.jsonschema.COMMAND_SCHEMAS["do-it"]
    validator = jsonschema.Draft202012Validator(schema)
    try:
        run(gen, args)
        accepted = True
    except QMPError:
        accepted = False
    assert validator.is_valid(args) == accepted


def test_real_commands() -> None:
    from vmd._generated.commands import COMMANDS

    hmc = COMMANDS["human-monitor-command"]
    assert hmc.coroutine  # HMP's chardev-add waits for the backend

    async def handler(ctx: Any, **kw: Any) -> str:
        return repr(kw)

    with pytest.raises(QMPError) as exc:
        asyncio.run(hmc.marshal(handler, None, {"command-line": 1}))
    assert exc.value.desc == ("Invalid parameter type for 'command-line', "
                              "expected: string")
    got = asyncio.run(hmc.marshal(handler, None,
                                  {"command-line": "info version"}))
    assert got == "{'command_line': 'info version', 'cpu_index': None}"
    caps = COMMANDS["qmp_capabilities"]
    with pytest.raises(QMPError) as exc:
        caps.marshal(lambda ctx, **kw: None, None, {"enable": ["foo"]})
    assert exc.value.desc == "Parameter 'null' does not accept value 'foo'"
    assert caps.allow_preconfig and not caps.allow_oob
    assert COMMANDS["yank"].allow_oob
    assert hmc.features == ("savevm-monitor-nodes",)
    assert list(COMMANDS)[:3] == ["qmp_capabilities", "query-version",
                                  "query-commands"]
