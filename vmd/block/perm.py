"""Block permissions and child roles, as QEMU 7.2 (include/block/block-common.h).

Every edge of the graph carries the permissions its parent holds on the
child (``perm``) and those it lets other parents of that child hold
(``shared``). A node's *cumulative* permissions are the union of its parent
edges' ``perm`` and the intersection of their ``shared``; a driver derives
from them what it needs from each of its children, by the child's role
(QEMU's bdrv_default_perms and its three cases below). A node nobody uses
therefore holds nothing beyond what its format needs for its own metadata.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the generated types are imported when a query needs them
    from vmd._generated.types import BlockPermission


class Perm(enum.IntFlag):
    """BLK_PERM_*: what a parent does to its child."""

    CONSISTENT_READ = 0x01
    WRITE = 0x02
    WRITE_UNCHANGED = 0x04
    RESIZE = 0x08


NONE = Perm(0)
ALL = Perm(0x0F)

#: The words of QEMU's error texts (bdrv_perm_names), in bit order.
_TEXT_NAMES = {
    Perm.CONSISTENT_READ: "consistent read",
    Perm.WRITE: "write",
    Perm.WRITE_UNCHANGED: "write unchanged",
    Perm.RESIZE: "resize",
}


def perm_text(perm: Perm) -> str:
    """``consistent read, write`` (QEMU's bdrv_perm_names)."""
    return ", ".join(name for bit, name in _TEXT_NAMES.items() if perm & bit)


def perm_qapi(perm: Perm) -> list[BlockPermission]:
    """The QAPI list of ``x-debug-query-block-graph``: highest bit first, as
    QEMU builds it by prepending."""
    from vmd._generated.types import BlockPermission
    return [BlockPermission(name.replace(" ", "-")) for bit, name in reversed(_TEXT_NAMES.items()) if perm & bit]


class Role(enum.IntFlag):
    """BdrvChildRole: what a child is to its parent."""

    DATA = 0x01       # guest data lives here
    METADATA = 0x02   # the format's metadata lives here
    FILTERED = 0x04   # a filter's one child, passed through
    COW = 0x08        # the backing file read for unallocated ranges
    PRIMARY = 0x10    # the parent's main child (bs->file)


#: A format's file holding both data and metadata (qcow2 without data-file).
IMAGE = Role.DATA | Role.METADATA | Role.PRIMARY
#: The root edge of a user (export, job, device) has no role.
NO_ROLE = Role(0)


def default_perms(writable: bool, role: Role, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
    """What a parent with cumulative ``perm``/``shared`` needs from a child.

    ``writable`` is whether the parent node itself is opened read-write.
    """
    if role & Role.FILTERED:
        return perm, shared
    if role & Role.COW:
        return _cow_perms(perm, shared)
    return _storage_perms(writable, role, perm, shared)


def _cow_perms(perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
    """A backing child is only read, and only if the parent reads."""
    nshared = Perm.WRITE | Perm.RESIZE if shared & Perm.WRITE else NONE
    return perm & Perm.CONSISTENT_READ, nshared | Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED


def _storage_perms(writable: bool, role: Role, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
    """A format's file: metadata needs consistency and, if writable, writes."""
    if role & Role.METADATA:
        if writable:
            perm |= Perm.WRITE | Perm.RESIZE
        perm |= Perm.CONSISTENT_READ
        shared &= ~(Perm.WRITE | Perm.RESIZE)
    if role & Role.DATA:
        shared &= ~Perm.RESIZE
        if perm & Perm.WRITE_UNCHANGED:
            perm |= Perm.WRITE
        if perm & Perm.WRITE:
            perm |= Perm.RESIZE
    return perm, shared
