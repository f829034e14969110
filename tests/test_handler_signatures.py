"""Every QMP handler takes its arguments the way its marshaller passes them.

A handler with the wrong shape is found only when a client calls the
command (``nbd-server-add`` once failed with ``unhashable type``), so this
checks all of them against the schema at once: a ``boxed`` command's
handler takes ``(ctx, obj)``, as does one with ``gen: false`` and arguments
(``device_add``: the arguments object, unchecked); any other takes ``ctx`` and one keyword per
argument (all passed, absent optional ones as None), named as the generated
code names them.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from qapi.schema import QAPISchema, QAPISchemaCommand
from vmd._generated.commands import COMMANDS
from vmd.qmp.handlers import Handlers

SCHEMA = Path(__file__).resolve().parent.parent / "schema" / "qapi-schema.json"


def _schema_commands() -> list[QAPISchemaCommand]:
    schema = QAPISchema(str(SCHEMA))
    return [entity for entity in schema.entities if isinstance(entity, QAPISchemaCommand)]


COMMAND_DEFS = _schema_commands()
HANDLERS = Handlers(COMMANDS)


@pytest.mark.parametrize("command", COMMAND_DEFS, ids=lambda command: command.name)
def test_handler_takes_what_the_marshaller_passes(command: QAPISchemaCommand) -> None:
    handler = HANDLERS[COMMANDS[command.name].handler_name]
    parameters = list(inspect.signature(handler).parameters.values())
    assert parameters and parameters[0].name == "ctx", f"{command.name}: first parameter must be ctx"
    rest = parameters[1:]
    if command.boxed or (not command.gen and command.arg_type is not None):
        assert len(rest) == 1 and rest[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD), \
            f"{command.name}: its handler takes (ctx, obj)"
        return
    members = command.arg_type.members if command.arg_type is not None else []
    wanted = {member.name.replace("-", "_") for member in members}
    if any(parameter.kind == inspect.Parameter.VAR_KEYWORD for parameter in rest):
        return
    names = {parameter.name for parameter in rest}
    assert wanted <= names, f"{command.name}: handler lacks {sorted(wanted - names)}"
    # The generated code passes every member (an absent optional one as None).
    required = {parameter.name for parameter in rest if parameter.default is inspect.Parameter.empty}
    assert required <= wanted, f"{command.name}: handler requires {sorted(required - wanted)}"
