"""QEMU keyval syntax (util/keyval.c), used by -blockdev and -display.

``driver=qcow2,file.driver=file,file.filename=/a`` becomes the nested tree
``{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': '/a'}}``.
Dotted keys build nested objects; numeric fragments (``a.0=x,a.1=y``) build
lists.  Every leaf is a string: keyval has no way to spell numbers or
booleans.

Typing decision: we do **not** convert leaves here.  QEMU converts them
while visiting the tree with the QAPI schema (its "keyval input visitor":
``"on"`` becomes true where the schema wants a bool, ``"512"`` becomes 512
where it wants an int).  The block layer has that schema, so it does the
conversion; this module only records whether a tree came from keyval
(strings to be converted) or from JSON (already typed), see
:func:`parse_keyval_or_json`.

An argument that starts with ``{`` is JSON instead, as in QEMU.
"""

from __future__ import annotations

import json
import re
from typing import Any

from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import read_value

KeyvalTree = dict[str, Any]

_MAX_FRAGMENT = 127
# Patterns are compiled on first use (re caches them), not at every start.
_QAPI_NAME_RE = r"(?:__[A-Za-z0-9.-]*_)?[A-Za-z][A-Za-z0-9_-]*"
_INDEX_RE = r"[0-9]+"


def parse_keyval_or_json(text: str, implied_key: str | None = None) -> tuple[KeyvalTree, bool]:
    """Parse an option argument that may be JSON; return ``(tree, is_json)``."""
    if text.startswith("{"):
        return parse_json_object(text), True
    return keyval_parse(text, implied_key), False


def parse_json_object(text: str) -> dict[str, Any]:
    """Parse a JSON object argument such as ``-blockdev '{"driver": ...}'``."""
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        raise OptionError(f"JSON parse error, {exc.msg}") from None
    if text[end:].strip():
        raise OptionError("Expecting at most one JSON value")
    if not isinstance(value, dict):
        raise OptionError("JSON object expected")
    return value


def keyval_parse(params: str, implied_key: str | None = None) -> KeyvalTree:
    """Parse ``key=value,...`` into a nested tree of dicts, lists and strings.

    ``implied_key`` lets the first element omit ``key=``, as -blockdev does
    with ``driver``.  Raises OptionError with QEMU's messages.
    """
    root: KeyvalTree = {}
    pos = 0
    while pos < len(params):
        pos = _parse_one(root, params, pos, implied_key)
        implied_key = None
    return _listify(root, [])


def _parse_one(root: KeyvalTree, params: str, pos: int, implied_key: str | None) -> int:
    """Store one ``key=value`` starting at ``pos``; return the next position."""
    key_len = _span_until(params, pos, ",=")
    if implied_key is not None and key_len and params[pos + key_len:pos + key_len + 1] != "=":
        fragments = [implied_key]
        value_start = pos
    else:
        key = params[pos:pos + key_len]
        fragments = _split_key(key)
        if params[pos + key_len:pos + key_len + 1] != "=":
            raise OptionError(f"Expected '=' after parameter '{key}'")
        value_start = pos + key_len + 1
    value, end = read_value(params, value_start)
    _put(root, fragments, value)
    return end + 1 if end < len(params) else end


def _span_until(text: str, pos: int, chars: str) -> int:
    """Length of the run at ``pos`` that holds none of ``chars``."""
    end = pos
    while end < len(text) and text[end] not in chars:
        end += 1
    return end - pos


def _split_key(key: str) -> list[str]:
    """Check a dotted key and return its fragments.

    Fragments are scanned, not split on '.', because a downstream name
    such as ``__com.redhat_x`` contains dots itself.
    """
    fragments: list[str] = []
    pos = 0
    while True:
        match = ((fragments and re.compile(_INDEX_RE).match(key, pos))
                 or re.compile(_QAPI_NAME_RE).match(key, pos))
        end = match.end() if match else pos
        if end == pos or (end < len(key) and key[end] != "."):
            raise OptionError(f"Invalid parameter '{key}'")
        fragment = key[pos:end]
        if len(fragment) > _MAX_FRAGMENT:
            whole = pos == 0 and end == len(key)
            raise OptionError(f"Parameter{'' if whole else ' fragment'} '{fragment}' is too long")
        fragments.append(fragment)
        if end == len(key):
            return fragments
        pos = end + 1


def _put(root: KeyvalTree, fragments: list[str], value: str) -> None:
    """Store ``value`` at the path ``fragments``, creating objects on the way."""
    cur = root
    for depth, fragment in enumerate(fragments[:-1]):
        child = cur.setdefault(fragment, {})
        if not isinstance(child, dict):
            raise _inconsistent(fragments[:depth + 1])
        cur = child
    last = fragments[-1]
    if isinstance(cur.get(last), dict):
        raise _inconsistent(fragments)
    cur[last] = value


def _inconsistent(path: list[str]) -> OptionError:
    return OptionError(f"Parameters '{'.'.join(path)}.*' used inconsistently")


def _listify(node: KeyvalTree, path: list[str]) -> Any:
    """Turn objects whose keys are all indexes into lists, recursively."""
    for key, child in list(node.items()):
        if isinstance(child, dict):
            node[key] = _listify(child, path + [key])
    is_index = [bool(re.fullmatch(_INDEX_RE, key)) for key in node]
    if not any(is_index):
        return node
    prefix = "".join(part + "." for part in path)
    if not all(is_index):
        raise OptionError(f"Parameters '{prefix}*' used inconsistently")
    by_index = {int(key): child for key, child in node.items()}
    for index in range(len(by_index)):
        if index not in by_index:
            raise OptionError(f"Parameter '{prefix}{index}' missing")
    return [by_index[index] for index in range(len(by_index))]
