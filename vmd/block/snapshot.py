"""External snapshots: ``blockdev-snapshot`` and ``blockdev-snapshot-sync``
as transaction actions (QEMU's external_snapshot_* in blockdev.c).

``prepare`` finds the node (the old top), drains it, opens the overlay
(``blockdev-snapshot``: an existing node opened without backing; ``-sync``:
a qcow2 file created, unless ``mode: existing``, with the old top's file
name as its backing file) and appends it: the overlay's backing edge goes
to the old top and every parent and user of the old top moves onto the
overlay. ``commit`` makes the old top read-only; ``abort`` takes the
overlay out again; ``clean`` ends the drained section and closes an
overlay ``-sync`` opened that nobody holds (an aborted one, or, as in
QEMU, one put over a node that had no users: it silently goes away).
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import (
    BlockdevSnapshot,
    BlockdevSnapshotSync,
    NewImageMode,
    TransactionActionKind,
    visit_BlockdevOptions,
)
from vmd.block.create import create_image
from vmd.block.edge import Transaction, add_edge, cumulative_perms, detach, drained, refresh_perms, replace_node
from vmd.block.graph import BlockGraph, check_not_backing
from vmd.block.node import BlockNode
from vmd.block.perm import Perm, Role
from vmd.block.transaction import Action, action
from vmd.errors import QMPError


def check_overlay(overlay: BlockNode) -> None:
    """What QEMU's external_snapshot_prepare asks of a new overlay: nobody
    reads it yet (a write-only user such as a mirror target may)."""
    if cumulative_perms(overlay)[0] & Perm.CONSISTENT_READ:
        raise QMPError("The overlay is already in use")
    if overlay.is_filter:
        raise QMPError("Filters cannot be used as overlays")
    if overlay.backing is not None:
        raise QMPError("The overlay already has a backing image")
    if not overlay.supports_backing:
        raise QMPError("The overlay does not support backing images")


class ExternalSnapshot(Action):
    """The steps both snapshot actions share; subclasses open the overlay."""

    def __init__(self, txn: Any, data: Any) -> None:
        super().__init__(txn, data)
        self.old: BlockNode | None = None
        self.new: BlockNode | None = None
        #: The overlay was opened here (``-sync``), not named by the user.
        self.opened = False
        self.appended = False

    @property
    def graph(self) -> BlockGraph:
        graph: BlockGraph = self.daemon.block
        return graph

    def old_top(self) -> BlockNode:
        raise NotImplementedError

    async def open_overlay(self, old: BlockNode) -> BlockNode:
        raise NotImplementedError

    async def prepare(self) -> None:
        self.check_completion_mode()
        old = self.old = self.old_top()
        await self.drain(old)
        check_not_backing(old)
        if not old.read_only:
            try:
                await old.flush()
            except Exception:
                raise QMPError("An IO error has occurred") from None
        new = self.new = await self.open_overlay(old)
        check_overlay(new)
        # The overlay's header keeps its backing file name (QEMU's
        # bs->backing_file); a different node makes its name json:.
        async with drained(old, new):
            with Transaction() as tran:
                add_edge(new, old, "backing", Role.COW, tran)
                replace_node(old, new, tran)
        self.appended = True

    async def commit(self) -> None:
        old = self.old
        assert old is not None
        if not old.read_only:
            await old.reopen_read_only()
            with Transaction() as tran:
                refresh_perms([old], tran)

    async def abort(self) -> None:
        """Take the overlay out: its users go back to the old top."""
        old, new = self.old, self.new
        if not self.appended or old is None or new is None:
            return
        async with drained(old, new):
            detach(new.children["backing"])
            with Transaction() as tran:
                replace_node(new, old, tran)
        self.appended = False

    async def clean(self) -> None:
        await self.end_drains()
        new = self.new
        if self.opened and new is not None and not new.parents and self.graph.get(new.node_name) is new:
            await self.graph.close_tree(new)


@action(TransactionActionKind.BLOCKDEV_SNAPSHOT)
class BlockdevSnapshotAction(ExternalSnapshot):
    data: BlockdevSnapshot

    def old_top(self) -> BlockNode:
        return self.graph.lookup(self.data.node, self.data.node)

    async def open_overlay(self, old: BlockNode) -> BlockNode:
        return self.graph.lookup(self.data.overlay, self.data.overlay)


@action(TransactionActionKind.BLOCKDEV_SNAPSHOT_SYNC)
class BlockdevSnapshotSyncAction(ExternalSnapshot):
    data: BlockdevSnapshotSync

    def old_top(self) -> BlockNode:
        return self.graph.lookup(self.data.device, self.data.node_name)

    async def open_overlay(self, old: BlockNode) -> BlockNode:
        """Create (unless ``existing``) and open the overlay, as the old top
        is opened (read-only if it is), without its backing file."""
        data = self.data
        name = data.snapshot_node_name
        if data.node_name is not None and name is None:
            raise QMPError("New overlay node-name missing")
        if name is not None and self.graph.get(name) is not None:
            raise QMPError("New overlay node-name already in use")
        fmt = data.format or "qcow2"
        if (data.mode or NewImageMode.ABSOLUTE_PATHS) != NewImageMode.EXISTING:
            await create_image(data.snapshot_file, fmt, old.total_size, old.filename(), old.driver)
        wire: dict[str, Any] = {"driver": fmt, "file": {"driver": "file", "filename": data.snapshot_file},
                                "read-only": old.read_only}
        if fmt == "qcow2":
            wire["backing"] = None
        if name is not None:
            wire["node-name"] = name
        new = await self.graph.open(visit_BlockdevOptions(wire, None, ""))
        self.opened = True
        return new
