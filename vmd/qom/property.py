"""Typed device properties: parsing, defaults and QEMU's printed forms.

A property is what ``-device TYPE,name=value`` sets before realize. Each
has a QOM type name (``uint32``, ``bool``, ``str``, an enum's QAPI name)
that ``-device TYPE,help`` and ``device-list-properties`` show, and parses
values the way QEMU's option visitors do: integers in C's base-0 syntax
(``0x3f8``, ``010`` is octal), booleans as ``on``/``off`` and the QAPI
aliases, enums by member name. Values from ``-device`` JSON arrive typed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import parse_size
from vmd.qom.errors import QOMError

# Integer property types: name -> (minimum, maximum, C type in error texts).
_INT_RANGES: dict[str, tuple[int, int, str]] = {
    "uint8": (0, 0xFF, "uint8_t"),
    "uint16": (0, 0xFFFF, "uint16_t"),
    "uint32": (0, 0xFFFF_FFFF, "uint32_t"),
    "uint64": (0, 0xFFFF_FFFF_FFFF_FFFF, "uint64_t"),
    "int32": (-(1 << 31), (1 << 31) - 1, "int32_t"),
    "int64": (-(1 << 63), (1 << 63) - 1, "int64_t"),
}
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


def _size_text(value: int) -> str:
    """QEMU's size_to_str: three significant digits and a binary unit (``4 KiB``)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    exponent = 0
    while exponent + 1 < len(units) and value >= 1 << (10 * (exponent + 1)):
        exponent += 1
    return f"{value / (1 << (10 * exponent)):.3g} {units[exponent]}"


def _parse_c_integer(text: str) -> int | None:
    """``strtoll(text, NULL, 0)`` that must consume everything, or None."""
    body = text.strip()
    sign = 1
    if body[:1] in "+-" and body:
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    try:
        if body[:2].lower() == "0x":
            value = int(body[2:], 16)
        elif len(body) > 1 and body[0] == "0":
            value = int(body[1:], 8)
        else:
            value = int(body, 10)
    except ValueError:
        return None
    return sign * value


@dataclass(frozen=True)
class Property:
    """One qdev property of a device type.

    ``enum`` lists the members when ``type`` names a QAPI enum;
    ``default`` None means the property has no default (a ``str`` such as
    ``chardev``), which help texts leave out. ``in_qtree`` false marks a
    property QEMU keeps on a child object (``isa-serial``'s ``chardev``
    lives on its ``serial`` child), which ``info qtree`` does not show.
    """

    name: str
    type: str
    default: Any = None
    description: str = ""
    enum: tuple[str, ...] = ()
    in_qtree: bool = True

    def parse(self, value: Any) -> Any:
        """Convert a command-line string or JSON value; QEMU's error texts."""
        if self.type in _INT_RANGES:
            return self._parse_int(value)
        if self.type == "size":
            return self._parse_size(value)
        if self.type == "bool":
            return self._parse_bool(value)
        if self.enum:
            if not isinstance(value, str) or value not in self.enum:
                raise QOMError(
                    f"Parameter '{self.name}' does not accept value '{value}'")
            return value
        if not isinstance(value, str):
            raise QOMError(f"Invalid parameter type for '{self.name}', "
                           "expected: string")
        return value

    def _parse_int(self, value: Any) -> int:
        low, high, c_type = _INT_RANGES[self.type]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise QOMError(f"Invalid parameter type for '{self.name}', "
                           "expected: integer")
        number = value if isinstance(value, int) else _parse_c_integer(value)
        if number is None:
            raise QOMError(f"Parameter '{self.name}' expects integer")
        if not low <= number <= high:
            raise QOMError(f"Parameter '{self.name}' expects {c_type}")
        return number

    def _parse_size(self, value: Any) -> int:
        """A byte count, with QEMU's suffixes (``4k``) on the command line."""
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64:
            return value
        if isinstance(value, str):
            try:
                return parse_size(self.name, value)
            except OptionError:
                pass
        raise QOMError(f"Parameter '{self.name}' expects size")

    def _parse_bool(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in _TRUE:
            return True
        if isinstance(value, str) and value in _FALSE:
            return False
        if isinstance(value, str):
            raise QOMError(f"Parameter '{self.name}' expects 'on' or 'off'")
        raise QOMError(f"Invalid parameter type for '{self.name}', "
                       "expected: boolean")

    def help_line(self) -> str:
        """One line of ``-device TYPE,help`` (QEMU's object_property_help)."""
        line = f"  {self.name}=<{self.type}>"
        if self.description or self.default is not None:
            line = line.ljust(24) + " - "
        line += self.description
        if self.default is not None:
            line += f" (default: {self.default_json()})"
        return line

    def default_json(self) -> str:
        """The default as JSON (``device-list-properties``' default-value)."""
        return json.dumps(self.default)

    def format(self, value: Any) -> str:
        """The value as ``info qtree`` prints it (QEMU's human output)."""
        if self.type in _INT_RANGES:
            return f"{value} (0x{value & 0xFFFF_FFFF_FFFF_FFFF:x})"
        if self.type == "bool":
            return "true" if value else "false"
        if self.type == "size":
            return f"{value} ({_size_text(value)})"
        return f'"{value if value is not None else ""}"'
