"""Unit tests of QMP output encoding: QEMU's compact style and escaping."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vmd.qmp.json_stream import JSONStreamParser, Message
from vmd.qmp.json_writer import dumps, encode_message


def test_compact_style_with_spaces() -> None:
    assert dumps({"return": {}}) == '{"return": {}}'
    assert dumps({"a": [1, 2], "b": None, "c": True}) == '{"a": [1, 2], "b": null, "c": true}'
    assert dumps([]) == "[]"


def test_member_order_is_insertion_order() -> None:
    assert dumps({"z": 1, "a": 2}) == '{"z": 1, "a": 2}'


@pytest.mark.parametrize("value,text", [
    ("\u00e9", '"\\u00E9"'),
    ("\U0001f600", '"\\uD83D\\uDE00"'),
    ("\uabcd\uffff", '"\\uABCD\\uFFFF"'),
    ("\x7f", '"\\u007F"'),
    ("a\x7fb\x7f", '"a\\u007Fb\\u007F"'),
    ("\x00", '"\\u0000"'),
    ("\x1f\x0b", '"\\u001F\\u000B"'),
    ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
    ('"\\', '"\\"\\\\"'),
    ("/", '"/"'),
    # A backslash followed by text that looks like an escape stays as is.
    ("\\u00ab", '"\\\\u00ab"'),
    ("\\\u00e9", '"\\\\\\u00E9"'),
    ("\\\\u00ab", '"\\\\\\\\u00ab"'),
])
def test_string_escaping(value: str, text: str) -> None:
    assert dumps(value) == text
    assert json.loads(text) == value


def test_escaping_in_keys_too() -> None:
    assert dumps({"\u00e9\x7f": "x"}) == '{"\\u00E9\\u007F": "x"}'


def test_numbers() -> None:
    assert dumps([18446744073709551615, -9223372036854775808, 0, -1]) == (
        "[18446744073709551615, -9223372036854775808, 0, -1]")
    for number in [0.1, 1.5, -0.0, 1e300, 5e-324, 123456789012345678901234567890.0]:
        assert json.loads(dumps(number)) == number


@pytest.mark.parametrize("value,text", [
    (float("inf"), "null"),
    (float("-inf"), "null"),
    (float("nan"), "null"),
    ([1.5, float("inf")], "[1.5, null]"),
    ({"a": {"b": [float("nan")]}, "c": 2}, '{"a": {"b": [null]}, "c": 2}'),
])
def test_non_finite_floats_become_null(value: Any, text: str) -> None:
    assert dumps(value) == text


def test_encode_message_is_one_ascii_line_with_crlf() -> None:
    encoded = encode_message({"return": "line 1\r\nline 2\r\n\u00e9", "id": 1})
    assert encoded == b'{"return": "line 1\\r\\nline 2\\r\\n\\u00E9", "id": 1}\r\n'
    assert encoded.count(b"\n") == 1 and encoded.endswith(b"\r\n")
    assert encoded.isascii()


def test_encode_event_message() -> None:
    event = {"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}
    assert encode_message(event) == (
        b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n')


@pytest.mark.parametrize("value", [
    {"id": "".join(chr(c) for c in range(0x00, 0x100))},
    {"id": "\U0001f600\U0010fffd\u0800\ud7ff\ue000"},
    {"id": [1, -2, 2.5, None, True, False, {"k": []}]},
    {"id": 18446744073709551615},
])
def test_round_trip_through_the_parser(value: Any) -> None:
    """What vmd writes, its own (QEMU-compatible) parser reads back."""
    assert JSONStreamParser().feed(encode_message(value)) == [Message(value)]
