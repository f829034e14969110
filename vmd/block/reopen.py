"""Changing options of an open node (QEMU's bdrv_reopen), as far as vmd can.

Options are flat keys, ``backing.detect-zeroes`` addressing the child
edge ``backing`` (``file.``, ``image.``... likewise), as qemu-io's
``reopen -o`` passes them. vmd changes ``read-only`` (with the children
that inherit it, then the permissions) and ``detect-zeroes``; any other
option is refused with QEMU's text for an option a driver cannot change.
Everything is checked before anything changes.
"""

from __future__ import annotations

from vmd.block.edge import Transaction, refresh_perms
from vmd.block.node import BlockNode
from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import parse_bool
from vmd.errors import QMPError

_DETECT_ZEROES = ("off", "on", "unmap")


class ReopenError(Exception):
    """The reopen was refused; nothing changed. The text is QEMU's."""


async def reopen(top: BlockNode, options: dict[str, str]) -> None:
    """Apply ``options`` to ``top`` and the children they name."""
    changes: list[tuple[BlockNode, str, str]] = []
    for key, value in options.items():
        *path, leaf = key.split(".")
        node: BlockNode | None = top
        for name in path:
            node = node.child(name) if node is not None else None
        if node is None:
            raise ReopenError(f"Cannot change the option '{key}'")
        changes.append((node, leaf, _checked(node, key, leaf, value)))
    for node, leaf, value in changes:
        if leaf == "detect-zeroes":
            node.detect_zeroes = value
        elif leaf == "read-only":
            await _set_read_only(node, value == "on")


def _checked(node: BlockNode, key: str, leaf: str, value: str) -> str:
    if leaf == "detect-zeroes":
        if value not in _DETECT_ZEROES:
            raise ReopenError(f"Parameter '{key}' does not accept value '{value}'")
        return value
    if leaf == "read-only":
        try:
            return "on" if parse_bool(key, value) else "off"
        except OptionError as error:
            raise ReopenError(error.message) from None
    raise ReopenError(f"Cannot change the option '{key}'")


async def _set_read_only(node: BlockNode, read_only: bool) -> None:
    if read_only == node.read_only:
        return
    try:
        if read_only:
            await node.reopen_read_only()
        else:
            await node.reopen_read_write()
        with Transaction() as tran:
            refresh_perms([node], tran)
    except QMPError as error:
        raise ReopenError(error.desc) from None
