"""Generated code split by schema module, so a daemon loads what it uses.

QEMU generates ``qapi-types-block-core.c`` and friends per schema file; vmd
does the same for start-up time: a daemon that only answers
``query-status`` never imports the block layer's types or marshallers.
Each schema file becomes one Python module per generator
(``types_block_core.py``, ``commands_block_core.py``). The names one module
takes from another are imported explicitly; they are found by looking for
the top-level names of the other modules in the generated text, so the
generators need not track their references.
"""

from __future__ import annotations

import os
import re

from .common import c_name
from .schema import QAPISchemaArrayType, QAPISchemaEntity

BUILTIN_MODULE = "builtin"

_TOP_LEVEL = re.compile(r"^(?:class|def|async def) (\w+)|^(\w+)(?::| =)", re.M)
_WORD = re.compile(r"[A-Za-z_]\w*")


def module_of(ent: QAPISchemaEntity) -> str:
    """Python name of the schema module defining ``ent``.

    An array lives with its element type, so every user of ``FooList``
    imports it from the same place; built-ins and arrays of them form the
    ``builtin`` module.
    """
    if isinstance(ent, QAPISchemaArrayType):
        return module_of(ent.element())
    if ent.info is None:
        return BUILTIN_MODULE
    return c_name(os.path.splitext(os.path.basename(ent.info.fname))[0])


def top_level_names(text: str) -> list[str]:
    """Classes, functions and variables a generated body defines."""
    return [m.group(1) or m.group(2) for m in _TOP_LEVEL.finditer(text)]


def owners(bodies: dict[str, str]) -> dict[str, str]:
    """Which module defines each top-level name of ``bodies``."""
    return {name: module for module, text in bodies.items()
            for name in top_level_names(text)}


def imports_of(text: str, module: str | None,
               owner: dict[str, str]) -> dict[str, list[str]]:
    """{other module: names ``text`` uses from it}, both sorted."""
    used: dict[str, list[str]] = {}
    for word in sorted(set(_WORD.findall(text))):
        other = owner.get(word)
        if other is not None and other != module:
            used.setdefault(other, []).append(word)
    return dict(sorted(used.items()))


def _isort_key(name: str) -> tuple[int, str]:
    """isort's order by type: CONSTANTS, Classes, then functions."""
    if name.isupper() and len(name) > 1:
        return 0, name.lower()
    return (1 if name[:1].isupper() else 2), name.lower()


def import_lines(imports: dict[str, list[str]], prefix: str) -> str:
    """``from .PREFIXmodule import (names)`` statements, sorted as ruff does."""
    out = []
    for module, names in imports.items():
        rows = "".join(f"    {name},\n" for name in sorted(names, key=_isort_key))
        out.append(f"from .{prefix}{module} import (\n{rows})\n")
    return "".join(out)


def check_acyclic(graph: dict[str, dict[str, list[str]]]) -> None:
    """Modules that import each other could not be loaded one by one."""
    state: dict[str, str] = {}

    def visit(module: str, chain: list[str]) -> None:
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            cycle = " -> ".join(chain[chain.index(module):] + [module])
            raise ValueError(f"schema modules refer to each other: {cycle}")
        state[module] = "open"
        for other in graph.get(module, {}):
            visit(other, chain + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])
