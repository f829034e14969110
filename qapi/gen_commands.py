"""Generate ``commands.py``: one marshaller per command plus COMMANDS.

A marshaller validates the ``arguments`` object with the input visitors
from types.py, calls the handler, and converts the result for the wire:

* ``handler(ctx, **kwargs)`` with Python member names, absent optional
  arguments passed as None; ``handler(ctx, obj)`` for ``boxed: true``;
* returns ``rt.to_wire(result)``, or ``{}`` without 'returns';
* ``coroutine: true`` commands get an ``async def`` marshaller that
  awaits the handler.
"""

from __future__ import annotations

from .common import c_name, py_type
from .gen import QAPIGenPython
from .gen_types import members_func, q
from .schema import QAPISchema, QAPISchemaCommand

_IMPORTS = '''\
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmd import qapi_runtime as rt

from . import types as t

Handler = Callable[..., Any]
'''


def marshal_name(cmd: QAPISchemaCommand) -> str:
    """``marshal_<c_name>``, after QEMU's ``qmp_marshal_<c_name>``."""
    return f"marshal_{c_name(cmd.name)}"


def _call(cmd: QAPISchemaCommand) -> tuple[list[str], str]:
    """Argument-visiting lines and the handler call expression."""
    arg = cmd.arg_type
    if arg is None or (arg.is_empty() and not cmd.boxed):
        return ["    rt.no_args(arguments)\n"], "handler(ctx)"
    if cmd.boxed:
        visit = f"    obj = t.visit_{py_type(arg.name)}(arguments, None, '')\n"
        return [visit], "handler(ctx, obj)"
    visit = f"    kwargs = rt.args_dict(arguments, t.{members_func(arg)})\n"
    return [visit], "handler(ctx, **kwargs)"


def _marshaller(cmd: QAPISchemaCommand) -> str:
    """The marshal function for one command."""
    lines, call = _call(cmd)
    if cmd.coroutine:
        head, call = "async def", f"await {call}"
    else:
        head = "def"
    text = (f"{head} {marshal_name(cmd)}(\n"
            "        handler: Handler, ctx: Any, arguments: dict[str, Any],\n"
            ") -> Any:\n")
    text += "".join(lines)
    if cmd.ret_type is None:
        return text + f"    {call}\n    return {{}}\n"
    return text + f"    return rt.to_wire({call})\n"


def _command_def(cmd: QAPISchemaCommand) -> str:
    """The COMMANDS entry for one command."""
    features = "".join(f"{q(f)}, " for f in cmd.features).rstrip(" ")
    return (f"    {q(cmd.name)}: rt.CommandDef(\n"
            f"        name={q(cmd.name)},\n"
            f"        handler_name={q('qmp_' + c_name(cmd.name))},\n"
            f"        marshal={marshal_name(cmd)},\n"
            f"        allow_oob={cmd.allow_oob},\n"
            f"        allow_preconfig={cmd.allow_preconfig},\n"
            f"        coroutine={cmd.coroutine},\n"
            f"        features=({features}),\n"
            "    ),\n")


def gen_commands(schema: QAPISchema, schema_name: str) -> QAPIGenPython:
    """The commands module for ``schema``."""
    gen = QAPIGenPython("commands.py", schema_name,
                        "QMP command marshallers (see qapi/gen_commands.py).")
    commands = [e for e in schema.entities
                if isinstance(e, QAPISchemaCommand)]
    body = "".join("\n\n" + _marshaller(cmd) for cmd in commands)
    imports = _IMPORTS
    if "t." not in body:
        imports = imports.replace("\nfrom . import types as t\n", "")
    gen.add(imports + body)
    gen.add("\n\nCOMMANDS: dict[str, rt.CommandDef] = {\n")
    for cmd in commands:
        gen.add(_command_def(cmd))
    gen.add("}\n")
    return gen


