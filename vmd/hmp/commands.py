"""The HMP command table and interpreter.

Each command has QEMU's name, aliases, parameter text and help text, so
``help`` prints lines in QEMU's ``name|alias params -- help`` format, which
qmp-shell's ``-H`` mode parses for completion. Failures are part of the
output text, never QMP errors, exactly as in QEMU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmd._generated.types import ShutdownCause
from vmd.qmp.errors import QMPError

Handler = Callable[[Any, list[str]], str]


@dataclass(frozen=True)
class HmpCommand:
    """One HMP command: ``name`` may hold ``|``-separated aliases."""

    name: str
    params: str
    help: str
    handler: Handler
    max_args: int = 0

    @property
    def names(self) -> list[str]:
        return self.name.split("|")

    def help_line(self, prefix: str = "") -> str:
        return f"{prefix}{self.name} {self.params} -- {self.help}\n"


def _info_version(ctx: Any, _args: list[str]) -> str:
    version = ctx.daemon.version_info()
    triple = version["qemu"]
    return (f"{triple['major']}.{triple['minor']}.{triple['micro']}"
            f"{version['package']}\n")


def _info_status(ctx: Any, _args: list[str]) -> str:
    return ctx.daemon.runstate.describe() + "\n"


def _info_name(ctx: Any, _args: list[str]) -> str:
    name = ctx.daemon.name
    return f"{name}\n" if name else ""


def _info_commands(ctx: Any, _args: list[str]) -> str:
    return "".join(f"{name}\n" for name in ctx.daemon.dispatcher.commands)


INFO_COMMANDS = [
    HmpCommand("commands", "", "list the QMP commands vmd provides",
               _info_commands),
    HmpCommand("name", "", "show the current VM name", _info_name),
    HmpCommand("status", "", "show the current VM status (running|paused)",
               _info_status),
    HmpCommand("version", "", "show the version of QEMU", _info_version),
]


def _help(ctx: Any, args: list[str]) -> str:
    if not args:
        return "".join(command.help_line() for command in COMMANDS)
    if args[0] == "info":
        return _list_info()
    command = _find(COMMANDS, args[0])
    if command is None:
        return f"unknown command: '{args[0]}'\n"
    return command.help_line()


def _list_info() -> str:
    return "".join(command.help_line("info ") for command in INFO_COMMANDS)


def _info(ctx: Any, args: list[str]) -> str:
    if not args:
        return _list_info()
    command = _find(INFO_COMMANDS, args[0])
    if command is None:
        return f"unknown command: 'info {args[0]}'\n"
    if len(args) - 1 > command.max_args:
        return (f"{args[0]}: extraneous characters at the end of line\n"
                f"Try \"help info {args[0]}\" for more information\n")
    return command.handler(ctx, args[1:])


def _stop(ctx: Any, _args: list[str]) -> str:
    ctx.daemon.runstate.stop()
    return ""


def _cont(ctx: Any, _args: list[str]) -> str:
    try:
        ctx.daemon.runstate.cont()
    except QMPError as error:
        return f"Error: {error.desc}\n"
    return ""


def _quit(ctx: Any, _args: list[str]) -> str:
    ctx.daemon.request_shutdown(ShutdownCause.HOST_QMP_QUIT)
    return ""


def _system_reset(ctx: Any, _args: list[str]) -> str:
    from vmd.system.commands import qmp_system_reset
    qmp_system_reset(ctx)
    return ""


def _system_powerdown(ctx: Any, _args: list[str]) -> str:
    from vmd.system.commands import qmp_system_powerdown
    qmp_system_powerdown(ctx)
    return ""


COMMANDS = [
    HmpCommand("cont|c", "", "resume emulation", _cont),
    HmpCommand("help|?", "[cmd]", "show the help", _help, max_args=1),
    HmpCommand("info", "[subcommand]",
               "show various information about the system state", _info,
               max_args=8),
    HmpCommand("q|quit", "", "quit the emulator", _quit),
    HmpCommand("stop|s", "", "stop emulation", _stop),
    HmpCommand("system_powerdown", "", "send system power down event",
               _system_powerdown),
    HmpCommand("system_reset", "", "reset the system", _system_reset),
]


def _find(table: list[HmpCommand], name: str) -> HmpCommand | None:
    return next((command for command in table if name in command.names), None)


def run_line(ctx: Any, line: str) -> str:
    """Run one HMP command line; return its output with CRLF line ends."""
    words = line.split()
    if not words:
        return ""
    command = _find(COMMANDS, words[0])
    if command is None:
        output = f"unknown command: '{words[0]}'\n"
    elif len(words) - 1 > command.max_args:
        output = (f"{words[0]}: extraneous characters at the end of line\n"
                  f"Try \"help {words[0]}\" for more information\n")
    else:
        output = command.handler(ctx, words[1:])
    return output.replace("\n", "\r\n")


def qmp_human_monitor_command(ctx: Any, command_line: str,
                              cpu_index: int | None) -> str:
    """QMP's door into HMP.

    QEMU rejects any ``cpu-index`` that names no CPU. Without a guest vmd
    accepts index 0, the monitor's default CPU, so that qmp-shell's ``-H``
    mode (which always sends ``cpu-index: 0``) works against ``-M none``.
    """
    if cpu_index is not None and cpu_index != 0:
        raise QMPError("Parameter 'cpu-index' expects a CPU number")
    return run_line(ctx, command_line)
