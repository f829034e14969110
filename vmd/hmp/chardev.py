"""HMP chardev commands: ``info chardev``, ``chardev-add``, ``chardev-remove``,
``ringbuf_write``, ``ringbuf_read`` (QEMU's hmp_* in chardev/char-hmp-cmds.c).

They go through the same registry and QMP handlers as their QMP twins and
report failures as QEMU's HMP does: ``Error: <message>``. ``chardev-add``
takes -chardev syntax; like QEMU's qemu_chr_new_from_opts() its failures
are not wrapped in ``Failed to add chardev 'ID':`` the way QMP's are.
"""

from __future__ import annotations

from typing import Any

from vmd.chardev.cli import backend_spec
from vmd.cli.chardev import CHARDEV_SPEC, chardev_from_opts
from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import parse_opts
from vmd.qmp.errors import QMPError


def info_chardev(ctx: Any, _args: list[Any]) -> str:
    return "".join(f"{chardev.id}: filename={chardev.filename()}\n"
                   for chardev in ctx.daemon.chardevs)


async def chardev_add(ctx: Any, args: list[Any]) -> str:
    try:
        opts = parse_opts(CHARDEV_SPEC, args[0])
    except OptionError as error:
        # qemu_opts_parse_noisily() reports, then the command fails.
        return f"{error.message}\nError: Parsing chardev args failed\n"
    registry = ctx.daemon.chardevs
    try:
        config = chardev_from_opts(opts)
        spec, mux = backend_spec(config)
        ids = [config.id] if mux is None else [f"{config.id}-base", config.id]
        for chardev_id in ids:
            if registry.get(chardev_id) is not None:
                return (f"Error: attempt to add duplicate property "
                        f"'{chardev_id}' to object (type 'container')\n")
        await registry.add(ids[0], spec)
        if mux is not None:
            await registry.add(config.id, mux)
    except OptionError as error:
        return f"Error: {error.message}\n"
    except QMPError as error:
        return f"Error: {_unwrapped(error.desc)}\n"
    return ""


def _unwrapped(desc: str) -> str:
    """Drop the registry's ``Failed to add chardev 'ID': `` prefix."""
    if desc.startswith("Failed to add chardev '"):
        _, _, reason = desc.partition("': ")
        return reason or desc
    return desc


async def chardev_remove(ctx: Any, args: list[Any]) -> str:
    try:
        await ctx.daemon.chardevs.remove(args[0])
    except QMPError as error:
        return f"Error: {error.desc}\n"
    return ""


def ringbuf_write(ctx: Any, args: list[Any]) -> str:
    from vmd.chardev.commands import qmp_ringbuf_write
    try:
        qmp_ringbuf_write(ctx, args[0], args[1], None)
    except QMPError as error:
        return f"Error: {error.desc}\n"
    return ""


def ringbuf_read(ctx: Any, args: list[Any]) -> str:
    """Print what was read up to the first NUL, escaping as QEMU does."""
    from vmd.chardev.commands import qmp_ringbuf_read
    try:
        data = qmp_ringbuf_read(ctx, args[0], args[1], None)
    except QMPError as error:
        return f"Error: {error.desc}\n"
    out: list[str] = []
    for char in data.partition("\0")[0]:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif (code < 0x20 and char not in "\n\t") or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    return "".join(out) + "\n"
