"""Splitting a QMP byte stream into JSON messages, exactly as QEMU does.

QMP clients send JSON objects back to back with no delimiter (qmp-shell and
``qemu.qmp`` never send a newline), so messages are found by counting
brackets, the way QEMU's json-lexer/json-streamer/json-parser trio does. This
module reproduces that trio's observable behaviour, errors included:

* the lexer accepts QEMU's extensions (single-quoted strings, ``\\'``);
* a message ends when the brace and bracket counts return to zero, or either
  goes negative; a scalar at top level is a message by itself;
* after a lexical error the lexer skips input until a structural character
  or a control character, so one bad byte gives one error;
* errors read ``JSON parse error, ...`` with QEMU's texts, and the limits on
  token size, token count and nesting are QEMU's.

One departure, for bounded memory: QEMU keeps lexing a token that never
ends (a string without its closing quote) into an ever larger buffer and
checks the size limit only once the token is complete. Here the limit is
checked as the token grows: the error is reported as soon as it is
exceeded, and the rest of that token is skipped without being stored, so
the messages are QEMU's (the error, then whatever follows the token) while
memory stays within the limit.

Nothing here does I/O: ``JSONStreamParser.feed`` takes bytes and returns
``Message`` objects, so the framing is tested byte by byte.

Most requests are plain ASCII objects, so ``feed`` first tries a fast path
that only locates the end of such an object and hands it to the C ``json``
module. Anything unusual (escapes, single quotes, non-ASCII, errors, scalars)
goes through the exact lexer and parser below, which re-read the same bytes,
so both paths give identical results.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from vmd.record import Record

MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1024

# The parser recurses once or twice per nesting level.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * MAX_NESTING + 100))


class Message(Record):
    """One complete input message: a parsed value, or QEMU's error text."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: str | None = None) -> None:
        self.value = value
        self.error = error


# Token types.
LCURLY, RCURLY, LSQUARE, RSQUARE, COLON, COMMA = "{", "}", "[", "]", ":", ","
INTEGER, FLOAT, KEYWORD, STRING = "int", "float", "keyword", "string"
_PUNCTUATION = {ord(c): c for c in "{}[]:,"}

# Lexer states (QEMU's json-lexer.c states, by meaning).
(START, RECOVERY, DQ, DQ_ESCAPE, SQ, SQ_ESCAPE, ZERO, SIGN, DIGITS, MANTISSA,
 MANTISSA_DIGITS, EXP_E, EXP_SIGN, EXP_DIGITS, KEYWORD_CHARS) = range(15)

_WHITESPACE = b" \t\r\n"
_DIGITS = b"0123456789"
_LOWER = b"abcdefghijklmnopqrstuvwxyz"
# Runs that a state consumes without any decision, matched in one go.
_DQ_RUN = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\xfd]+")
_SQ_RUN = re.compile(rb"[\x20-\x26\x28-\x5b\x5d-\xfd]+")
_RECOVERY_RUN = re.compile(rb"[\t\x20-\x5a\x5c\x5e-\x7a\x7c\x7e-\xfd]+")
_WHITESPACE_RUN = re.compile(rb"[ \t\r\n]+")

# Fast path: printable ASCII objects without escapes or single quotes.
_FAST_SPECIAL = re.compile(rb"[][{}\"'\\]|[^\t\n\r\x20-\x7e]")
_FAST_STRING_END = re.compile(rb"[\"'\\]|[^\x20-\x7e]")
_LONG_NUMBER = re.compile(rb"[0-9]{19}")
# The usual request, an object without nested objects or arrays, in one
# match (strings may hold brackets); anything else is scanned bracket by
# bracket below.
_FLAT_OBJECT = re.compile(rb'\{(?:"[^"\\\x00-\x1f\x7f-\xff]*"|[^{}\[\]"\'\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff])*\}')
_NEED_MORE, _NOT_FAST = -1, -2
#: An unfinished object the fast path waits for is held whole in the input
#: buffer; past this size the exact path takes over, which keeps only the
#: tokens (and bounds the one being lexed).
_FAST_WAIT_LIMIT = 1 << 20


def _fast_within_limits(text: bytearray) -> bool:
    """Whether a big object surely stays within the token limits.

    In valid JSON every scalar token is followed by a structural one, so
    twice the structural characters (those in strings too) bound the token
    count; the token bytes are bounded by the text's length.
    """
    if len(text) + 1 > MAX_TOKEN_SIZE:
        return False
    structural = sum(text.count(char) for char in (b"{", b"}", b"[", b"]",
                                                   b":", b","))
    return 2 * structural < MAX_TOKEN_COUNT


class _FastPathRejected(ValueError):
    """The C json module accepted something QEMU would not: go slow."""


def _reject_constant(_name: str) -> Any:
    raise _FastPathRejected(_name)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _FastPathRejected("duplicate key")
    return result


_fast_decoder = json.JSONDecoder(
    object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)


class JSONStreamParser:
    """Turns a QMP input byte stream into messages (json-streamer.c)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._state = START
        self._token = bytearray()
        self._tokens: list[tuple[str, bytes]] = []
        self._token_size = 0
        self._braces = 0
        self._brackets = 0
        self._scan: tuple[int, int, int, bool] | None = None
        #: The token being lexed outgrew the size limit: drop its bytes.
        self._skipping = False

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data``; return the messages it completed, in order."""
        self._buf += data
        out: list[Message] = []
        buf = self._buf
        pos = self._pos
        while pos < len(buf):
            if self._state == START and not self._tokens:
                end = self._fast_message(pos, out)
                if end == _NEED_MORE:
                    break
                if end != _NOT_FAST:
                    pos = end
                    continue
            pos = self._lex_until_message(pos, out)
        if pos >= len(buf):
            buf.clear()
            pos = 0
        elif pos > 65536:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return out

    def pending_bytes(self) -> int:
        """Bytes held for an incomplete message (for flood accounting)."""
        return len(self._buf) - self._pos + self._token_size + len(self._token)

    # -- fast path ---------------------------------------------------------

    def _fast_message(self, pos: int, out: list[Message]) -> int:
        """Parse one plain object at ``pos``; return the end position."""
        buf = self._buf
        match = _WHITESPACE_RUN.match(buf, pos)
        start = match.end() if match else pos
        if start == len(buf):
            return start
        if buf[start] != 0x7B:  # '{'
            return _NOT_FAST
        # Small input only: a partial message is matched again on every feed.
        flat = _FLAT_OBJECT.match(buf, start) if self._scan is None and len(buf) - start <= 65536 else None
        end = flat.end() if flat is not None else self._fast_scan(start)
        if end < 0:
            return end
        text = buf[start:end]
        if _LONG_NUMBER.search(text):
            return _NOT_FAST
        if len(text) > MAX_TOKEN_COUNT and not _fast_within_limits(text):
            return _NOT_FAST
        try:
            value = _fast_decoder.decode(text.decode("ascii"))
        except ValueError:
            return _NOT_FAST
        out.append(Message(value))
        return end

    def _fast_scan(self, start: int) -> int:
        """Find where the object at ``start`` ends, by bracket counting."""
        buf = self._buf
        if self._scan is not None:
            offset, braces, brackets, in_string = self._scan
            index = start + offset
        else:
            index, braces, brackets, in_string = start + 1, 1, 0, False
        self._scan = None
        while True:
            if in_string:
                match = _FAST_STRING_END.search(buf, index)
                if match is None:
                    return self._fast_wait(start, braces, brackets, True)
                if buf[match.start()] != 0x22:
                    return _NOT_FAST
                index, in_string = match.end(), False
                continue
            match = _FAST_SPECIAL.search(buf, index)
            if match is None:
                return self._fast_wait(start, braces, brackets, False)
            char = buf[match.start()]
            index = match.end()
            if char == 0x22:
                in_string = True
            elif char == 0x7B:
                braces += 1
                if braces + brackets > MAX_NESTING:
                    return _NOT_FAST  # the exact path reports it
            elif char == 0x7D:
                braces -= 1
            elif char == 0x5B:
                brackets += 1
                if braces + brackets > MAX_NESTING:
                    return _NOT_FAST
            elif char == 0x5D:
                brackets -= 1
            else:
                return _NOT_FAST
            if (braces <= 0 and brackets <= 0) or braces < 0 or brackets < 0:
                return index if braces == 0 and brackets == 0 else _NOT_FAST

    def _fast_wait(self, start: int, braces: int, brackets: int,
                   in_string: bool) -> int:
        """Remember how far the scan got, so more input resumes it."""
        offset = len(self._buf) - start
        if offset > _FAST_WAIT_LIMIT:
            return _NOT_FAST  # let the exact path apply QEMU's limits
        self._scan = (offset, braces, brackets, in_string)
        return _NEED_MORE

    # -- exact lexer (json-lexer.c) ------------------------------------------

    def _lex_until_message(self, pos: int, out: list[Message]) -> int:
        """Lex from ``pos`` until a message is emitted or input runs out."""
        buf = self._buf
        count = len(out)
        while pos < len(buf) and len(out) == count:
            pos = self._lex_step(buf, pos, out)
        return pos

    def _lex_step(self, buf: bytearray, pos: int, out: list[Message]) -> int:
        """Advance the lexer over at least one byte (or emit a token)."""
        state = self._state
        if state in (DQ, SQ):
            match = (_DQ_RUN if state == DQ else _SQ_RUN).match(buf, pos)
            if match:
                self._grow_token(buf[pos:match.end()], out)
                return match.end()
        elif state == RECOVERY:
            match = _RECOVERY_RUN.match(buf, pos)
            if match:
                return match.end()
        elif state == START:
            match = _WHITESPACE_RUN.match(buf, pos)
            if match:
                return match.end()
        char = buf[pos]
        action = self._transition(state, char)
        if action is None:  # stay or move to a non-final state
            self._grow_token(buf[pos:pos + 1], out)
            return pos + 1
        if action == "error":
            self._token.append(char)
            self._skipping = False
            self._error_token(out)
            return pos + 1
        if action == "recovered":
            self._state = START
            return pos
        kind, consumed = action
        if self._skipping:  # its error was reported when it grew too big
            self._skipping = False
        else:
            if consumed:
                self._token.append(char)
            self._emit_token(kind, bytes(self._token), out)
        self._token.clear()
        self._state = START
        return pos + 1 if consumed else pos

    def _grow_token(self, data: bytearray, out: list[Message]) -> None:
        """Add lexed bytes to the current token, within the size limit."""
        if self._skipping:
            return
        self._token += data
        if self._token_size + len(self._token) + 1 > MAX_TOKEN_SIZE:
            self._token.clear()
            self._skipping = True
            self._reset_message()
            out.append(Message(error="JSON token size limit exceeded"))

    def _transition(self, state: int, char: int) -> Any:
        """Apply one byte. Returns None (consumed, no token), "error",
        "recovered", or (token type, byte consumed?)."""
        if state == START:
            return self._from_start(char)
        if state == RECOVERY:
            if char < 0x20 or char >= 0xFE or char in b"[]{}":
                return "recovered"
            return None
        if state in (DQ, SQ):
            quote = 0x22 if state == DQ else 0x27
            if char == quote:
                return (STRING, True)
            if char == 0x5C:
                self._state = DQ_ESCAPE if state == DQ else SQ_ESCAPE
                return None
            return None if 0x20 <= char <= 0xFD else "error"
        if state in (DQ_ESCAPE, SQ_ESCAPE):
            if 0x20 <= char <= 0xFD:
                self._state = DQ if state == DQ_ESCAPE else SQ
                return None
            return "error"
        return self._number_or_keyword(state, char)

    def _from_start(self, char: int) -> Any:
        if char in _PUNCTUATION:
            return (_PUNCTUATION[char], True)
        next_state = {0x22: DQ, 0x27: SQ, 0x30: ZERO, 0x2D: SIGN}.get(char)
        if next_state is None:
            if char in _DIGITS:
                next_state = DIGITS
            elif char in _LOWER:
                next_state = KEYWORD_CHARS
            else:
                return "error"
        self._state = next_state
        return None

    def _number_or_keyword(self, state: int, char: int) -> Any:
        """States that end with a lookahead byte (numbers and keywords)."""
        moves = _NUMBER_MOVES[state]
        for chars, next_state in moves:
            if char in chars:
                if next_state < 0:
                    return "error"
                self._state = next_state
                return None
        terminal = _TERMINALS.get(state)
        if terminal is not None and char < 0x80:
            return (terminal, False)
        return "error"

    # -- streamer (json-streamer.c) ------------------------------------------

    def _error_token(self, out: list[Message]) -> None:
        text = bytes(self._token).decode("utf-8", "replace")
        self._token.clear()
        self._state = RECOVERY
        self._reset_message()
        out.append(Message(error=f"JSON parse error, stray '{text}'"))

    def _emit_token(self, kind: str, text: bytes, out: list[Message]) -> None:
        if kind == LCURLY:
            self._braces += 1
        elif kind == RCURLY:
            self._braces -= 1
        elif kind == LSQUARE:
            self._brackets += 1
        elif kind == RSQUARE:
            self._brackets -= 1
        error = self._limit_error(len(text))
        if error is not None:
            self._reset_message()
            out.append(Message(error=error))
            return
        self._tokens.append((kind, text))
        self._token_size += len(text)
        braces, brackets = self._braces, self._brackets
        if (braces > 0 or brackets > 0) and braces >= 0 and brackets >= 0:
            return
        tokens = self._tokens
        self._reset_message()
        out.append(parse_tokens(tokens))

    def _limit_error(self, size: int) -> str | None:
        if self._token_size + size + 1 > MAX_TOKEN_SIZE:
            return "JSON token size limit exceeded"
        if len(self._tokens) + 1 > MAX_TOKEN_COUNT:
            return "JSON token count limit exceeded"
        if self._braces + self._brackets > MAX_NESTING:
            return "JSON nesting depth limit exceeded"
        return None

    def _reset_message(self) -> None:
        self._tokens = []
        self._token_size = 0
        self._braces = 0
        self._brackets = 0


_DIGIT_SET = _DIGITS
_NUMBER_MOVES: dict[int, list[tuple[bytes, int]]] = {
    ZERO: [(_DIGIT_SET, -1), (b".", MANTISSA)],
    SIGN: [(b"0", ZERO), (b"123456789", DIGITS)],
    DIGITS: [(_DIGIT_SET, DIGITS), (b"eE", EXP_E), (b".", MANTISSA)],
    MANTISSA: [(_DIGIT_SET, MANTISSA_DIGITS)],
    MANTISSA_DIGITS: [(_DIGIT_SET, MANTISSA_DIGITS), (b"eE", EXP_E)],
    EXP_E: [(b"+-", EXP_SIGN), (_DIGIT_SET, EXP_DIGITS)],
    EXP_SIGN: [(_DIGIT_SET, EXP_DIGITS)],
    EXP_DIGITS: [(_DIGIT_SET, EXP_DIGITS)],
    KEYWORD_CHARS: [(_LOWER, KEYWORD_CHARS)],
}
_TERMINALS = {ZERO: INTEGER, DIGITS: INTEGER, MANTISSA_DIGITS: FLOAT,
              EXP_DIGITS: FLOAT, KEYWORD_CHARS: KEYWORD}


# -- parser (json-parser.c) ---------------------------------------------------

class _ParseError(Exception):
    pass


def parse_tokens(tokens: list[tuple[str, bytes]]) -> Message:
    """Parse one message's tokens; the first error found is the one reported."""
    parser = _TokenParser(tokens)
    try:
        return Message(parser.value())
    except _ParseError as error:
        return Message(error=f"JSON parse error, {error}")


class _TokenParser:
    def __init__(self, tokens: list[tuple[str, bytes]]) -> None:
        self._tokens = tokens
        self._next = 0

    def _peek(self) -> tuple[str, bytes]:
        if self._next >= len(self._tokens):
            raise _ParseError("premature EOI")
        return self._tokens[self._next]

    def _pop(self) -> tuple[str, bytes]:
        token = self._peek()
        self._next += 1
        return token

    def value(self) -> Any:
        kind, text = self._peek()
        if kind == LCURLY:
            return self._object()
        if kind == LSQUARE:
            return self._array()
        self._next += 1
        if kind == STRING:
            return decode_string(text)
        if kind == INTEGER:
            return _integer(text)
        if kind == FLOAT:
            return float(text)
        if kind == KEYWORD:
            return _keyword(text)
        raise _ParseError("expecting value")

    def _object(self) -> dict[str, Any]:
        self._pop()
        result: dict[str, Any] = {}
        if self._peek()[0] == RCURLY:
            self._pop()
            return result
        while True:
            self._pair(result)
            kind = self._pop()[0]
            if kind == RCURLY:
                return result
            if kind != COMMA:
                raise _ParseError("expected separator in dict")

    def _pair(self, result: dict[str, Any]) -> None:
        key = self.value()
        if not isinstance(key, str):
            raise _ParseError("key is not a string in object")
        if self._pop()[0] != COLON:
            raise _ParseError("missing : in object pair")
        value = self.value()
        if key in result:
            raise _ParseError("duplicate key")
        result[key] = value

    def _array(self) -> list[Any]:
        self._pop()
        result: list[Any] = []
        if self._peek()[0] == RSQUARE:
            self._pop()
            return result
        while True:
            result.append(self.value())
            kind = self._pop()[0]
            if kind == RSQUARE:
                return result
            if kind != COMMA:
                raise _ParseError("expected separator in list")


def _keyword(text: bytes) -> Any:
    if text == b"true":
        return True
    if text == b"false":
        return False
    if text == b"null":
        return None
    raise _ParseError(f"invalid keyword '{text.decode()}'")


def _integer(text: bytes) -> int | float:
    """int64 or uint64 stay exact; anything larger becomes a double.

    Only up to 20 digits go through ``int``, whose conversion is limited
    to 4300 digits (and quadratic); longer ones are out of range anyway.
    """
    if len(text) > 21:
        return float(text)
    value = int(text)
    if -(1 << 63) <= value < (1 << 64):
        return value
    return float(text)


_ESCAPES = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/",
            ord("b"): "\b", ord("f"): "\f", ord("n"): "\n", ord("r"): "\r",
            ord("t"): "\t"}
_PLAIN_RUN = re.compile(rb"[^\\]+")


def decode_string(token: bytes) -> str:
    """Decode a string token (quotes included) as QEMU's parser does."""
    body = token[1:-1]
    parts: list[str] = []
    pos = 0
    while pos < len(body):
        match = _PLAIN_RUN.match(body, pos)
        if match:
            parts.append(_decode_utf8(match.group()))
            pos = match.end()
            continue
        pos += 1
        escape = body[pos] if pos < len(body) else 0
        if escape in _ESCAPES:
            parts.append(_ESCAPES[escape])
            pos += 1
        elif escape == ord("u"):
            char, pos = _unicode_escape(token, body, pos - 1)
            parts.append(char)
        else:
            raise _ParseError("invalid escape sequence in string")
    return "".join(parts)


def _hex4(body: bytes, pos: int) -> int:
    digits = body[pos:pos + 4]
    if len(digits) != 4 or not all(c in b"0123456789abcdefABCDEF"
                                   for c in digits):
        return -1
    return int(digits, 16)


def _unicode_escape(token: bytes, body: bytes, start: int
                    ) -> tuple[str, int]:
    """Decode ``\\uXXXX`` (or a surrogate pair) starting at ``start``.

    On error QEMU quotes the six bytes (twelve for a pair) from the
    backslash on, as far as the token goes: a short escape at the end of
    the string is shown with the closing quote, e.g. ``\\u12"``.
    """
    code = _hex4(body, start + 2)
    end = start + 6
    if 0xD800 <= code <= 0xDBFF and body[end:end + 2] == b"\\u":
        trailing = _hex4(body, end + 2)
        if 0xDC00 <= trailing <= 0xDFFF:
            code = 0x10000 + ((code & 0x3FF) << 10) + (trailing & 0x3FF)
            end += 6
        else:
            code = -1
    if not _valid_code_point(code):
        # body[i] is token[i + 1]; slicing the token stops at its end.
        text = token[start + 1:end + 1].decode("utf-8", "replace")
        raise _ParseError(f"{text} is not a valid Unicode character")
    return chr(code), end


def _valid_code_point(code: int) -> bool:
    if code < 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return False
    return not (0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE)


def _decode_utf8(raw: bytes) -> str:
    """Decode modified UTF-8 (``C0 80`` is NUL), rejecting noncharacters."""
    try:
        text = raw.replace(b"\xc0\x80", b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        raise _ParseError("invalid UTF-8 sequence in string") from None
    if not text.isascii() and not all(_valid_code_point(ord(c))
                                      for c in text):
        raise _ParseError("invalid UTF-8 sequence in string")
    return text
