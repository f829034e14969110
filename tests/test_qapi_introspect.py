"""SCHEMA_INFO has the shape of QEMU 7.2's query-qmp-schema reply.

Expected values were captured from qemu-system-x86_64 7.2 (-M none) and
re-expressed with our masked type names.
"""

from __future__ import annotations

from typing import Any

from vmd._generated.introspect import SCHEMA_INFO

BY_NAME = {e["name"]: e for e in SCHEMA_INFO}


def resolve(name: str) -> dict[str, Any]:
    """An entry by (masked) name."""
    return BY_NAME[name]


def is_empty_object(name: str) -> bool:
    """QEMU points missing arguments/returns/branches at one {} type."""
    return resolve(name) == {"name": name, "meta-type": "object",
                             "members": []}


def test_order_commands_and_events_first() -> None:
    metas = [e["meta-type"] for e in SCHEMA_INFO]
    n = sum(m in ("command", "event") for m in metas)
    assert set(metas[:n]) <= {"command", "event"}
    assert "command" not in metas[n:] and "event" not in metas[n:]
    assert SCHEMA_INFO[0]["name"] == "qmp_capabilities"


def test_query_status_shape() -> None:
    cmd = resolve("query-status")
    assert set(cmd) == {"name", "meta-type", "arg-type", "ret-type"}
    assert resolve(cmd["arg-type"]) == {"name": cmd["arg-type"],
                                        "meta-type": "object", "members": []}
    ret = resolve(cmd["ret-type"])
    assert [m["name"] for m in ret["members"]] == ["running", "singlestep",
                                                   "status"]
    assert ret["members"][0]["type"] == "bool"
    status = resolve(ret["members"][2]["type"])
    assert status["meta-type"] == "enum"
    assert status["values"][:3] == ["debug", "inmigrate", "internal-error"]
    assert status["members"][0] == {"name": "debug"}
    assert len(status["values"]) == 16


def test_qmp_capabilities_shape() -> None:
    cmd = resolve("qmp_capabilities")
    args = resolve(cmd["arg-type"])
    assert args["members"] == [{"name": "enable", "type": args["members"][0]
                                ["type"], "default": None}]
    array = resolve(args["members"][0]["type"])
    assert array["meta-type"] == "array"
    assert array["name"] == f"[{array['element-type']}]"
    assert resolve(array["element-type"])["values"] == ["oob"]
    assert is_empty_object(cmd["ret-type"])


def test_shutdown_event_shape() -> None:
    event = resolve("SHUTDOWN")
    assert set(event) == {"name", "meta-type", "arg-type"}
    args = resolve(event["arg-type"])
    assert [(m["name"], "default" in m) for m in args["members"]] == [
        ("guest", False), ("reason", False)]
    reason = resolve(args["members"][1]["type"])
    assert reason["values"][-1] == "snapshot-load"
    assert resolve("RESET")["arg-type"] != event["arg-type"]
    assert is_empty_object(resolve("STOP")["arg-type"])


def test_flags_features_union() -> None:
    assert resolve("yank")["allow-oob"] is True
    assert "allow-oob" not in resolve("query-status")
    assert resolve("human-monitor-command")["features"] == [
        "savevm-monitor-nodes"]
    assert resolve("human-monitor-command")["ret-type"] == "str"
    yank_list = resolve(resolve("query-yank")["ret-type"])
    union = resolve(yank_list["element-type"])
    assert union["tag"] == "type"
    assert [v["case"] for v in union["variants"]] == [
        "block-node", "chardev", "migration"]
    assert is_empty_object(union["variants"][2]["type"])
    builtins = {e["name"]: e["json-type"] for e in SCHEMA_INFO
                if e["meta-type"] == "builtin"}
    # Only builtins something refers to appear, as in QEMU 7.2
    # (``number``: BlockDeviceTimedStats' queue depths).
    assert builtins == {"str": "string", "bool": "boolean", "int": "int",
                        "any": "value", "null": "null", "number": "number"}
