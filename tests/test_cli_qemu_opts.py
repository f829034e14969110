"""QemuOpts syntax: escapes, implied keys, flags, booleans, sizes."""

import pytest

from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import (
    OptsSpec,
    parse_bool,
    parse_number,
    parse_opts,
    parse_size,
    split_params,
)

ANY = OptsSpec("test", implied_key="backend")
TYPED = OptsSpec("test", implied_key="guest",
                 desc={"guest": "string", "flag": "bool", "n": "number", "sz": "size"})


def test_pairs_in_order():
    assert split_params("a=1,b=2,a=3") == [("a", "1"), ("b", "2"), ("a", "3")]


def test_double_comma_escapes_in_values():
    assert split_params("path=/a,,b,x=y") == [("path", "/a,b"), ("x", "y")]


def test_keys_end_at_first_comma_like_qemu_7_2():
    # QEMU 7.2 does not unescape ",," in keys: 'a' becomes a flag.
    assert split_params("a,,b=c")[0] == ("a", "on")


def test_implied_key_only_for_first_element():
    assert split_params("socket,id=x", "backend") == [("backend", "socket"), ("id", "x")]
    assert split_params("backend=file,id=x", "backend") == [("backend", "file"), ("id", "x")]


def test_implied_value_may_hold_escaped_comma():
    assert split_params("my,,vm,debug-threads=on", "guest")[0] == ("guest", "my,vm")


def test_short_form_flags_warn():
    warnings: list[str] = []
    assert split_params("server,nowait", None, warnings) == [("server", "on"), ("wait", "off")]
    assert warnings == [
        "short-form boolean option 'server' deprecated\nPlease use server=on instead",
        "short-form boolean option 'nowait' deprecated\nPlease use wait=off instead",
    ]


def test_trailing_comma_ignored():
    assert split_params("a=1,") == [("a", "1")]


def test_id_first_one_wins_and_is_removed():
    opts = parse_opts(ANY, "null,id=x,id=y,foo=1")
    assert opts.id == "x"
    assert opts.to_dict() == {"backend": "null", "foo": "1"}


def test_last_value_wins():
    assert parse_opts(ANY, "a=1,a=2").get("a") == "2"


@pytest.mark.parametrize("bad", ["1x", "x,,y", "", "-a"])
def test_bad_id(bad):
    with pytest.raises(OptionError, match="Parameter 'id' expects an identifier"):
        parse_opts(ANY, f"null,id={bad}")


def test_unknown_key_rejected_when_described():
    with pytest.raises(OptionError, match="^Invalid parameter 'bar'$"):
        parse_opts(TYPED, "vm,bar=1")


def test_empty_key():
    with pytest.raises(OptionError, match="^Invalid parameter ''$"):
        parse_opts(TYPED, "vm,=3")


@pytest.mark.parametrize("word", ["on", "yes", "true", "y"])
def test_true_words(word):
    assert parse_bool("server", word) is True


@pytest.mark.parametrize("word", ["off", "no", "false", "n"])
def test_false_words(word):
    assert parse_bool("server", word) is False


@pytest.mark.parametrize("word", ["ON", "On", "1", "0", "", "maybe"])
def test_bad_bool(word):
    with pytest.raises(OptionError, match="^Parameter 'server' expects 'on' or 'off'$"):
        parse_bool("server", word)


def test_typed_bool_checked_while_parsing():
    with pytest.raises(OptionError, match="Parameter 'flag' expects 'on' or 'off'"):
        parse_opts(TYPED, "vm,flag=maybe")


@pytest.mark.parametrize(("text", "value"), [("42", 42), ("0x10", 16), ("010", 8), ("0", 0)])
def test_numbers(text, value):
    assert parse_number("n", text) == value


def test_bad_number():
    with pytest.raises(OptionError, match="^Parameter 'n' expects a number$"):
        parse_opts(TYPED, "vm,n=abc")
    with pytest.raises(OptionError, match="too large for parameter 'n'"):
        parse_number("n", str(1 << 64))


@pytest.mark.parametrize(("text", "value"), [
    ("512", 512), ("1k", 1024), ("1K", 1024), ("1M", 1 << 20), ("1g", 1 << 30),
    ("2T", 2 << 40), ("1P", 1 << 50), ("1E", 1 << 60), ("1b", 1), ("1.5G", 3 << 29),
    ("1.G", 1 << 30), ("1.5k", 1536), (" 1G", 1 << 30), ("+1G", 1 << 30),
    ("0x100", 256), ("18446744073709551615b", (1 << 64) - 1),
])
def test_sizes(text, value):
    assert parse_size("size", text) == value


@pytest.mark.parametrize("text", ["foo", "1Q", "-1", "1.5", "1GB", "1G ", ".5G", "1e3", ""])
def test_bad_sizes(text):
    with pytest.raises(OptionError) as info:
        parse_size("size", text)
    assert info.value.message == "Parameter 'size' expects a non-negative number below 2^64"
    assert info.value.hint.startswith("Optional suffix k, M, G, T, P or E")


def test_size_out_of_range():
    with pytest.raises(OptionError, match="^Value '16E' is out of range for parameter 'size'$"):
        parse_size("size", "16E")
