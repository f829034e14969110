"""Encoding QMP output the way QEMU prints it.

QEMU writes one compact JSON object per line, ``", "`` between members and
``": "`` after keys, ends the line with CRLF, and escapes everything that is
not printable ASCII as ``\\uXXXX`` with upper-case hex (0x7F included).
Python's encoder is used for speed; the two differences it has from QEMU
(lower-case hex, raw 0x7F) are fixed up afterwards, and only when the text
contains them. Doubles are printed shortest-round-trip rather than with
``%.17g``: the value read back is the same. Non-finite numbers, which JSON
cannot represent, are sent as ``null`` (QEMU prints an invalid ``inf``).

Members come in QEMU 7.2's order, which is its QDict's: a hash table of
512 buckets walked in bucket order, the newest entry first within a bucket
(so ``{"return": ..., "id": ...}`` but ``{"id": ..., "error": ...}``).
Clients must not depend on it, but QEMU's own test suite compares output
byte for byte. vmd builds its dicts in the order QEMU inserts (schema
order), and :func:`qdict_order` turns that into QEMU's.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any

_ESCAPE = re.compile(r"\\(\\|u[0-9a-f]{4})")
_encoder = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=True,
                            allow_nan=True)


def _upper_hex(match: re.Match[str]) -> str:
    escape = match.group(1)
    return "\\\\" if escape == "\\" else "\\u" + escape[1:].upper()


def dumps(value: Any) -> str:
    """Serialize ``value`` as one line of QEMU-style JSON (no line end)."""
    try:
        text = _encoder.encode(value)
    except RecursionError:  # nested deeper than the C encoder recurses
        text = _encode_deep(value)
    if "Infinity" in text or "NaN" in text:
        text = _encoder.encode(_finite(value))
    if "\\u" in text:
        text = _ESCAPE.sub(_upper_hex, text)
    if "\x7f" in text:
        text = text.replace("\x7f", "\\u007F")
    return text


class _Text(str):
    """Output text already encoded (a marker on ``_encode_deep``'s stack)."""


def _encode_deep(value: Any) -> str:
    """What the C encoder writes, with an explicit stack instead of
    recursion (a reply can nest as deep as a user's backing chain)."""
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            parts.append(item)
        elif isinstance(item, dict):
            parts.append("{")
            stack.append(_Text("}"))
            entries = list(item.items())
            for index in reversed(range(len(entries))):
                key, member = entries[index]
                stack.append(member)
                stack.append(_Text((", " if index else "") + _encoder.encode(str(key)) + ": "))
        elif isinstance(item, (list, tuple)):
            parts.append("[")
            stack.append(_Text("]"))
            for index in reversed(range(len(item))):
                stack.append(item[index])
                if index:
                    stack.append(_Text(", "))
        else:
            parts.append(_encoder.encode(item))
    return "".join(parts)


def encode_message(value: Any) -> bytes:
    """One QMP output message: QEMU-style JSON, QEMU's member order, CRLF."""
    return (dumps(qdict_order(value)) + "\r\n").encode("ascii")


@lru_cache(maxsize=4096)
def _qdict_bucket(key: str) -> int:
    """The bucket of ``key`` in QEMU's QDict (its tdb_hash, modulo 512)."""
    data = key.encode()
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % 512


def qdict_order(obj: Any) -> Any:
    """Reorder dict keys the way QEMU's JSON output walks a QDict (an
    explicit stack: replies nest as deep as a backing chain)."""
    if not isinstance(obj, (dict, list)):
        return obj
    root: list[Any] = [obj]
    stack: list[tuple[Any, Any, Any]] = [(root, 0, obj)]
    while stack:
        parent, slot, item = stack.pop()
        if isinstance(item, dict):
            # Within one bucket the entry added last comes first.
            ranked = sorted(enumerate(item.items()), key=lambda p: (_qdict_bucket(str(p[1][0])), -p[0]))
            copy: dict[Any, Any] = {key: value for _, (key, value) in ranked}
            parent[slot] = copy
            stack.extend((copy, key, value) for key, value in copy.items() if isinstance(value, (dict, list)))
        elif isinstance(item, list):
            items = list(item)
            parent[slot] = items
            stack.extend((items, index, value) for index, value in enumerate(items)
                         if isinstance(value, (dict, list)))
    return root[0]


def _finite(value: Any) -> Any:
    """Replace non-finite floats by None so the output stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
