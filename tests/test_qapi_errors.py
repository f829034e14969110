"""Every kind of schema mistake is reported as ``file:line: problem``."""

from __future__ import annotations

from pathlib import Path

import pytest

from qapi.error import QAPIError
from qapi.schema import QAPISchema

PRAGMA = ("{ 'pragma': { 'command-returns-exceptions': [ 'ok-returns' ] } }"
          "\n")


def schema_error(tmp_path: Path, text: str, name: str = "s.json") -> str:
    """Compile ``text`` and return the error message it must produce."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(QAPIError) as exc:
        QAPISchema(str(path))
    return str(exc.value)


def check(tmp_path: Path, text: str, line: int, problem: str) -> None:
    """The error names this file, the line, and the problem."""
    msg = schema_error(tmp_path, text)
    assert msg.startswith(f"{tmp_path / 's.json'}:{line}:"), msg
    assert problem in msg, msg


def test_syntax_error(tmp_path: Path) -> None:
    check(tmp_path, "{ 'enum': 'Enu',\n  'data': [ 'a' 'b' ] }\n", 2,
          "expected ',' or ']'")


def test_unterminated_string(tmp_path: Path) -> None:
    check(tmp_path, "# comment\n{ 'enum': 'E, 'data': [] }\n{ }\n", 2,
          "stray")
    check(tmp_path, "{ 'enum': 'Enu', 'data': [ 'a ] }\n", 1,
          "missing terminating \"'\"")


def test_non_ascii_and_bad_escape(tmp_path: Path) -> None:
    check(tmp_path, "{ 'enum': 'Enu', 'data': [ 'caf\u00e9' ] }\n", 1,
          "funny character in string")
    check(tmp_path, "\n{ 'enum': 'Enu', 'data': [ 'a\\n' ] }\n", 2,
          "unknown escape \\n")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    check(tmp_path, "{ 'struct': 'Stru', 'data': {}, 'bogus': true }\n", 1,
          "struct 'Stru' has unknown key 'bogus'")


def test_missing_metatype(tmp_path: Path) -> None:
    check(tmp_path, "{ 'data': {} }\n", 1, "expression is missing metatype")


def test_enum_missing_data(tmp_path: Path) -> None:
    check(tmp_path, "\n\n{ 'enum': 'Enu' }\n", 3, "enum 'Enu' misses key 'data'")


@pytest.mark.parametrize("text, problem", [
    ("{ 'command': 'Bad' }", "name of command must not use uppercase"),
    ("{ 'command': 'bad_name' }",
     "name of command must not use uppercase or '_'"),
    ("{ 'event': 'lower' }", "name of event must not use lowercase"),
    ("{ 'struct': 'lower', 'data': {} }", "name of struct must use CamelCase"),
    ("{ 'struct': 'Stru', 'data': { 'has-x': 'int' } }",
     "'data' member 'has-x' uses reserved name"),
    ("{ 'struct': 'Stru', 'data': { 'u': 'int' } }",
     "'data' member 'u' uses reserved name"),
    ("{ 'struct': 'FooList', 'data': {} }", "should not end in 'List'"),
    ("{ 'command': 'q-x' }", "command has an invalid name"),
])
def test_bad_names(tmp_path: Path, text: str, problem: str) -> None:
    check(tmp_path, "# x\n" + text + "\n", 2, problem)


def test_command_name_exception(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{ 'pragma': { 'command-name-exceptions': [ 'a_b' ] } }"
                    "\n{ 'command': 'a_b' }\n")
    QAPISchema(str(path))


def test_duplicate_definition(tmp_path: Path) -> None:
    msg = schema_error(tmp_path, "{ 'enum': 'Enu', 'data': [] }\n"
                       "{ 'struct': 'Enu', 'data': {} }\n")
    assert msg.startswith(f"{tmp_path / 's.json'}:2:")
    assert f"'Enu' is already defined at {tmp_path / 's.json'}:1" in msg


def test_unknown_type(tmp_path: Path) -> None:
    check(tmp_path, "{ 'struct': 'Stru',\n  'data': { 'x': 'Nope' } }\n", 1,
          "member 'x' of struct 'Stru' uses unknown type 'Nope'")
    check(tmp_path, "{ 'command': 'c', 'returns': ['Nope'] }\n", 1,
          "uses unknown type 'Nope'")


def test_base_not_struct(tmp_path: Path) -> None:
    check(tmp_path, "{ 'enum': 'Enu', 'data': [ 'a' ] }\n"
          "{ 'struct': 'Stru', 'base': 'Enu', 'data': {} }\n", 2,
          "'base' of struct 'Stru' requires a struct type, enum 'Enu' isn't")


def test_struct_contains_itself(tmp_path: Path) -> None:
    check(tmp_path, "{ 'struct': 'Abc', 'base': 'Bcd', 'data': {} }\n"
          "{ 'struct': 'Bcd', 'base': 'Abc', 'data': {} }\n", 1,
          "contains itself")


UNION_BASE = ("{ 'enum': 'Kind', 'data': [ 'a', 'b' ] }\n"
              "{ 'struct': 'Abc', 'data': { 'x': 'int' } }\n")


def test_discriminator_not_enum_member_of_base(tmp_path: Path) -> None:
    check(tmp_path, UNION_BASE +
          "{ 'union': 'Uni', 'base': { 'kind': 'Kind' },\n"
          "  'discriminator': 'type', 'data': { 'a': 'Abc' } }\n", 3,
          "discriminator 'type' is not a member of 'base'")
    check(tmp_path, UNION_BASE +
          "{ 'union': 'Uni', 'base': { 'kind': 'str' },\n"
          "  'discriminator': 'kind', 'data': { 'a': 'Abc' } }\n", 3,
          "discriminator member 'kind' of union 'Uni' must be of enum type")
    check(tmp_path, UNION_BASE +
          "{ 'union': 'Uni', 'base': { 'kind': 'Kind' },\n"
          "  'discriminator': 'kind', 'data': { 'c': 'Abc' } }\n", 3,
          "'c' is not a value of the discriminator enum")


def test_union_branch_not_struct(tmp_path: Path) -> None:
    check(tmp_path, UNION_BASE +
          "{ 'union': 'Uni', 'base': { 'kind': 'Kind' },\n"
          "  'discriminator': 'kind', 'data': { 'a': 'Kind' } }\n", 3,
          "branch 'a' of union 'Uni' must be a struct type, enum 'Kind' isn't")


def test_union_branch_member_clash(tmp_path: Path) -> None:
    check(tmp_path, UNION_BASE +
          "{ 'union': 'Uni', 'base': { 'kind': 'Kind', 'x': 'str' },\n"
          "  'discriminator': 'kind', 'data': { 'a': 'Abc' } }\n", 3,
          "member 'x' of struct 'Abc' collides with member 'x'")


def test_alternate_clashing_branches(tmp_path: Path) -> None:
    check(tmp_path, "{ 'enum': 'Enu', 'data': [ 'a' ] }\n\n"
          "{ 'alternate': 'Alt', 'data': { 's': 'str', 'e': 'Enu' } }\n", 3,
          "branch 'e' of alternate 'Alt' can't be distinguished from branch"
          " 's'")
    check(tmp_path, "{ 'alternate': 'Alt',\n"
          "  'data': { 'i': 'int', 'n': 'number' } }\n", 1,
          "can't be distinguished")


def test_returns_not_object(tmp_path: Path) -> None:
    check(tmp_path, PRAGMA + "{ 'command': 'c', 'returns': 'str' }\n", 2,
          "command 'c''s 'returns' cannot take built-in 'str'")
    check(tmp_path, PRAGMA + "{ 'command': 'c', 'returns': ['int'] }\n", 2,
          "'returns' cannot take")
    path = tmp_path / "ok.json"
    path.write_text(PRAGMA + "{ 'command': 'ok-returns', 'returns': 'str' }\n")
    QAPISchema(str(path))


def test_include_missing_file(tmp_path: Path) -> None:
    check(tmp_path, "\n{ 'include': 'nope.json' }\n", 2,
          "can't read include file")


def test_include_loop_and_idempotence(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text(
        "{ 'include': 'b.json' }\n{ 'enum': 'Abc', 'data': [] }\n")
    (tmp_path / "sub" / "b.json").write_text("{ 'enum': 'Bcd', 'data': [] }\n")
    path = tmp_path / "top.json"
    path.write_text("{ 'include': 'sub/a.json' }\n"
                    "{ 'include': 'sub/b.json' }\n")
    names = [e.name for e in QAPISchema(str(path)).entities]
    assert names.index("Bcd") < names.index("Abc")
    (tmp_path / "sub" / "b.json").write_text("{ 'include': 'a.json' }\n")
    msg = schema_error(tmp_path, "{ 'include': 'sub/a.json' }\n", "t.json")
    assert msg.startswith(f"{tmp_path / 'sub' / 'b.json'}:1:")
    assert "inclusion loop for a.json" in msg


@pytest.mark.parametrize("cond, problem", [
    ("'lower'", "'if' condition 'lower' of struct 'Stru' is not a valid"),
    ("[]", "must be a string or an object"),
    ("{ 'all': [] }", "'if' condition [] of struct 'Stru' is useless"),
    ("{ 'xor': [ 'Abc' ] }", "has unknown key 'xor'"),
    ("{ 'all': [ 'Abc' ], 'any': [ 'Bcd' ] }", "must have exactly one key"),
    ("{ 'not': { 'any': 'Abc' } }", "'any' condition of struct 'Stru' must be an"),
])
def test_bad_if_condition(tmp_path: Path, cond: str, problem: str) -> None:
    check(tmp_path, "\n{ 'struct': 'Stru', 'data': {},\n  'if': " + cond
          + " }\n", 2, problem)


def test_duplicate_member(tmp_path: Path) -> None:
    check(tmp_path, "{ 'pragma': { 'member-name-exceptions': [ 'Stru' ] } }\n"
          "{ 'struct': 'Bcd', 'data': { 'a-b': 'int' } }\n"
          "{ 'struct': 'Stru', 'base': 'Bcd', 'data': { 'a_b': 'str' } }\n", 3,
          "member 'a_b' of struct 'Stru' collides with member 'a-b' of "
          "struct 'Bcd'")
    check(tmp_path, "{ 'struct': 'Stru',\n  'data': { 'a': 'int', 'a': 'str' }"
          " }\n", 2, "duplicate key 'a'")


@pytest.mark.parametrize("features, problem", [
    ("'feat'", "'features' must be an array"),
    ("[ 1 ]", "stray '1'"),
    ("[ [ 'a' ] ]", "'features' member must be a string or an object"),
    ("[ { 'nam': 'a' } ]", "'features' member misses key 'name'"),
    ("[ { 'name': 'a', 'when': 'X' } ]", "'features' member has unknown key"),
    ("[ 'Bad' ]", "name of 'features' member 'Bad' must not use uppercase"),
])
def test_bad_feature(tmp_path: Path, features: str, problem: str) -> None:
    check(tmp_path, "{ 'command': 'c',\n  'features': " + features + " }\n",
          2 if "stray" in problem else 1, problem)


def test_conditions_drop_entities(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        "{ 'struct': 'Stru', 'data': { 'a': 'int',\n"
        "  'b': { 'type': 'Gone', 'if': 'CONFIG_NOPE' },\n"
        "  'c': { 'type': 'int', 'if': { 'not': 'CONFIG_NOPE' } } } }\n"
        "{ 'struct': 'Gone', 'data': {}, 'if': { 'all': [ 'CONFIG_KVM',"
        " 'CONFIG_NOPE' ] } }\n")
    schema = QAPISchema(str(path))
    names = [e.name for e in schema.entities]
    assert "Gone" not in names
    struct = schema.lookup_type("Stru")
    assert [m.name for m in struct.members] == ["a", "c"]  # type: ignore


def test_flags(tmp_path: Path) -> None:
    check(tmp_path, "{ 'command': 'c', 'allow-oob': false }\n", 1,
          "flag 'allow-oob' may only use true value")
    check(tmp_path, "{ 'command': 'c', 'allow-oob': true,"
          " 'coroutine': true }\n", 1, "are incompatible")
