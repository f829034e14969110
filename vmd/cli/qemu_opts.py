"""QemuOpts: QEMU's classic ``key=value,key2=value2`` option syntax.

Used by -chardev, -mon, -machine, -m, -name, -smp, -accel and -device
(non-JSON form).  Behaviour follows QEMU 7.2's util/qemu-option.c:

* values run to the next single ``,``; ``,,`` stands for a literal comma.
  Keys end at the first ``,`` or ``=``, so keys cannot contain commas
  (QEMU 7.2 does not unescape ``,,`` in keys either);
* the first element may omit ``key=`` when the option has an implied key
  (``-chardev socket,...`` means ``backend=socket``);
* a bare ``key`` means ``key=on`` and ``nokey`` means ``key=off``.  QEMU 7.2
  still accepts this but warns that it is deprecated; we do the same and
  return the warning text instead of printing it;
* ``id=`` is pulled out as the options' identifier; the first one wins;
* a repeated key keeps every occurrence, and readers take the last one.

Typed values (bool, number, size) are checked here when the option list
declares the key's type, with QEMU's error wording.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from vmd.cli.errors import OptionError
from vmd.record import Record

OptType = Literal["string", "bool", "number", "size"]

_TRUE_WORDS = frozenset({"on", "yes", "true", "y"})
_FALSE_WORDS = frozenset({"off", "no", "false", "n"})
# Patterns are compiled on first use (re caches them), not at every start.
_ID_RE = r"[A-Za-z][A-Za-z0-9_.-]*\Z"
_SIZE_SUFFIXES = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
                  "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
SIZE_HINT = ("Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
             "tera-, peta-\nand exabytes, respectively.")
ID_HINT = "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."


class OptsSpec(Record):
    """Describes one QemuOpts list (QEMU's QemuOptsList).

    ``desc`` maps each accepted key to its type; ``None`` means any key is
    accepted and left as a string for the consumer to check.
    """

    __slots__ = ("name", "implied_key", "desc")

    def __init__(self, name: str, implied_key: str | None = None,
                 desc: Mapping[str, OptType] | None = None) -> None:
        self.name = name
        self.implied_key = implied_key
        self.desc = desc


class QemuOpts(Record):
    """One parsed option argument: its id and ordered ``(key, value)`` pairs."""

    __slots__ = ("id", "items")

    def __init__(self, id: str | None = None,
                 items: list[tuple[str, str]] | None = None) -> None:
        self.id = id
        self.items: list[tuple[str, str]] = [] if items is None else items

    def get(self, key: str, default: str | None = None) -> str | None:
        """Return the last value given for ``key`` (QEMU: last one wins)."""
        for name, value in reversed(self.items):
            if name == key:
                return value
        return default

    def to_dict(self) -> dict[str, str]:
        """All keys with their last value, in first-seen order; no id."""
        result: dict[str, str] = {}
        for name, value in self.items:
            result[name] = value
        return result


def split_params(params: str, implied_key: str | None = None,
                 warnings: list[str] | None = None) -> list[tuple[str, str]]:
    """Split ``params`` into ``(key, value)`` pairs without checking keys.

    Deprecation warnings for short-form booleans are appended to
    ``warnings`` when given.
    """
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(params):
        key, value, pos = _next_pair(params, pos, implied_key, warnings)
        implied_key = None
        pairs.append((key, value))
    return pairs


def _next_pair(params: str, pos: int, implied_key: str | None,
               warnings: list[str] | None) -> tuple[str, str, int]:
    """Parse one element starting at ``pos``; return key, value, next pos."""
    key_end = _find_any(params, pos, ",=")
    if key_end < len(params) and params[key_end] == "=":
        value, end = read_value(params, key_end + 1)
        return params[pos:key_end], value, _skip_comma(params, end)
    if implied_key is not None:
        value, end = read_value(params, pos)
        return implied_key, value, _skip_comma(params, end)
    key = params[pos:key_end]
    if key.startswith("no"):
        name, value, shown = key[2:], "off", key
    else:
        name, value, shown = key, "on", key
    if warnings is not None and not is_help_option(name):
        warnings.append(f"short-form boolean option '{shown}' deprecated\n"
                        f"Please use {_flag_advice(name, value)} instead")
    return name, value, _skip_comma(params, key_end)


def _flag_advice(name: str, value: str) -> str:
    """QEMU's suggested replacement; it special-cases 'nodelay'."""
    if name == "delay":
        return f"nodelay={'on' if value == 'off' else 'off'}"
    return f"{name}={value}"


def _find_any(text: str, pos: int, chars: str) -> int:
    """Index of the first of ``chars`` at or after ``pos``, else len(text)."""
    while pos < len(text) and text[pos] not in chars:
        pos += 1
    return pos


def _skip_comma(text: str, pos: int) -> int:
    return pos + 1 if pos < len(text) and text[pos] == "," else pos


def read_value(text: str, pos: int) -> tuple[str, int]:
    """Read a value up to the next single comma, turning ``,,`` into ``,``.

    Returns the value and the index of the terminating comma (or the end).
    """
    out: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if ch == ",":
            if text[pos + 1:pos + 2] != ",":
                break
            pos += 1
        out.append(ch)
        pos += 1
    return "".join(out), pos


def is_help_option(value: str) -> bool:
    """QEMU treats 'help' and '?' as requests for a list of choices."""
    return value in ("help", "?")


def is_valid_id(value: str) -> bool:
    """QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'."""
    return bool(re.match(_ID_RE, value))


def parse_opts(spec: OptsSpec, params: str,
               warnings: list[str] | None = None) -> QemuOpts:
    """Parse one option argument against ``spec``; raise OptionError.

    Mirrors qemu_opts_parse_noisily() with permit_abbrev set.
    """
    pairs = split_params(params, spec.implied_key, warnings)
    opts = QemuOpts(id=_first_id(params))
    if opts.id is not None and not is_valid_id(opts.id):
        raise OptionError("Parameter 'id' expects an identifier", ID_HINT)
    for key, value in pairs:
        if key == "id":
            continue
        _validate(spec, key, value)
        opts.items.append((key, value))
    return opts


def _first_id(params: str) -> str | None:
    """The first ``id=`` value, found the way QEMU does (no implied key)."""
    for key, value in split_params(params, None, None):
        if key == "id":
            return value
    return None


def _validate(spec: OptsSpec, key: str, value: str) -> None:
    if spec.desc is None:
        return
    kind = spec.desc.get(key)
    if kind is None:
        raise OptionError(f"Invalid parameter '{key}'")
    if kind == "bool":
        parse_bool(key, value)
    elif kind == "number":
        parse_number(key, value)
    elif kind == "size":
        parse_size(key, value)


def parse_bool(name: str, value: str) -> bool:
    """QEMU's qapi_bool_parse(): on/yes/true/y and off/no/false/n, exact case."""
    if value in _TRUE_WORDS:
        return True
    if value in _FALSE_WORDS:
        return False
    raise OptionError(f"Parameter '{name}' expects 'on' or 'off'")


def parse_number(name: str, value: str) -> int:
    """An unsigned 64-bit integer in C notation (decimal, 0x hex, 0 octal)."""
    number = _parse_c_uint(value)
    if number is None:
        raise OptionError(f"Parameter '{name}' expects a number")
    if number >= 1 << 64:
        raise OptionError(f"Value '{value}' is too large for parameter '{name}'")
    return number


def _parse_c_uint(value: str) -> int | None:
    """strtoull(value, 0) accepting the whole string, or None."""
    text = value.lstrip(" \t\n\r\f\v")
    text = text.removeprefix("+")
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    if re.fullmatch(r"0[0-7]*", text):
        return int(text, 8)
    if re.fullmatch(r"[1-9][0-9]*", text):
        return int(text)
    return None


_SIZE_RE = (
    r"[ \t\n\r\f\v]*\+?(?:(?P<hex>0[xX][0-9a-fA-F]+)|(?P<int>[0-9]+)(?P<frac>\.[0-9]*)?)"
    r"(?P<suffix>[BbKkMmGgTtPpEe])?\Z")


def parse_size(name: str, value: str) -> int:
    """A byte count with an optional binary suffix (QEMU's qemu_strtosz()).

    ``1.5G`` is fine, a fraction needs a suffix, ``1GB`` is not a size.
    """
    match = re.match(_SIZE_RE, value)
    if not match or (match["frac"] is not None and not match["suffix"]):
        raise OptionError(f"Parameter '{name}' expects a non-negative number below 2^64",
                          SIZE_HINT)
    mult = _SIZE_SUFFIXES[match["suffix"].upper()] if match["suffix"] else 1
    if match["hex"]:
        size = int(match["hex"], 16) * mult
    else:
        size = int(match["int"]) * mult
        if match["frac"] and len(match["frac"]) > 1:
            fraction = match["frac"][1:]
            size += int(fraction) * mult // 10 ** len(fraction)
    if size >= 1 << 64:
        raise OptionError(f"Value '{value}' is out of range for parameter '{name}'")
    return size
