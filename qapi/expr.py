"""Is each definition well-formed?

This stage looks at one expression at a time: the right keys for its
meta-type, names that follow the naming rules, and well-shaped 'if'
conditions, features and member lists.  It also normalizes the shorthand
forms (``'name': 'type'`` members, bare feature and enum value strings)
into dictionaries, so :mod:`qapi.schema` sees a single shape.
"""

from __future__ import annotations

import re
from typing import Any

from .common import c_name
from .error import QAPISemError
from .parser import QAPIExpression
from .source import QAPISourceInfo

_VALID_NAME = re.compile(r"(__[a-z0-9.-]+_)?([a-z][a-z0-9_-]*)$", re.IGNORECASE)
_COND_NAME = re.compile(r"[A-Z][A-Z0-9_]*$")

_META_KEYS: dict[str, tuple[list[str], list[str]]] = {
    "enum": (["enum", "data"], ["if", "features", "prefix"]),
    "struct": (["struct", "data"], ["base", "if", "features"]),
    "union": (["union", "base", "discriminator", "data"], ["if", "features"]),
    "alternate": (["alternate", "data"], ["if", "features"]),
    "command": (["command"], ["data", "returns", "boxed", "if", "features",
                              "gen", "success-response", "allow-oob",
                              "allow-preconfig", "coroutine"]),
    "event": (["event"], ["data", "boxed", "if", "features"]),
}


def _name_stem(name: Any, info: QAPISourceInfo, source: str) -> str:
    """The name without its downstream prefix, after basic checks."""
    if not isinstance(name, str):
        raise QAPISemError(info, f"{source} requires a string name")
    match = _VALID_NAME.match(name)
    if not match or c_name(name).startswith("q_"):
        raise QAPISemError(info, f"{source} has an invalid name")
    return match.group(2)


def check_name_upper(name: Any, info: QAPISourceInfo, source: str) -> None:
    """Event names: ALL_CAPS."""
    stem = _name_stem(name, info, source)
    if re.search(r"[a-z-]", stem):
        raise QAPISemError(
            info, f"name of {source} must not use lowercase or '-'")


def check_name_lower(name: Any, info: QAPISourceInfo, source: str,
                     permit_upper: bool = False,
                     permit_underscore: bool = False) -> None:
    """Command and member names: lower-case-with-dashes."""
    stem = _name_stem(name, info, source)
    if ((not permit_upper and re.search(r"[A-Z]", stem))
            or (not permit_underscore and "_" in stem)):
        raise QAPISemError(
            info, f"name of {source} must not use uppercase or '_'")


def check_name_camel(name: Any, info: QAPISourceInfo, source: str) -> None:
    """Type names: CamelCase."""
    stem = _name_stem(name, info, source)
    if not re.match(r"[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*$", stem):
        raise QAPISemError(info, f"name of {source} must use CamelCase")


def check_keys(value: dict[str, Any], info: QAPISourceInfo, source: str,
               required: list[str], optional: list[str]) -> None:
    """Exactly the keys a construct allows, and all it requires."""
    def fmt(keys: set[str]) -> str:
        return ", ".join(f"'{k}'" for k in sorted(keys))

    missing = set(required) - set(value)
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise QAPISemError(info, f"{source} misses key{plural} {fmt(missing)}")
    unknown = set(value) - set(required) - set(optional)
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise QAPISemError(
            info, f"{source} has unknown key{plural} {fmt(unknown)}; "
            f"valid keys are {fmt(set(required) | set(optional))}")


def check_if(holder: dict[str, Any], info: QAPISourceInfo,
             source: str) -> None:
    """An 'if' is a flag name or {'all'|'any': [...]} or {'not': ...}."""
    if "if" in holder:
        _check_cond(holder["if"], info, source)


def _check_cond(cond: Any, info: QAPISourceInfo, source: str) -> None:
    """Recursive part of check_if()."""
    if isinstance(cond, str):
        if not _COND_NAME.match(cond):
            raise QAPISemError(
                info, f"'if' condition '{cond}' of {source} "
                "is not a valid identifier")
        return
    if not isinstance(cond, dict):
        raise QAPISemError(
            info, f"'if' condition of {source} must be a string or an object")
    if len(cond) != 1:
        raise QAPISemError(
            info, f"'if' condition of {source} must have exactly one key "
            "'all', 'any' or 'not'")
    (op, arg), = cond.items()
    if op == "not":
        _check_cond(arg, info, source)
        return
    if op not in ("all", "any"):
        raise QAPISemError(
            info, f"'if' condition of {source} has unknown key '{op}'")
    if not isinstance(arg, list):
        raise QAPISemError(
            info, f"'{op}' condition of {source} must be an array")
    if not arg:
        raise QAPISemError(info, f"'if' condition [] of {source} is useless")
    for sub in arg:
        _check_cond(sub, info, source)


def check_features(holder: dict[str, Any], info: QAPISourceInfo) -> None:
    """'features': list of names or {'name': ..., 'if': ...}; normalizes."""
    features = holder.get("features")
    if features is None:
        return
    if not isinstance(features, list):
        raise QAPISemError(info, "'features' must be an array")
    normalized = []
    for feat in features:
        if isinstance(feat, str):
            feat = {"name": feat}
        if not isinstance(feat, dict):
            raise QAPISemError(
                info, "'features' member must be a string or an object")
        check_keys(feat, info, "'features' member", ["name"], ["if"])
        source = f"'features' member '{feat['name']}'"
        check_name_lower(feat["name"], info, source)
        check_if(feat, info, source)
        normalized.append(feat)
    holder["features"] = normalized


def check_type_ref(value: Any, info: QAPISourceInfo, source: str,
                   allow_array: bool = False) -> None:
    """A type reference: 'Name' or, where allowed, ['Name']."""
    if isinstance(value, str):
        return
    if isinstance(value, list):
        if not allow_array:
            raise QAPISemError(info, f"{source} cannot be an array")
        if len(value) != 1 or not isinstance(value[0], str):
            raise QAPISemError(
                info, f"{source}: array type must contain single type name")
        return
    raise QAPISemError(info, f"{source} should be a type name")


def check_members(value: Any, info: QAPISourceInfo, source: str,
                  permit_upper: bool = False) -> dict[str, Any]:
    """A member dictionary; returns it normalized to {'type': ...} form."""
    if not isinstance(value, dict):
        raise QAPISemError(info, f"{source} should be an object or type name")
    result: dict[str, Any] = {}
    for key, arg in value.items():
        key_source = f"{source} member '{key}'"
        name = key.removeprefix("*")
        check_name_lower(name, info, key_source, permit_upper, permit_upper)
        cname = c_name(name)
        if cname == "u" or cname.startswith("has_"):
            raise QAPISemError(info, f"{key_source} uses reserved name")
        if not isinstance(arg, dict):
            arg = {"type": arg}
        check_keys(arg, info, key_source, ["type"], ["if", "features"])
        check_if(arg, info, key_source)
        check_features(arg, info)
        check_type_ref(arg["type"], info, key_source, allow_array=True)
        result[key] = arg
    return result


def check_type_or_members(value: Any, info: QAPISourceInfo, source: str,
                          allow_members: bool,
                          permit_upper: bool = False) -> Any:
    """Either a type name or, when allowed, an inline member dictionary."""
    if isinstance(value, dict) and allow_members:
        return check_members(value, info, source, permit_upper)
    check_type_ref(value, info, source)
    return value


def check_enum(expr: dict[str, Any], info: QAPISourceInfo) -> None:
    """Enum values: names (may start with a digit), optional 'if'/features."""
    members = expr["data"]
    if not isinstance(members, list):
        raise QAPISemError(info, "'data' must be an array")
    if "prefix" in expr and not isinstance(expr["prefix"], str):
        raise QAPISemError(info, "'prefix' must be a string")
    permit = expr["enum"] in info.pragma.member_name_exceptions
    normalized = []
    for member in members:
        if isinstance(member, str):
            member = {"name": member}
        if not isinstance(member, dict):
            raise QAPISemError(
                info, "'data' member must be a string or an object")
        check_keys(member, info, "'data' member", ["name"],
                   ["if", "features"])
        name = member["name"]
        source = f"'data' member '{name}'"
        if isinstance(name, str) and name[:1].isdigit():
            name = "d" + name
        check_name_lower(name, info, source, permit, permit)
        check_if(member, info, source)
        check_features(member, info)
        normalized.append(member)
    expr["data"] = normalized


def check_struct(expr: dict[str, Any], info: QAPISourceInfo) -> None:
    """Struct: inline members, optional base type name."""
    permit = expr["struct"] in info.pragma.member_name_exceptions
    expr["data"] = check_members(expr["data"], info, "'data'", permit)
    if "base" in expr:
        check_type_ref(expr["base"], info, "'base'")


def check_union(expr: dict[str, Any], info: QAPISourceInfo) -> None:
    """Flat union: base (inline or named), discriminator, branch structs."""
    permit = expr["union"] in info.pragma.member_name_exceptions
    expr["base"] = check_type_or_members(expr["base"], info, "'base'",
                                         True, permit)
    if not isinstance(expr["discriminator"], str):
        raise QAPISemError(info, "'discriminator' requires a string name")
    expr["data"] = _check_branches(expr["data"], info, check_names=False)


def check_alternate(expr: dict[str, Any], info: QAPISourceInfo) -> None:
    """Alternate: at least one branch, each a plain type name."""
    if not isinstance(expr["data"], dict) or not expr["data"]:
        raise QAPISemError(info, "'data' must be a non-empty object")
    expr["data"] = _check_branches(expr["data"], info, check_names=True)


def _check_branches(data: Any, info: QAPISourceInfo,
                    check_names: bool) -> dict[str, Any]:
    """Union/alternate branches: {'name': 'Type' | {'type', 'if'}}."""
    if not isinstance(data, dict):
        raise QAPISemError(info, "'data' should be an object")
    result: dict[str, Any] = {}
    for key, value in data.items():
        source = f"'data' member '{key}'"
        if check_names:
            check_name_lower(key, info, source)
        if not isinstance(value, dict):
            value = {"type": value}
        check_keys(value, info, source, ["type"], ["if"])
        check_if(value, info, source)
        check_type_ref(value["type"], info, source)
        result[key] = value
    return result


def check_command(expr: dict[str, Any], info: QAPISourceInfo) -> None:
    """Command: arguments, return type and flags."""
    check_data(expr, info)
    if "returns" in expr:
        check_type_ref(expr["returns"], info, "'returns'", allow_array=True)


def check_event(expr: dict[str, Any], info: QAPISourceInfo) -> None:
    """Event: data members, optionally boxed."""
    check_data(expr, info)


def check_data(expr: dict[str, Any], info: QAPISourceInfo) -> None:
    """The 'data' of a command or event: members, or a type when boxed."""
    boxed = expr.get("boxed", False)
    if boxed and "data" not in expr:
        raise QAPISemError(info, "'boxed': true requires 'data'")
    if "data" in expr:
        expr["data"] = check_type_or_members(expr["data"], info, "'data'",
                                             not boxed)


def check_flags(expr: dict[str, Any], info: QAPISourceInfo) -> None:
    """Flags are one-valued: gen/success-response false, the rest true."""
    for key in ("gen", "success-response"):
        if key in expr and expr[key] is not False:
            raise QAPISemError(info, f"flag '{key}' may only use false value")
    for key in ("boxed", "allow-oob", "allow-preconfig", "coroutine"):
        if key in expr and expr[key] is not True:
            raise QAPISemError(info, f"flag '{key}' may only use true value")
    if "allow-oob" in expr and "coroutine" in expr:
        raise QAPISemError(
            info, "flags 'allow-oob' and 'coroutine' are incompatible")


_CHECKERS = {
    "enum": check_enum, "struct": check_struct, "union": check_union,
    "alternate": check_alternate, "command": check_command,
    "event": check_event,
}


def meta_of(expr: dict[str, Any], info: QAPISourceInfo) -> str:
    """Which kind of definition this is (its first known key)."""
    for meta in _META_KEYS:
        if meta in expr:
            return meta
    raise QAPISemError(info, "expression is missing metatype")


def check_defn_name(name: Any, info: QAPISourceInfo, meta: str) -> None:
    """Naming convention per meta-type (with the pragma exceptions)."""
    if meta == "event":
        check_name_upper(name, info, meta)
    elif meta == "command":
        check_name_lower(
            name, info, meta,
            permit_underscore=name in info.pragma.command_name_exceptions)
    else:
        check_name_camel(name, info, meta)
        if name.endswith("List"):
            raise QAPISemError(info, f"{meta} name should not end in 'List'")


def check_expr(qexpr: QAPIExpression) -> str:
    """Check and normalize one definition in place; returns its meta-type."""
    expr, info = qexpr.expr, qexpr.info
    meta = meta_of(expr, info)
    name = expr[meta]
    if not isinstance(name, str):
        raise QAPISemError(info, f"'{meta}' requires a string name")
    info.set_defn(meta, name)
    check_defn_name(name, info, meta)
    required, optional = _META_KEYS[meta]
    check_keys(expr, info, f"{meta} '{name}'", required, optional)
    _CHECKERS[meta](expr, info)
    check_if(expr, info, f"{meta} '{name}'")
    check_features(expr, info)
    check_flags(expr, info)
    return meta


def check_exprs(exprs: list[QAPIExpression]) -> list[QAPIExpression]:
    """Check every definition; the list is returned for chaining."""
    for qexpr in exprs:
        check_expr(qexpr)
    return exprs
