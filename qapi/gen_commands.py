"""Generate the commands modules: one marshaller per command, and COMMANDS.

A marshaller validates the ``arguments`` object with the input visitors
from types.py, calls the handler, and converts the result for the wire:

* ``handler(ctx, **kwargs)`` with Python member names, absent optional
  arguments passed as None; ``handler(ctx, obj)`` for ``boxed: true``;
  ``handler(ctx, arguments)``, the object unchecked, for a command with
  ``gen: false`` and arguments (QEMU hand-writes those marshallers:
  ``device_add`` takes whatever properties its driver has);
* returns ``rt.to_wire(result)``, or ``{}`` without 'returns';
* ``coroutine: true`` commands get an ``async def`` marshaller that
  awaits the handler.

The marshallers live in ``commands_<module>.py``, one per schema file (see
qapi/modules.py); ``commands.py`` holds only COMMANDS, whose entries name
the module, which the dispatcher loads when the command is first run.
"""

from __future__ import annotations

from .common import c_name, py_type
from .gen import QAPIGenPython
from .gen_types import members_func, q
from .modules import import_lines, imports_of, module_of, owners
from .schema import QAPISchema, QAPISchemaCommand

_IMPORTS = '''\
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmd import qapi_runtime as rt
'''

_TABLE_IMPORTS = '''\
from __future__ import annotations

from vmd import qapi_runtime as rt
'''


def marshal_name(cmd: QAPISchemaCommand) -> str:
    """``marshal_<c_name>``, after QEMU's ``qmp_marshal_<c_name>``."""
    return f"marshal_{c_name(cmd.name)}"


def _call(cmd: QAPISchemaCommand) -> tuple[list[str], str]:
    """Argument-visiting lines and the handler call expression."""
    arg = cmd.arg_type
    if arg is None or (arg.is_empty() and not cmd.boxed):
        return ["    rt.no_args(arguments)\n"], "handler(ctx)"
    if not cmd.gen:
        return [], "handler(ctx, arguments)"
    if cmd.boxed:
        visit = f"    obj = visit_{py_type(arg.name)}(arguments, None, '')\n"
        return [visit], "handler(ctx, obj)"
    visit = f"    kwargs = rt.args_dict(arguments, {members_func(arg)})\n"
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
            f"        module=_PACKAGE + {q('.commands_' + module_of(cmd))},\n"
            f"        marshal_name={q(marshal_name(cmd))},\n"
            f"        allow_oob={cmd.allow_oob},\n"
            f"        allow_preconfig={cmd.allow_preconfig},\n"
            f"        coroutine={cmd.coroutine},\n"
            f"        features=({features}),\n"
            "    ),\n")


def _module(module: str, body: str, types: dict[str, str],
            schema_name: str) -> QAPIGenPython:
    """``commands_<module>.py``: the marshallers of one schema module."""
    gen = QAPIGenPython(
        f"commands_{module}.py", schema_name,
        f"QMP command marshallers of schema module {module} "
        "(see qapi/gen_commands.py).")
    imports = import_lines(imports_of(body, None, types), "types_")
    gen.add(_IMPORTS + ("\n" + imports if imports else "")
            + "\nHandler = Callable[..., Any]\n" + body)
    return gen


def gen_commands(schema: QAPISchema, schema_name: str,
                 types: list[QAPIGenPython]) -> list[QAPIGenPython]:
    """COMMANDS in ``commands.py``, then one marshaller module per module.

    ``types`` are the generated types modules, where the marshallers find
    the visitors they call.
    """
    commands = [e for e in schema.entities
                if isinstance(e, QAPISchemaCommand)]
    bodies: dict[str, str] = {}
    for cmd in commands:
        module = module_of(cmd)
        bodies[module] = bodies.get(module, "") + "\n\n" + _marshaller(cmd)
    type_owner = owners({gen.fname[len("types_"):-len(".py")]: gen.text()
                         for gen in types if gen.fname != "types.py"})
    table = QAPIGenPython("commands.py", schema_name,
                          "The QMP commands (see qapi/gen_commands.py).")
    table.add(_TABLE_IMPORTS + "\n_PACKAGE = __package__ or \"\"\n")
    table.add("\nCOMMANDS: dict[str, rt.CommandDef] = {\n")
    for cmd in commands:
        table.add(_command_def(cmd))
    table.add("}\n")
    return [table] + [_module(module, bodies[module], type_owner, schema_name)
                      for module in sorted(bodies)]
