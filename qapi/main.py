"""Command line: ``python -m qapi SCHEMA -o OUTPUT_DIR``."""

from __future__ import annotations

import argparse
import os
import sys

from .common import DEFAULT_ENABLED
from .error import QAPIError
from .gen import QAPIGenPython
from .gen_commands import gen_commands
from .gen_events import gen_events
from .gen_introspect import gen_introspect
from .gen_jsonschema import gen_jsonschema
from .gen_types import gen_types
from .schema import QAPISchema


def display_name(fname: str) -> str:
    """The schema path as shown in generated headers.

    Relative to the working directory (the project root, normally), so
    regenerating from there gives byte-identical output whatever path
    spelling was used.
    """
    return os.path.relpath(fname).replace(os.sep, "/")


def generate(fname: str, output_dir: str,
             enabled: frozenset[str] = DEFAULT_ENABLED) -> list[str]:
    """Check the schema and write all modules; returns the file names."""
    schema = QAPISchema(fname, enabled)
    name = display_name(fname)
    types = gen_types(schema, name)
    modules = [*types, *gen_commands(schema, name, types),
               gen_events(schema, name), gen_introspect(schema, name),
               gen_jsonschema(schema, name)]
    init = QAPIGenPython(
        "__init__.py", name,
        "Code generated from the QAPI schema by ``python -m qapi``.\n\n"
        "Modules: types (typed values and input visitors, loaded per schema\n"
        "module from types_<module>), commands (COMMANDS; the marshallers\n"
        "are in commands_<module>), events (senders and EVENTS),\n"
        "introspect (SCHEMA_INFO), jsonschema (per-command JSON Schema).\n")
    for module in [init] + modules:
        module.write(output_dir)
    return [m.fname for m in [init] + modules]


def main(argv: list[str] | None = None) -> int:
    """Entry point; schema errors go to stderr as ``file:line: msg``."""
    parser = argparse.ArgumentParser(
        prog="python -m qapi",
        description="Generate vmd's Python QAPI modules from a schema.")
    parser.add_argument("schema", help="top-level schema file")
    parser.add_argument("-o", "--output-dir", default=".",
                        help="directory for the generated modules")
    parser.add_argument(
        "-D", "--enable", action="append", metavar="FLAG",
        help="condition flag that is true (repeatable; default: "
        + ", ".join(sorted(DEFAULT_ENABLED)) + ")")
    args = parser.parse_args(argv)
    enabled = frozenset(args.enable) if args.enable else DEFAULT_ENABLED
    try:
        generate(args.schema, args.output_dir, enabled)
    except QAPIError as err:
        print(err, file=sys.stderr)
        return 1
    return 0
