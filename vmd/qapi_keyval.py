"""Typing command-line ``key=value`` trees by the schema: QEMU's keyval visitor.

``-blockdev driver=qcow2,file.driver=file,file.filename=a.qcow2`` arrives
as a tree of strings. QEMU's keyval input visitor converts each leaf by the
type the schema gives that member: ``on``/``off`` for booleans, numbers
(with size suffixes) for integers, strings for strings and enums, and for
an alternate such as ``BlockdevRef`` a nested tree picks the object branch
while a string picks the string branch. This module does the same walk over
the introspection data (``query-qmp-schema``), so every command's arguments
can be typed without per-command code. The result then goes through the
generated visitors like any QMP request.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from vmd.cli.qemu_opts import parse_bool, parse_size
from vmd.qmp.errors import QMPError


@cache
def _schema() -> dict[str, dict[str, Any]]:
    from vmd._generated.introspect import SCHEMA_INFO
    return {entry["name"]: entry for entry in SCHEMA_INFO}


def command_arguments(command: str, tree: dict[str, Any]) -> dict[str, Any]:
    """Type ``tree`` as the arguments of ``command`` (e.g. blockdev-add)."""
    return _object(_schema()[_schema()[command]["arg-type"]], tree, "")


def _typed(type_name: str, value: Any, path: str) -> Any:
    entry = _schema()[type_name]
    meta = entry["meta-type"]
    if meta == "builtin":
        return _scalar(entry["json-type"], value, path)
    if meta == "enum":
        return value
    if meta == "array":
        if not isinstance(value, list):
            raise QMPError(f"Invalid parameter type for '{path}', expected: array")
        return [_typed(entry["element-type"], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if meta == "alternate":
        return _alternate(entry, value, path)
    return _object(entry, value, path)


def _object(entry: dict[str, Any], value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise QMPError(f"Invalid parameter type for '{path}', expected: object")
    members = {member["name"]: member["type"] for member in entry.get("members", [])}
    tag = entry.get("tag")
    if tag is not None and isinstance(value.get(tag), str):
        for variant in entry.get("variants", []):
            if variant["case"] == value[tag]:
                variant_entry = _schema()[variant["type"]]
                members.update((m["name"], m["type"]) for m in variant_entry.get("members", []))
    result = {}
    for key, item in value.items():
        member_path = f"{path}.{key}" if path else key
        # Unknown members are left for the generated visitor to reject.
        result[key] = _typed(members[key], item, member_path) if key in members else item
    return result


def _alternate(entry: dict[str, Any], value: Any, path: str) -> Any:
    branches = [_schema()[member["type"]] for member in entry["members"]]
    wanted = "object" if isinstance(value, dict) else "string"
    for branch in branches:
        kind = branch.get("json-type") if branch["meta-type"] == "builtin" else branch["meta-type"]
        if kind == wanted or (wanted == "string" and kind == "enum"):
            return _typed(branch["name"], value, path)
    return value


def _scalar(json_type: str, value: Any, path: str) -> Any:
    if not isinstance(value, str):
        return value
    if json_type == "boolean":
        return parse_bool(path, value)
    if json_type == "int":
        # Sized and plain integers both collapse to "int" in introspection;
        # plain numbers (decimal or hex) first, then size suffixes (1G).
        try:
            return int(value, 0)
        except ValueError:
            return parse_size(path, value)
    if json_type == "number":
        try:
            return float(value)
        except ValueError:
            raise QMPError(f"Parameter '{path}' expects a number") from None
    return value

