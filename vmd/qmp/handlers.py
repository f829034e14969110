"""Where the handler of each QMP command lives.

A command ``foo-bar`` is served by a function ``qmp_foo_bar`` in the module
of the subsystem it belongs to, as QEMU keeps ``qmp_block_commit`` beside
the block layer. This module lists those modules and binds every command in
the generated table to its function; a missing one is a start-up error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from vmd.qapi_runtime import CommandDef

HANDLER_MODULES = (
    "vmd.qmp.control",
    "vmd.qmp.yank",
    "vmd.system.commands",
    "vmd.hmp.commands",
    "vmd.chardev.commands",
    "vmd.block.commands",
    "vmd.block.threshold",
    "vmd.block.create",
    "vmd.block.nbd.commands",
    "vmd.block.jobs.commands",
    "vmd.job.commands",
)


def bind_handlers(commands: Mapping[str, CommandDef]
                  ) -> dict[str, Callable[..., Any]]:
    """Map each command's handler name to its implementation."""
    available: dict[str, Callable[..., Any]] = {}
    for module_name in HANDLER_MODULES:
        module = importlib.import_module(module_name)
        for attribute, value in vars(module).items():
            if attribute.startswith("qmp_") and callable(value):
                if attribute in available:
                    raise RuntimeError(f"{attribute} is defined twice")
                available[attribute] = value
    missing = [c.name for c in commands.values()
               if c.handler_name not in available]
    if missing:
        raise RuntimeError(f"commands without a handler: {missing}")
    return {c.handler_name: available[c.handler_name]
            for c in commands.values()}
