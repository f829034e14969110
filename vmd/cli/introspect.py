"""``query-command-line-options``: the QemuOpts lists vmd's parser uses.

QEMU answers from its registered QemuOptsLists; vmd answers from the
``OptsSpec`` tables its parser really parses with, so a tool learns of an
option or a parameter only once the parser takes it. A list that accepts
any key (``desc`` None, like QEMU's ``-device`` or ``-machine``) has no
parameters listed, as in QEMU.
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import CommandLineOptionInfo, CommandLineParameterInfo, CommandLineParameterType
from vmd.cli import chardev, parser, system_opts
from vmd.cli.qemu_opts import OptsSpec
from vmd.errors import QMPError

#: The option lists, by QemuOptsList name (``-m`` is QEMU's "memory").
OPTION_LISTS: tuple[OptsSpec, ...] = (
    parser.MACHINE_SPEC, parser.MEMORY_SPEC, parser.NAME_SPEC, parser.MON_SPEC,
    parser.ACCEL_SPEC, parser.DEVICE_SPEC, chardev.CHARDEV_SPEC, *system_opts.LISTED_SPECS,
)

_TYPES = {"string": CommandLineParameterType.STRING, "bool": CommandLineParameterType.BOOLEAN,
          "number": CommandLineParameterType.NUMBER, "size": CommandLineParameterType.SIZE}


def option_info(spec: OptsSpec) -> CommandLineOptionInfo:
    parameters = [CommandLineParameterInfo(name=name, type=_TYPES[kind])
                  for name, kind in (spec.desc or {}).items()]
    return CommandLineOptionInfo(option=spec.name, parameters=parameters)


def qmp_query_command_line_options(ctx: Any, option: str | None = None
                                   ) -> list[CommandLineOptionInfo]:
    result = [option_info(spec) for spec in OPTION_LISTS
              if option is None or spec.name == option]
    if not result:
        raise QMPError(f"invalid option name: {option}")
    return result
