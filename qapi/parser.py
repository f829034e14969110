"""Syntax of QAPI schema files.

The language is JSON with a twist: ``#`` comments, single-quoted strings
(printable ASCII, escapes ``\\\\`` and ``\\'`` only), ``true``/``false`` but no
numbers or ``null``.  Each file is a sequence of top-level objects.  The
directives ``include`` and ``pragma`` are handled here; every other object
is returned, with its source location, for :mod:`qapi.expr` to check.
Documentation comments (``##`` blocks) are ordinary comments to us.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .error import QAPIError, QAPIParseError, QAPISemError
from .source import QAPISchemaPragma, QAPISourceInfo

_PUNCTUATION = "{}[],:"


@dataclass
class QAPIExpression:
    """One top-level definition and where it starts."""

    expr: dict[str, Any]
    info: QAPISourceInfo


class _Lexer:
    """Turns schema text into tokens, tracking line and column."""

    def __init__(self, text: str, info: QAPISourceInfo) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.line_start = 0
        self.info = info
        self.tok: str = ""
        self.tok_line = 1
        self.tok_col = 1
        self.val: Any = None

    def error(self, msg: str) -> QAPIParseError:
        """An error at the current token (file:line:col)."""
        return QAPIParseError(self.info.at_line(self.tok_line), msg,
                              self.tok_col)

    def next(self) -> None:
        """Advance to the next token: punctuation, 'S' (string), 'B' (bool),
        or '' at end of input."""
        while True:
            self._skip_blank()
            self.tok_line = self.line
            self.tok_col = self.pos - self.line_start + 1
            if self.pos >= len(self.text):
                self.tok = ""
                return
            ch = self.text[self.pos]
            if ch == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
                continue
            if ch in _PUNCTUATION:
                self.pos += 1
                self.tok = ch
                return
            if ch == "'":
                self._string()
                return
            for word, value in (("true", True), ("false", False)):
                if self.text.startswith(word, self.pos):
                    self.pos += len(word)
                    self.tok, self.val = "B", value
                    return
            raise self.error(f"stray '{self._stray()}'")

    def _skip_blank(self) -> None:
        """Skip spaces and newlines, counting lines."""
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            if self.text[self.pos] == "\n":
                self.line += 1
                self.line_start = self.pos + 1
            self.pos += 1

    def _stray(self) -> str:
        """The run of word characters at the cursor, for error messages."""
        end = self.pos + 1
        while end < len(self.text) and self.text[end].isalnum():
            end += 1
        return self.text[self.pos:end]

    def _string(self) -> None:
        """Scan a single-quoted string starting at the cursor."""
        self.pos += 1
        chars: list[str] = []
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                raise self.error("missing terminating \"'\"")
            ch = self.text[self.pos]
            self.pos += 1
            if ch == "'":
                break
            if ch == "\\":
                esc = self.text[self.pos:self.pos + 1]
                if esc not in ("\\", "'"):
                    raise self.error(f"unknown escape \\{esc}")
                self.pos += 1
                ch = esc
            elif not (" " <= ch <= "~"):
                raise self.error("funny character in string")
            chars.append(ch)
        self.tok, self.val = "S", "".join(chars)


class QAPISchemaParser:
    """Parses one schema file and, recursively, the files it includes."""

    def __init__(self, fname: str, pragma: QAPISchemaPragma | None = None,
                 included: set[str] | None = None,
                 stack: tuple[str, ...] = (),
                 incl_info: QAPISourceInfo | None = None) -> None:
        self.fname = fname
        self.pragma = pragma if pragma is not None else QAPISchemaPragma()
        self.included = included if included is not None else set()
        self.stack = stack + (os.path.realpath(fname),)
        self.included.add(os.path.realpath(fname))
        self.exprs: list[QAPIExpression] = []
        text = self._read(fname, incl_info)
        self.lexer = _Lexer(text, QAPISourceInfo(fname, 1, self.pragma))
        self._parse_file()

    @staticmethod
    def _read(fname: str, incl_info: QAPISourceInfo | None) -> str:
        """File contents; an unreadable include is the includer's error."""
        try:
            with open(fname, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            what = "include file" if incl_info else "schema file"
            raise QAPIError(incl_info,
                            f"can't read {what} '{fname}': {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise QAPIError(QAPISourceInfo(fname, 1),
                            f"not valid UTF-8: {e.reason}") from None

    def _parse_file(self) -> None:
        """Top level: a sequence of objects, each a directive or definition."""
        lx = self.lexer
        lx.next()
        while lx.tok:
            if lx.tok != "{":
                raise lx.error("expected '{'")
            info = lx.info.at_line(lx.tok_line)
            expr = self._object()
            if "include" in expr:
                self._include(expr, info)
            elif "pragma" in expr:
                self._pragma(expr, info)
            else:
                self.exprs.append(QAPIExpression(expr, info))

    def _value(self) -> Any:
        """One value: object, array, string or boolean."""
        lx = self.lexer
        if lx.tok == "{":
            return self._object()
        if lx.tok == "[":
            return self._array()
        if lx.tok in ("S", "B"):
            val = lx.val
            lx.next()
            return val
        raise lx.error("expected '{', '[', string, or boolean")

    def _object(self) -> dict[str, Any]:
        """An object; the cursor is on its '{'."""
        lx = self.lexer
        lx.next()
        result: dict[str, Any] = {}
        if lx.tok == "}":
            lx.next()
            return result
        while True:
            if lx.tok != "S":
                raise lx.error("expected string")
            key = lx.val
            if key in result:
                raise lx.error(f"duplicate key '{key}'")
            lx.next()
            if lx.tok != ":":
                raise lx.error("expected ':'")
            lx.next()
            result[key] = self._value()
            if lx.tok == "}":
                lx.next()
                return result
            if lx.tok != ",":
                raise lx.error("expected ',' or '}'")
            lx.next()

    def _array(self) -> list[Any]:
        """An array; the cursor is on its '['."""
        lx = self.lexer
        lx.next()
        result: list[Any] = []
        if lx.tok == "]":
            lx.next()
            return result
        while True:
            result.append(self._value())
            if lx.tok == "]":
                lx.next()
                return result
            if lx.tok != ",":
                raise lx.error("expected ',' or ']'")
            lx.next()

    def _include(self, expr: dict[str, Any], info: QAPISourceInfo) -> None:
        """Splice in another file, relative to this one, at most once."""
        if len(expr) != 1:
            raise QAPISemError(info, "invalid 'include' directive")
        incl = expr["include"]
        if not isinstance(incl, str):
            raise QAPISemError(info, "value of 'include' must be a string")
        path = os.path.normpath(os.path.join(os.path.dirname(self.fname),
                                             incl))
        real = os.path.realpath(path)
        if real in self.stack:
            raise QAPISemError(info, f"inclusion loop for {incl}")
        if real in self.included:
            return
        sub = QAPISchemaParser(path, self.pragma, self.included, self.stack,
                               info)
        self.exprs.extend(sub.exprs)

    def _pragma(self, expr: dict[str, Any], info: QAPISourceInfo) -> None:
        """Apply a pragma directive to the schema-wide settings."""
        if len(expr) != 1:
            raise QAPISemError(info, "invalid 'pragma' directive")
        body = expr["pragma"]
        if not isinstance(body, dict):
            raise QAPISemError(info, "value of 'pragma' must be an object")
        for name, value in body.items():
            self._pragma_one(name, value, info)

    def _pragma_one(self, name: str, value: Any,
                    info: QAPISourceInfo) -> None:
        """Apply one pragma setting, checking its value's shape."""
        if name == "doc-required":
            if not isinstance(value, bool):
                raise QAPISemError(info,
                                   "pragma 'doc-required' must be boolean")
            self.pragma.doc_required = value
            return
        lists = {
            "command-name-exceptions": self.pragma.command_name_exceptions,
            "command-returns-exceptions":
                self.pragma.command_returns_exceptions,
            "member-name-exceptions": self.pragma.member_name_exceptions,
        }
        if name not in lists:
            raise QAPISemError(info, f"unknown pragma '{name}'")
        if (not isinstance(value, list)
                or not all(isinstance(v, str) for v in value)):
            raise QAPISemError(info,
                               f"pragma {name} must be a list of strings")
        lists[name].extend(value)


def parse_schema(fname: str) -> list[QAPIExpression]:
    """All definitions of a schema, includes expanded, in source order."""
    return QAPISchemaParser(fname).exprs
