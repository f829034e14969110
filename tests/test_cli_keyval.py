"""keyval syntax for -blockdev: dotted keys, lists, JSON, errors."""

import pytest

from vmd.cli.errors import OptionError
from vmd.cli.keyval import keyval_parse, parse_keyval_or_json


def test_dotted_keys_nest():
    tree = keyval_parse("driver=qcow2,node-name=disk,file.driver=file,"
                        "file.filename=/tmp/a.qcow2")
    assert tree == {"driver": "qcow2", "node-name": "disk",
                    "file": {"driver": "file", "filename": "/tmp/a.qcow2"}}


def test_values_stay_strings():
    assert keyval_parse("read-only=on,cache.direct=true,size=512") == {
        "read-only": "on", "cache": {"direct": "true"}, "size": "512"}


def test_implied_key():
    assert keyval_parse("qcow2,node-name=d", "driver") == {"driver": "qcow2", "node-name": "d"}
    assert keyval_parse("driver=raw", "driver") == {"driver": "raw"}


def test_comma_escape():
    assert keyval_parse("filename=/a,,b,x=1") == {"filename": "/a,b", "x": "1"}


def test_lists():
    assert keyval_parse("a.1=y,a.0=x") == {"a": ["x", "y"]}
    assert keyval_parse("s.0.host=h,s.0.port=1") == {"s": [{"host": "h", "port": "1"}]}


def test_last_value_wins():
    assert keyval_parse("a=1,a=2") == {"a": "2"}


def test_downstream_name():
    assert keyval_parse("__com.redhat_x=1") == {"__com.redhat_x": "1"}


@pytest.mark.parametrize(("text", "message"), [
    (",driver=x", "Invalid parameter ''"),
    ("driver=qcow2,x", "Expected '=' after parameter 'x'"),
    ("a..b=1", "Invalid parameter 'a..b'"),
    ("1a=1", "Invalid parameter '1a'"),
    ("driver=qcow2,file.driver=file,file=x", "Parameters 'file.*' used inconsistently"),
    ("file=x,file.driver=file", "Parameters 'file.*' used inconsistently"),
    ("a.b.c=1,a.b=2", "Parameters 'a.b.*' used inconsistently"),
    ("a.0=x,a.b=y", "Parameters 'a.*' used inconsistently"),
    ("a.1=x", "Parameter 'a.0' missing"),
    ("x" * 128 + "=1", f"Parameter '{'x' * 128}' is too long"),
    ("a." + "x" * 128 + "=1", f"Parameter fragment '{'x' * 128}' is too long"),
])
def test_errors(text, message):
    with pytest.raises(OptionError) as info:
        keyval_parse(text, "driver" if text.startswith(",") else None)
    assert info.value.message == message


def test_json_object():
    tree, from_json = parse_keyval_or_json('{"driver": "null-co", "size": 512, "x": {"y": true}}')
    assert from_json
    assert tree == {"driver": "null-co", "size": 512, "x": {"y": True}}


def test_keyval_is_flagged_as_keyval():
    assert parse_keyval_or_json("null-co", "driver") == ({"driver": "null-co"}, False)


@pytest.mark.parametrize(("text", "start"), [
    ("{bad", "JSON parse error, "),
    ('{"a": 1}junk', "Expecting at most one JSON value"),
])
def test_json_errors(text, start):
    with pytest.raises(OptionError) as info:
        parse_keyval_or_json(text)
    assert info.value.message.startswith(start)
