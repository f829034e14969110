"""HMP argument parsing: QEMU's monitor_parse_arguments() for the types vmd uses.

An HMP command declares its arguments as type letters: ``s`` is one word
or a double-quoted string with C-like escapes, ``i`` a 32-bit integer.
Problems are reported with QEMU's texts; the caller adds the
``Try "help ..."`` line.
"""

from __future__ import annotations

import re
from typing import Any

_SPACE = " \t\n\v\f\r"  # C isspace()
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r"}
# strtoull(..., 0): hexadecimal, octal or decimal.
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


class ArgumentError(Exception):
    """The arguments do not fit the command; the text is QEMU's."""


def parse_arguments(name: str, types: str, text: str) -> list[Any]:
    """Parse ``text`` (the line after the command name) by ``types``."""
    values: list[Any] = []
    pos = 0
    for kind in types:
        pos = _skip_space(text, pos)
        value: Any
        if kind == "s":
            value, pos = _string(name, text, pos)
        elif kind == "i":
            value, pos = _integer(name, text, pos)
        else:
            raise ValueError(f"unknown HMP argument type {kind!r}")
        values.append(value)
    if _skip_space(text, pos) < len(text):
        raise ArgumentError(f"{name}: extraneous characters at the end of line")
    return values


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def _string(name: str, text: str, pos: int) -> tuple[str, int]:
    """get_str(): a word up to white space, or a quoted string."""
    if pos >= len(text):
        raise ArgumentError(f"{name}: string expected")
    if text[pos] != '"':
        end = pos
        while end < len(text) and text[end] not in _SPACE:
            end += 1
        return text[pos:end], end
    pos += 1
    chars: list[str] = []
    while pos < len(text) and text[pos] != '"':
        char = text[pos]
        if char == "\\":
            pos += 1
            if pos >= len(text):
                break
            escaped = _ESCAPES.get(text[pos])
            if escaped is None:
                raise ArgumentError(f"unsupported escape code: '\\{text[pos]}'")
            char = escaped
        chars.append(char)
        pos += 1
    if pos >= len(text):
        raise ArgumentError("unterminated string")
    return "".join(chars), pos + 1


def _integer(name: str, text: str, pos: int) -> tuple[int, int]:
    """get_expr() for a plain, optionally signed number."""
    sign = 1
    if pos < len(text) and text[pos] in "+-":
        sign = -1 if text[pos] == "-" else 1
        pos = _skip_space(text, pos + 1)
    if pos >= len(text):
        raise ArgumentError("unexpected end of expression")
    match = _NUMBER.match(text, pos)
    if match is None:
        raise ArgumentError(f"invalid char '{text[pos]}' in expression")
    digits = match.group()
    base = 16 if digits[:2] in ("0x", "0X") else 8 if digits[0] == "0" else 10
    value = sign * int(digits, base)
    if (value >> 32) & 0xFFFFFFFF:
        raise ArgumentError(f"'{name}' has failed: integer is for 32-bit values")
    return value, match.end()
