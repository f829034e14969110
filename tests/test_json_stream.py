"""Unit tests of the QMP input framing and parsing (no I/O).

``JSONStreamParser`` must give the same messages however the bytes are cut,
and its fast path (plain ASCII objects, parsed by the C ``json`` module) must
agree with its exact path (QEMU's lexer and parser, re-implemented).
"""

from __future__ import annotations

from typing import Any

import pytest

from vmd.qmp import json_stream
from vmd.qmp.json_stream import JSONStreamParser, Message

SENTINEL = b'{"execute":"query-name","id":"after"}'
SENTINEL_VALUE = {"execute": "query-name", "id": "after"}


def feed_all(chunks: list[bytes]) -> list[Message]:
    parser = JSONStreamParser()
    messages: list[Message] = []
    for chunk in chunks:
        messages += parser.feed(chunk)
    return messages


def parse(data: bytes) -> list[Message]:
    return JSONStreamParser().feed(data)


def strict(value: Any) -> Any:
    """A form of ``value`` in which 1 and 1.0 (and True) differ."""
    if isinstance(value, dict):
        return ("dict", [(key, strict(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("list", [strict(item) for item in value])
    return (type(value).__name__, repr(value))


def strict_messages(messages: list[Message]) -> list[Any]:
    return [(strict(message.value), message.error) for message in messages]


# Inputs whose messages are checked across every split point: valid
# requests, QEMU extensions, errors, and mixtures, each ending with a
# sentinel so that a trailing scalar is terminated.
STREAMS = [
    b'{"execute":"query-name"}',
    b'{"execute":"query-status","arguments":{},"id":1}',
    b'{ "execute" : "x" , "id" : [ 1 , -2 , 3.5 , -0.25e-3 , 1E+2 ] }\r\n',
    b'{"id":{"a":[{},[],{"b":null}],"t":true,"f":false}}',
    b'{"id":"\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/"}',
    b'{"id":"\xc3\xa9\xf0\x9f\x98\x80"}',
    b"{'execute':'query-name','id':'it\\'s'}",
    b'{"id":"say \\\'hi\\\'"}',
    b"{'id':'a \"quoted\" word'}",
    b'{"id":18446744073709551615}{"id":18446744073709551616}',
    b'{"id":-9223372036854775808}{"id":-9223372036854775809}',
    b'{"a":1}{"b":2}\n\n   {"c":3}',
    b'42 "s" null [1,2] true ',
    b'@{"a":1}',
    b'\x01\xff{"a":1}',
    b'{"a":"x\ny"}',
    b'{"a":1,}',
    b'[1,]',
    b'}',
    b']]',
    b'{"a" 1}',
    b'[1 2]',
    b'{"a",1}',
    b'{1:2}',
    b'tru ',
    b'{"a":"\\q"}',
    b'{"a":"\\ud83d"}',
    b'{"a":"\\u12"}',
    b'{"a":"\xc3("}',
    b'{"a":"\xed\xa0\xbd"}',
    b'{"a":1,"a":2}',
    b'01',
    b'{"a":1.}',
    b'{"a":-}',
]


@pytest.mark.parametrize("data", STREAMS, ids=[repr(s)[2:40] for s in STREAMS])
def test_every_split_point_gives_the_same_messages(data: bytes) -> None:
    stream = data + SENTINEL
    whole = strict_messages(parse(stream))
    assert whole[-1] == (strict(SENTINEL_VALUE), None)
    for cut in range(1, len(stream)):
        assert strict_messages(feed_all([stream[:cut], stream[cut:]])) == whole, cut
    assert strict_messages(feed_all([bytes([b]) for b in stream])) == whole


def test_split_in_three_at_every_pair_of_points() -> None:
    stream = b'{"id":"\\u00e9x"}' + b"{'a':[1.5]}" + SENTINEL
    whole = strict_messages(parse(stream))
    for first in range(1, len(stream)):
        for second in range(first, len(stream)):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert strict_messages(feed_all(chunks)) == whole, (first, second)


# -- fast path and exact path ----------------------------------------------------

VALID = [
    b'{"execute":"query-name"}',
    b'{"execute":"x","arguments":{"a":[1,-2,3.5,-0.25e-3,1E+2,0,-0,0.0]}}',
    b'{"id":{"a":[{},[],{"b":null}],"t":true,"f":false,"e":""}}',
    b'{"id":922337203685477580,"n":-922337203685477580}',
    b'{"id":123456789012345678}',
    b'{"k":[[[[[[[[[[1]]]]]]]]]]}',
    b' \t\r\n{"a":1}',
    b'{"a":"~!@#$%^&*()_+`-=[]{}|;:,./<>?"}',
]


class _CountingDecoder:
    """Wraps the fast path's decoder to count its successful uses."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def decode(self, text: str) -> Any:
        value = self.inner.decode(text)
        self.calls += 1
        return value


@pytest.mark.parametrize("data", VALID, ids=[repr(v)[2:40] for v in VALID])
def test_fast_and_exact_paths_agree(monkeypatch: pytest.MonkeyPatch,
                                    data: bytes) -> None:
    counter = _CountingDecoder(json_stream._fast_decoder)
    monkeypatch.setattr(json_stream, "_fast_decoder", counter)
    fast = parse(data)
    assert counter.calls == 1, "the plain message should take the fast path"
    assert len(fast) == 1 and fast[0].error is None

    # The same message with its first key's first letter as a \u escape
    # goes through the exact path, and must parse to the same value.
    start = data.index(b'{"') + 2
    letter = data[start:start + 1]
    escaped = data[:start] + b"\\u%04x" % letter[0] + data[start + 1:]
    exact = parse(escaped)
    assert counter.calls == 1, "the escaped message should take the exact path"
    assert strict_messages(exact) == strict_messages(fast)


def test_exact_path_alone_agrees_on_every_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fast path disabled every stream gives the same messages."""
    streams = [data + SENTINEL for data in STREAMS + VALID]
    with_fast = [strict_messages(parse(stream)) for stream in streams]
    monkeypatch.setattr(JSONStreamParser, "_fast_message",
                        lambda self, pos, out: json_stream._NOT_FAST)
    without_fast = [strict_messages(parse(stream)) for stream in streams]
    for stream, expected, got in zip(streams, with_fast, without_fast):
        assert got == expected, stream


def test_fast_path_rejects_what_qemu_rejects() -> None:
    """The C json module is laxer than QEMU here; the results must not be."""
    assert parse(b'{"a":NaN}')[0].error == "JSON parse error, stray 'N'"
    assert parse(b'{"a":1,"a":2}')[0].error == "JSON parse error, duplicate key"
    assert parse(b'{"a":Infinity}')[0].error == "JSON parse error, stray 'I'"


# -- framing ------------------------------------------------------------------------

def test_no_newline_needed_and_partial_input_waits() -> None:
    parser = JSONStreamParser()
    assert parser.feed(b'{"execute":"query-sta') == []
    assert parser.pending_bytes() > 0
    assert parser.feed(b'tus"}') == [Message({"execute": "query-status"})]
    assert parser.feed(b"  \r\n\t ") == []


def test_top_level_scalar_ends_at_next_byte() -> None:
    parser = JSONStreamParser()
    assert parser.feed(b"42") == []
    assert parser.feed(b" ") == [Message(42)]
    assert parser.feed(b'"s"') == [Message("s")]
    assert parser.feed(b"nul") == []
    assert parser.feed(b"l{") == [Message(None)]


def test_numbers() -> None:
    values = [m.value for m in parse(b'[18446744073709551615,18446744073709551616,-9223372036854775809,'
                                     b'-0,1e5,0.1,1E-2]')]
    assert strict(values[0]) == strict([18446744073709551615, 18446744073709551616.0,
                                        -9223372036854775809.0, 0, 100000.0, 0.1, 0.01])


# -- errors and recovery ----------------------------------------------------------------

ERRORS = [
    (b"@", ["JSON parse error, stray '@'"]),
    (b"\x01", ["JSON parse error, stray '\x01'"]),
    (b"\xff", ["JSON parse error, stray '\ufffd'"]),
    # After a lexical error the rest up to a structural character is
    # skipped; the '}' then ends a message that lacks a value.
    (b'{"a":"x\ny"}', ["JSON parse error, stray '\"x\n'", "JSON parse error, expecting value"]),
    (b'{"a":"\ty"}', ["JSON parse error, stray '\"\t'", "JSON parse error, expecting value"]),
    (b'{"a":@@@@}', ["JSON parse error, stray '@'", "JSON parse error, expecting value"]),
    (b"@@@@", ["JSON parse error, stray '@'"]),
    (b'{"a":1,}', ["JSON parse error, expecting value"]),
    (b"[1,]", ["JSON parse error, expecting value"]),
    (b"}", ["JSON parse error, expecting value"]),
    (b'{"a" 1}', ["JSON parse error, missing : in object pair"]),
    (b'{"a":1 "b":2}', ["JSON parse error, expected separator in dict"]),
    (b"[1 2]", ["JSON parse error, expected separator in list"]),
    (b"{1:2}", ["JSON parse error, key is not a string in object"]),
    (b"tru ", ["JSON parse error, invalid keyword 'tru'"]),
    (b'{"a":"\\q"}', ["JSON parse error, invalid escape sequence in string"]),
    (b'{"a":"\\ud83d"}', ["JSON parse error, \\ud83d is not a valid Unicode character"]),
    (b'{"a":"\\ud83dx"}', ["JSON parse error, \\ud83d is not a valid Unicode character"]),
    (b'{"a":"\\ude00"}', ["JSON parse error, \\ude00 is not a valid Unicode character"]),
    (b'{"a":"\\u12"}', ["JSON parse error, \\u12\" is not a valid Unicode character"]),
    (b'{"a":"\\u"}', ["JSON parse error, \\u\" is not a valid Unicode character"]),
    (b'{"a":"\\uzzzz"}', ["JSON parse error, \\uzzzz is not a valid Unicode character"]),
    (b'{"a":"\xc3("}', ["JSON parse error, invalid UTF-8 sequence in string"]),
    (b'{"a":"\xed\xa0\xbd"}', ["JSON parse error, invalid UTF-8 sequence in string"]),
    (b'{"a":"\xef\xbf\xbf"}', ["JSON parse error, invalid UTF-8 sequence in string"]),
    (b'{"a":1,"a":2}', ["JSON parse error, duplicate key"]),
]


@pytest.mark.parametrize("data,errors", ERRORS, ids=[repr(e[0])[2:30] for e in ERRORS])
def test_error_texts_and_recovery(data: bytes, errors: list[str]) -> None:
    messages = parse(data + SENTINEL)
    assert [m.error for m in messages[:-1]] == errors
    assert messages[-1] == Message(SENTINEL_VALUE)


def test_accepted_oddities() -> None:
    """QEMU accepts modified UTF-8 NUL, ``\\u0000`` and ``\\'``."""
    assert parse(b'{"a":"\xc0\x80\\u0000"}') == [Message({"a": "\x00\x00"})]
    assert parse(b'{"a":"\\\'"}') == [Message({"a": "'"})]


def test_message_ends_only_when_both_counts_are_zero() -> None:
    """``{"a":[1}`` leaves a bracket open: the next object is swallowed."""
    parser = JSONStreamParser()
    assert parser.feed(b'{"a":[1}' + SENTINEL) == []
    assert parser.feed(b"]") == [Message(error="JSON parse error, expected separator in list")]
    assert parser.feed(SENTINEL) == [Message(SENTINEL_VALUE)]


def test_negative_count_ends_the_message_at_once() -> None:
    assert parse(b"]" + SENTINEL) == [Message(error="JSON parse error, expecting value"),
                                     Message(SENTINEL_VALUE)]


def test_deep_input_split_at_some_points() -> None:
    stream = b'{"a":' + b"[" * 1030 + b"]" * 1030 + b"}" + SENTINEL
    whole = parse(stream)
    assert whole[0].error == "JSON nesting depth limit exceeded"
    for cut in range(1, len(stream), 97):
        assert feed_all([stream[:cut], stream[cut:]]) == whole, cut


# -- single quotes ----------------------------------------------------------------------

@pytest.mark.parametrize("data,value", [
    (b"{'execute':'query-name','id':'sq'}", {"execute": "query-name", "id": "sq"}),
    (b"{'id':'it\\'s'}", {"id": "it's"}),
    (b"{'id':'say \"hi\"'}", {"id": 'say "hi"'}),
    (b"{\"id\":'mixed'}", {"id": "mixed"}),
    (b"{'id':'\\u00e9\\n'}", {"id": "\u00e9\n"}),
    (b"{'id':\"it's\"}", {"id": "it's"}),
])
def test_single_quotes(data: bytes, value: dict[str, Any]) -> None:
    assert parse(data) == [Message(value)]
    assert feed_all([bytes([b]) for b in data]) == [Message(value)]


# -- limits -------------------------------------------------------------------------------

def test_nesting_limit() -> None:
    ok = b"[" * 1024 + b"]" * 1024
    assert parse(ok)[0].error is None
    too_deep = parse(b"[" * 1025 + b"]" * 1025 + SENTINEL)
    assert too_deep[0].error == "JSON nesting depth limit exceeded"
    assert too_deep[-1] == Message(SENTINEL_VALUE)


@pytest.mark.parametrize("opener", [b"[", b"{\"k\":"])
def test_nesting_limit_through_the_fast_path(opener: bytes) -> None:
    """An object counts as one level too; 1024 levels in all are allowed."""
    closer = b"]" if opener == b"[" else b"}"
    inner = 1023
    ok = b'{"id":' + opener * inner + b"1" + closer * inner + b"}"
    assert parse(ok)[0].error is None
    deep = b'{"id":' + opener * (inner + 1) + b"1" + closer * (inner + 1) + b"}"
    messages = parse(deep + SENTINEL)
    assert messages[0].error == "JSON nesting depth limit exceeded"
    assert messages[-1] == Message(SENTINEL_VALUE)


def test_token_count_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_stream, "MAX_TOKEN_COUNT", 64)
    monkeypatch.setattr(json_stream, "MAX_TOKEN_SIZE", 1 << 20)
    fits = b'{"id":[' + b"1," * 28 + b"1]}"  # 4 + 57 + 2 = 63 tokens
    assert parse(fits) == [Message({"id": [1] * 29})]
    big = b'{"id":[' + b"1," * 40 + b"1]}"
    messages = parse(big + SENTINEL)
    assert messages[0].error == "JSON token count limit exceeded"
    assert messages[-1] == Message(SENTINEL_VALUE)


def test_token_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_stream, "MAX_TOKEN_COUNT", 64)
    monkeypatch.setattr(json_stream, "MAX_TOKEN_SIZE", 256)
    big = b'{"id":"' + b"x" * 300 + b'"}'
    messages = parse(big + SENTINEL)
    assert messages[0].error == "JSON token size limit exceeded"
    assert messages[-1] == Message(SENTINEL_VALUE)
