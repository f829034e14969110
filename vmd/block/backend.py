"""A user of the block graph: QEMU's BlockBackend.

An NBD export, ``block_resize``, a job or a guest device reaches a
node only through a ``BlockBackend``, which holds one ``root`` edge with the
permissions the user needs. Replacing the node under it (a snapshot, a job's
pivot) moves the edge, and with it the user.

A backend counts its requests in flight. During a drained section over a
node below it, new requests wait at ``request_begin`` (QEMU's request
queuing) and the section starts once those in flight have ended.

Backends belong to the event loop thread.
"""

from __future__ import annotations

import asyncio

from vmd.block.edge import Edge, RootHolder, attach, detach, set_root_perm
from vmd.block.node import BlockNode
from vmd.block.perm import NO_ROLE, Perm


class BlockBackend(RootHolder):
    """One user's root edge, its permissions and its requests."""

    def __init__(self, perm: Perm, shared: Perm, *, name: str = "",
                 registry: list[BlockBackend] | None = None) -> None:
        self.name = name
        self.perm = perm
        self.shared = shared
        self.edge: Edge | None = None
        #: Whether requests wait during drained sections; a job's own
        #: backend does not (QEMU's blk_set_disable_request_queuing), so it
        #: can reach its pause point or finish cancelling.
        self.queue_requests = True
        #: The daemon's list of backends (``x-debug-query-block-graph``).
        self._registry = registry
        #: The guest device using this backend (QEMU's blk->dev), by its
        #: QOM path; None when no device is attached.
        self.device: str | None = None
        #: QEMU's blk_enable_write_cache: with it off a device flushes every write.
        self.write_cache = True
        #: ``query-block``'s io-status: ``failed``/``nospace`` while an error stopped the VM.
        self.iostatus = "ok"
        #: What a device does on a failed read and write (QEMU's blk_set_on_error):
        #: ``report``, ``ignore``, ``stop`` or ``enospc``; ``-drive`` sets them.
        self.on_error = ("report", "enospc")
        self.in_flight = 0
        self._quiesce = 0
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def node(self) -> BlockNode:
        assert self.edge is not None, "backend without a node"
        return self.edge.child

    @property
    def graph_name(self) -> str:
        """The name ``x-debug-query-block-graph`` shows: the backend's, else its device's path."""
        return self.name or self.device or ""

    def parent_desc(self) -> str:
        return f"block device '{self.graph_name}'" if self.graph_name else "an unnamed block device"

    # -- the root edge ---------------------------------------------------------------

    def attach(self, node: BlockNode) -> None:
        """Take the permissions on ``node``; raises QMPError on a conflict."""
        self.edge = attach(self, node, "root", NO_ROLE, self.perm, self.shared)
        if self._registry is not None:
            self._registry.append(self)

    def detach(self) -> None:
        if self.edge is None:
            return
        edge, self.edge = self.edge, None
        detach(edge)
        if self._registry is not None and self in self._registry:
            self._registry.remove(self)

    def set_perm(self, perm: Perm, shared: Perm) -> None:
        if self.edge is not None:
            set_root_perm(self.edge, perm, shared)
        self.perm, self.shared = perm, shared

    # -- requests and drained sections -----------------------------------------------------

    def try_begin(self) -> bool:
        """Count a request in flight, unless it must wait (drained): then
        return False and let ``request_begin`` wait."""
        if self._quiesce and self.queue_requests:
            return False
        self.in_flight += 1
        self._idle.clear()
        return True

    async def request_begin(self) -> None:
        """Wait while drained, then count a request in flight."""
        while not self.try_begin():
            await self._resumed.wait()

    def request_end(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    def quiesce_begin(self) -> None:
        self._quiesce += 1
        self._resumed.clear()

    def quiesce_end(self) -> None:
        self._quiesce -= 1
        if not self._quiesce:
            self._resumed.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


def device_name(node: BlockNode) -> str:
    """The name of the first named BlockBackend on ``node``, or ""
    (QEMU's bdrv_get_device_name: a block job's default id). A block job's
    edge is named after its job but is no device."""
    for edge in node.parents:
        if isinstance(edge.parent, BlockBackend) and edge.parent.kind == "block-backend" and edge.parent.name:
            return edge.parent.name
    return ""
