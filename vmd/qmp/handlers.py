"""Where the handler of each QMP command lives, loaded on first use.

A command ``foo-bar`` is served by a function ``qmp_foo_bar`` in the module
of the subsystem it belongs to, as QEMU keeps ``qmp_block_commit`` beside
the block layer. The table below lists those modules per schema module
(the generated ``COMMANDS`` says which schema module defines a command).
A handler module is imported when one of its commands first runs, so a
daemon answering ``query-status`` never loads the block layer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from vmd.qapi_runtime import CommandDef

HANDLER_MODULES: dict[str, tuple[str, ...]] = {
    "control": ("vmd.qmp.control", "vmd.system.commands"),
    "introspect": ("vmd.qmp.control",),
    "run_state": ("vmd.system.commands",),
    "misc": ("vmd.system.commands", "vmd.hmp.commands", "vmd.cli.introspect", "vmd.qom.user_objects"),
    "yank": ("vmd.qmp.yank",),
    "char": ("vmd.chardev.commands",),
    "job": ("vmd.job.commands",),
    "block_core": ("vmd.block.commands", "vmd.block.threshold", "vmd.block.bitmap_commands",
                   "vmd.block.create", "vmd.block.jobs.commands", "vmd.block.blockstats",
                   "vmd.block.io_limits"),
    "block_jobs": ("vmd.block.jobs.commands",),
    "transaction": ("vmd.block.transaction",),
    "block_export": ("vmd.block.nbd.commands",),
    "machine": ("vmd.system.accel", "vmd.qom.commands", "vmd.machine.commands"),
    "qom": ("vmd.qom.commands", "vmd.qom.user_objects"),
    "qdev": ("vmd.qom.commands", "vmd.machine.hotplug"),
    "machine_target": ("vmd.qom.commands",),
    "migration": ("vmd.migration.commands",),
    "pci": ("vmd.hw.pci.info",),
}


def schema_module(command: CommandDef) -> str:
    """The schema module (``block_core``) that defines ``command``."""
    return command.module.rpartition(".commands_")[2]


class Handlers(Mapping[str, Callable[..., Any]]):
    """Handler name -> function, importing handler modules as needed."""

    def __init__(self, commands: Mapping[str, CommandDef]) -> None:
        self._where = {c.handler_name: schema_module(c)
                       for c in commands.values()}
        self._bound: dict[str, Callable[..., Any]] = {}

    def __getitem__(self, handler_name: str) -> Callable[..., Any]:
        handler = self._bound.get(handler_name)
        if handler is None:
            handler = self._load(handler_name)
            self._bound[handler_name] = handler
        return handler

    def _load(self, handler_name: str) -> Callable[..., Any]:
        """Import the modules of the command's subsystem; find the handler.

        A schema command without a handler is a bug in vmd: the
        dispatcher reports it as an internal error (and a test binds every
        command, so it never ships).
        """
        module = self._where[handler_name]
        for module_name in HANDLER_MODULES.get(module, ()):
            handler = getattr(importlib.import_module(module_name),
                              handler_name, None)
            if callable(handler):
                return handler
        raise LookupError(f"no handler {handler_name} for schema module "
                          f"{module}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)
