"""The HMP command table and interpreter.

Each command has QEMU's name, aliases, parameter text and help text, so
``help`` prints lines in QEMU's ``name|alias params -- help`` format, which
qmp-shell's ``-H`` mode parses for completion. Failures are part of the
output text, never QMP errors, exactly as in QEMU.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vmd._generated.types import ShutdownCause
from vmd.hmp import block, block_info, chardev, qemu_io
from vmd.hmp.args import ArgumentError, parse_arguments
from vmd.machine import commands as machine
from vmd.machine import hotplug
from vmd.qmp.errors import QMPError

#: A handler gets the context and the parsed arguments in order; it
#: returns its output, or an awaitable of it when it must wait (chardev-add).
Handler = Callable[[Any, list[Any]], "str | Awaitable[str]"]


@dataclass(frozen=True)
class HmpCommand:
    """One HMP command: ``name`` may hold ``|``-separated aliases."""

    name: str
    params: str
    help: str
    handler: Handler
    rest_of_line: bool = False  # QEMU's "S?": the rest of the line, if any
    sub_table: list[HmpCommand] | None = None
    #: QEMU's args_type letters, one per argument: "s" a word or quoted
    #: string, "i" a 32-bit integer (e.g. "si" for ``device size``).
    args: str = ""

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
    HmpCommand("block", "[-n] [-v] [device]",
               "show info of one block device or all block devices (-n: show named nodes; -v: show details)",
               block_info.info_block, rest_of_line=True),
    HmpCommand("block-jobs", "", "show progress of ongoing block device operations",
               block_info.info_block_jobs),
    HmpCommand("chardev", "", "show the character devices",
               chardev.info_chardev),
    HmpCommand("commands", "", "list the QMP commands vmd provides",
               _info_commands),
    HmpCommand("cpus", "", "show infos for each CPU", machine.info_cpus),
    HmpCommand("kvm", "", "show KVM information", machine.info_kvm),
    HmpCommand("mtree", "[-f][-d][-o][-D]",
               "show memory tree (-f: dump flat view for address spaces;-d: dump dispatch tree, "
               "valid with -f only);-o: dump region owners/parents;-D: dump disabled regions",
               machine.info_mtree, rest_of_line=True),
    HmpCommand("name", "", "show the current VM name", _info_name),
    HmpCommand("pci", "", "show PCI info", machine.info_pci),
    HmpCommand("qtree", "", "show device tree", machine.info_qtree),
    HmpCommand("registers", "[-a|vcpu]",
               "show the cpu registers (-a: show register info for all cpus; vcpu: specific vCPU to query; "
               "show the current CPU's registers if no argument is specified)",
               machine.info_registers, rest_of_line=True),
    HmpCommand("status", "", "show the current VM status (running|paused)",
               _info_status),
    HmpCommand("version", "", "show the version of QEMU", _info_version),
]


def _help(ctx: Any, args: list[str]) -> str:
    """``help [cmd...]``: QEMU's help_cmd_dump() over the words given."""
    return _help_dump(COMMANDS, args[0].split() if args else [], 0)


def _help_dump(table: list[HmpCommand], words: list[str], index: int
               ) -> str:
    prefix = "".join(f"{word} " for word in words[:index])
    if index >= len(words):
        return "".join(command.help_line(prefix) for command in table)
    command = _find(table, words[index])
    if command is None:
        shown = " ".join(words[:index + 1])  # later words are not shown
        return f"unknown command: '{shown}'\n"
    if command.sub_table is not None:
        return _help_dump(command.sub_table, words, index + 1)
    return command.help_line(prefix)


def _list_info() -> str:
    return "".join(command.help_line("info ") for command in INFO_COMMANDS)


def _info(ctx: Any, _args: list[str]) -> str:
    """``info`` without a subcommand lists the subcommands."""
    return _list_info()


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
    suspend = getattr(ctx, "suspend", None)
    if suspend is not None:
        suspend()  # a monitor shows no prompt after quit, as in QEMU
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
    HmpCommand("chardev-add", "args", "add chardev", chardev.chardev_add,
               args="s"),
    HmpCommand("chardev-remove", "id", "remove chardev",
               chardev.chardev_remove, args="s"),
    HmpCommand("commit", "device|all",
               "commit changes to the disk images (if -snapshot is used) or backing files",
               block.hmp_commit, args="s"),
    HmpCommand("cont|c", "", "resume emulation", _cont),
    HmpCommand("device_add", "driver[,prop=value][,...]",
               "add device, like -device on the command line", hotplug.hmp_device_add, rest_of_line=True),
    HmpCommand("device_del", "device", "remove device", hotplug.hmp_device_del, args="s"),
    HmpCommand("help|?", "[cmd]", "show the help", _help,
               rest_of_line=True),
    HmpCommand("i", "/fmt addr", "I/O port read", machine.hmp_ioport_read, rest_of_line=True),
    HmpCommand("info", "[subcommand]",
               "show various information about the system state", _info,
               sub_table=INFO_COMMANDS),
    HmpCommand("o", "/fmt addr value", "I/O port write", machine.hmp_ioport_write, rest_of_line=True),
    HmpCommand("qemu-io", "[-d] [device] \"[command]\"",
               "run a qemu-io command on a block device\n\t\t\t"
               "-d: [device] is a device ID rather than a drive ID or node name",
               qemu_io.hmp_qemu_io, rest_of_line=True),
    HmpCommand("quit|q", "", "quit the emulator", _quit),
    HmpCommand("ringbuf_read", "device size",
               "Read from a ring buffer character device",
               chardev.ringbuf_read, args="si"),
    HmpCommand("ringbuf_write", "device data",
               "Write to a ring buffer character device",
               chardev.ringbuf_write, args="ss"),
    HmpCommand("stop|s", "", "stop emulation", _stop),
    HmpCommand("system_powerdown", "", "send system power down event",
               _system_powerdown),
    HmpCommand("system_reset", "", "reset the system", _system_reset),
]


def _find(table: list[HmpCommand], name: str) -> HmpCommand | None:
    return next((command for command in table if name in command.names), None)


_SPACE = " \t\n\v\f\r"  # C isspace()


def _skip_space(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in _SPACE:
        pos += 1
    return pos


def _command_name(line: str, pos: int) -> tuple[str, int] | None:
    """The next command name and where it ends (get_command_name)."""
    pos = _skip_space(line, pos)
    if pos == len(line):
        return None
    start = pos
    while pos < len(line) and line[pos] != "/" and line[pos] not in _SPACE:
        pos += 1
    return line[start:pos], pos


def _run(ctx: Any, line: str) -> str | Awaitable[str]:
    """handle_hmp_command(): find the (sub)command, parse its arguments."""
    table, pos = COMMANDS, 0
    while True:
        parsed = _command_name(line, pos)
        if parsed is None:
            return ""
        name, end = parsed
        command = _find(table, name)
        if command is None:
            # QEMU quotes the line from its very start to the bad name.
            return f"unknown command: '{line[:end]}'\n"
        pos = _skip_space(line, end)
        if command.sub_table is None or pos == len(line):
            break
        table = command.sub_table
    typed = line[:pos].rstrip(_SPACE)
    rest = line[pos:]
    if command.rest_of_line:
        return command.handler(ctx, [rest] if rest else [])
    try:
        args = parse_arguments(command.name, command.args, rest)
    except ArgumentError as error:
        return f"{error}\nTry \"help {typed}\" for more information\n"
    return command.handler(ctx, args)


def command_names(table: list[HmpCommand] | None = None) -> list[str]:
    """Every name and alias of ``table`` (default: the top level)."""
    return [name for command in (table or COMMANDS) for name in command.names]


def sub_table(name: str) -> list[HmpCommand] | None:
    """The subcommands of command ``name`` (``info``), if it has any."""
    command = _find(COMMANDS, name)
    return None if command is None else command.sub_table


async def run_line(ctx: Any, line: str) -> str:
    """Run one HMP command line; return its output with CRLF line ends."""
    output = _run(ctx, line)
    if inspect.isawaitable(output):
        output = await output
    return output.replace("\n", "\r\n")


async def qmp_human_monitor_command(ctx: Any, command_line: str,
                                    cpu_index: int | None) -> str:
    """QMP's door into HMP (a coroutine: chardev-add waits for the backend).

    QEMU rejects any ``cpu-index`` that names no CPU. Without a guest vmd
    accepts index 0, the monitor's default CPU, so that qmp-shell's ``-H``
    mode (which always sends ``cpu-index: 0``) works against ``-M none``.
    """
    if cpu_index is not None and cpu_index != 0:
        raise QMPError("Parameter 'cpu-index' expects a CPU number")
    return await run_line(ctx, command_line)
