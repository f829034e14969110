"""Hypothesis strategies for QMP input, generated from the schema itself.

``arguments(command)`` draws arguments that the command's JSON Schema (made
by ``qapi/gen_jsonschema.py`` from ``schema/``) accepts: every member type,
flat unions through their ``if``/``then`` branches, alternates, enums,
integer ranges with their edges. ``mutated(command)`` then breaks them the
ways a hostile client would: a member of the wrong type, huge or negative
numbers, deep nesting, long strings, NUL bytes and lone surrogates, unknown
keys. Used by ``tests/test_fuzz.py`` (a fixed budget) and
``scripts/fuzz.py`` (long runs).
"""

from __future__ import annotations

import functools
from typing import Any

from hypothesis import strategies as st

from vmd._generated.jsonschema import COMMAND_SCHEMAS

#: Numbers at the edges of what vmd and QEMU check.
EDGE_INTEGERS = (0, 1, -1, 511, 512, 4096, 65536, 1 << 30, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
                 (1 << 56), (1 << 62), (1 << 63) - 512, (1 << 63) - (1 << 30), (1 << 63) - 1, -(1 << 63),
                 (1 << 64) - 1)
EDGE_STRINGS = ("", "n0", "#block1", "a" * 128, "x" * 5000, "\x00", "a,b", "..", "/", "json:{}",
                "\u00e9\U0001F600", "\ud800", "null-co://")
_MAX_DEPTH = 3


def _integer(schema: dict[str, Any]) -> st.SearchStrategy[int]:
    low, high = schema.get("minimum"), schema.get("maximum")
    edges = [value for value in EDGE_INTEGERS if (low is None or value >= low) and (high is None or value <= high)]
    plain = st.integers(min_value=low, max_value=high)
    return st.one_of(plain, st.sampled_from(edges)) if edges else plain


def _string() -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=16), st.sampled_from(EDGE_STRINGS[:4]))


def value(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that ``schema`` accepts."""
    if "$ref" in schema:
        return value(defs[schema["$ref"].rsplit("/", 1)[1]], defs, depth)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        options = schema["anyOf"]
        if depth >= _MAX_DEPTH:  # prefer the branch that does not recurse (a node name)
            options = [option for option in options if "$ref" not in option] or options[:1]
        return st.one_of([value(option, defs, depth + 1) for option in options])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return _object(schema, defs, depth)
    if kind == "array":
        return st.lists(value(schema.get("items", {}), defs, depth + 1), max_size=0 if depth >= _MAX_DEPTH else 2)
    if kind == "integer":
        return _integer(schema)
    if kind == "number":
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers())
    if kind == "string":
        return _string()
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values(depth)


def _object(schema: dict[str, Any], defs: dict[str, Any], depth: int) -> st.SearchStrategy[dict[str, Any]]:
    branches = [(entry["if"], entry["then"]) for entry in schema.get("allOf", []) if "if" in entry]
    if not branches:
        return _members(schema.get("properties", {}), set(schema.get("required", [])), defs, depth)
    options = []
    for condition, then in branches:
        properties = {**schema.get("properties", {}), **condition.get("properties", {}),
                      **then.get("properties", {})}
        required = set(schema.get("required", [])) | set(condition.get("required", [])) | \
            set(then.get("required", []))
        options.append(_members(properties, required, defs, depth))
    return st.one_of(options)


def _members(properties: dict[str, Any], required: set[str], defs: dict[str, Any],
             depth: int) -> st.SearchStrategy[dict[str, Any]]:
    needed = {name: value(spec, defs, depth + 1) for name, spec in properties.items() if name in required}
    optional = {name: value(spec, defs, depth + 1) for name, spec in properties.items() if name not in required}
    return st.fixed_dictionaries(needed, optional=optional)


def json_values(depth: int = 0) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 64), max_value=1 << 64),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
    if depth >= _MAX_DEPTH:
        return scalars
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=6)


@functools.cache
def arguments(command: str) -> st.SearchStrategy[dict[str, Any]]:
    """Arguments ``command``'s schema accepts."""
    schema = COMMAND_SCHEMAS[command]
    result: st.SearchStrategy[dict[str, Any]] = value(schema, schema.get("$defs", {}))
    return result


@functools.cache
def hostile_values() -> st.SearchStrategy[Any]:
    """What a member might be given instead of what it expects."""
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    return st.one_of(
        st.sampled_from(EDGE_INTEGERS), st.sampled_from(EDGE_STRINGS),
        st.sampled_from([None, True, False, [], {}, 1.5, -0.0, 1e308, -(1 << 63) - 1, 1 << 64, 1 << 70, deep,
                         {"driver": "null-co"}, [{"": None}]]),
        json_values())


@st.composite
def mutated(draw: st.DrawFn, command: str) -> dict[str, Any]:
    """Valid arguments of ``command`` with one member (maybe nested) broken or added."""
    args = draw(arguments(command))
    target: Any = args
    while isinstance(target, dict) and target and draw(st.booleans()):
        inner = target[draw(st.sampled_from(sorted(target)))]
        if not isinstance(inner, dict):
            break
        target = inner
    if not isinstance(target, dict):
        return args
    how = draw(st.sampled_from(["replace", "add", "delete"]))
    if how == "replace" and target:
        target[draw(st.sampled_from(sorted(target)))] = draw(hostile_values())
    elif how == "delete" and target:
        del target[draw(st.sampled_from(sorted(target)))]
    else:
        target[draw(st.sampled_from(["bogus", "x-debug", "node_name", "", "\x00"]))] = draw(hostile_values())
    return args


@st.composite
def requests(draw: st.DrawFn, commands: list[str]) -> dict[str, Any]:
    """A request envelope: a command, valid or mutated arguments, maybe an id."""
    command = draw(st.sampled_from(commands))
    request: dict[str, Any] = {"execute": command,
                               "arguments": draw(st.one_of(arguments(command), mutated(command)))}
    if draw(st.booleans()):
        request["id"] = draw(json_values(1))
    return request
