"""QMP commands of the NBD server and block exports (QEMU 7.2's block-export.json).

``nbd-server-start``/``nbd-server-stop`` run the one NBD server of the
daemon; ``block-export-add``/``block-export-del``/``query-block-exports``
manage exports by id, and the older ``nbd-server-add``/``nbd-server-remove``
are the same with the export name as id, as in QEMU 7.2. Error texts and
the order of checks are QEMU's (checked against qemu-storage-daemon 7.2).

The state lives in one ``NBDExports`` object on the daemon
(``ctx.daemon.nbd``), created on first use by ``nbd_state``. Only exports of
type ``nbd`` exist in vmd. Removing an export disconnects its clients at
once, then emits ``BLOCK_EXPORT_DELETED``; QEMU's ``shutting-down`` state is
therefore never seen by a later command.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vmd._generated import events
from vmd._generated.types import BlockExportInfo, BlockExportType, JobStatus
from vmd.block.bitmap_commands import lookup
from vmd.block.dirty_bitmap import Check, DirtyBitmap, find_bitmap
from vmd.block.edge import drained, holders_above
from vmd.block.nbd import protocol
from vmd.block.nbd.server import Export, NBDServer
from vmd.block.node import BlockNode
from vmd.cli.qemu_opts import is_valid_id
from vmd.errors import QMPError


class NBDExports:
    """The NBD server (when running) and the block exports, by id."""

    def __init__(self) -> None:
        self.server: NBDServer | None = None
        #: In creation order; query-block-exports lists the newest first.
        self.exports: dict[str, Export] = {}

    async def stop(self) -> None:
        """Shut down: disconnect clients and release the nodes."""
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()
        for export in self.exports.values():
            export.detach()
        self.exports.clear()


def nbd_state(daemon: Any) -> NBDExports:
    state: NBDExports = daemon.nbd
    return state


def _running_server(state: NBDExports) -> NBDServer:
    if state.server is None:
        raise QMPError("NBD server not running")
    return state.server


def _member(value: Any, name: str, default: Any = None) -> Any:
    """An optional member of a generated QAPI object (absent means None)."""
    return getattr(value, name, default) if value is not None else default


def _deleted(ctx: Any, export_id: str) -> None:
    events.qapi_event_send_block_export_deleted(ctx.daemon.events, id=export_id)


# -- the server -------------------------------------------------------------------

async def qmp_nbd_server_start(ctx: Any, addr: Any, tls_creds: str | None = None,
                               tls_authz: str | None = None,
                               max_connections: int | None = None) -> None:
    state = nbd_state(ctx.daemon)
    if state.server is not None:
        raise QMPError("NBD server already running")
    if tls_creds is not None:
        # vmd has no TLS credential objects, so none can be found.
        raise QMPError(f"No TLS credentials with id '{tls_creds}'")
    address: str | tuple[str, int]
    kind = str(addr.type)
    data: Any = addr.u.data if addr.u is not None else None
    if kind == "unix":
        if _member(data, "abstract"):
            raise QMPError("Abstract Unix sockets are not supported by vmd")
        address = data.path
    elif kind == "inet":
        try:
            port = int(data.port)
        except ValueError:
            raise QMPError(f"Service '{data.port}' is not supported by vmd; "
                           "use a port number") from None
        address = (data.host, port)
    else:
        raise QMPError(f"Socket address type '{kind}' is not supported by vmd")
    server = NBDServer(max_connections=max_connections or 0)
    await server.start(address)
    state.server = server


async def qmp_nbd_server_stop(ctx: Any) -> None:
    state = nbd_state(ctx.daemon)
    server = _running_server(state)
    state.server = None
    await server.stop()
    for export_id in [export_id for export_id in state.exports]:
        del state.exports[export_id]
        _deleted(ctx, export_id)


# -- block exports ----------------------------------------------------------------

def qmp_block_export_add(ctx: Any, options: Any) -> None:
    state = nbd_state(ctx.daemon)
    export_id: str = options.id
    if not is_valid_id(export_id):
        raise QMPError("Invalid block export id")
    if export_id in state.exports:
        raise QMPError(f"Block export id '{export_id}' is already in use")
    if str(options.type) != "nbd":
        raise QMPError("No driver found for the requested export type")
    node = ctx.daemon.block.find(options.node_name)
    writable = bool(_member(options, "writable", False))
    if writable and node.read_only:
        raise QMPError("Cannot export read-only node as writable")
    server = _running_server(state)
    nbd = options.u
    name: str = _member(nbd, "name") or options.node_name
    description: str | None = _member(nbd, "description")
    if len(name.encode()) > protocol.MAX_STRING:
        raise QMPError(f"export name '{name}' too long")
    if description is not None and len(description.encode()) > protocol.MAX_STRING:
        raise QMPError(f"description '{description}' too long")
    if name in server.exports:
        raise QMPError(f"NBD server already has export named '{name}'")
    bitmaps = export_bitmaps(ctx.daemon.block, node, _member(nbd, "bitmaps") or [], writable)
    if _member(nbd, "allocation_depth"):
        raise QMPError("Export of qemu:allocation-depth is not supported by vmd")
    export = Export.of(name, node, writable=writable, description=description, registry=ctx.daemon.block.backends,
                       bitmaps=bitmaps)
    server.add_export(export)
    state.exports[export_id] = export


def export_bitmaps(graph: Any, node: BlockNode, refs: list[Any], writable: bool) -> list[DirtyBitmap]:
    """The bitmaps an export offers (nbd_export_create): a bare name is
    looked for on the node and down its chain, a {node, name} pair where it
    says; each must be usable (a read-only export may not offer a bitmap
    that still records writes to a writable node)."""
    found: list[DirtyBitmap] = []
    for ref in refs:
        if isinstance(ref, str):
            below: BlockNode | None = node
            bitmap = None
            while below is not None and bitmap is None:
                bitmap = find_bitmap(below, ref)
                holder, below = below, below.filtered()
            if bitmap is None:
                raise QMPError(f"Bitmap '{ref}' is not found")
            if not writable and not holder.read_only and not bitmap.disabled:
                raise QMPError(f"Enabled bitmap '{ref}' incompatible with readonly export")
        else:
            bitmap = lookup(graph, ref.node, ref.name)[1]
        bitmap.check(Check.ALLOW_RO)
        found.append(bitmap)
    return found


async def qmp_block_export_del(ctx: Any, id: str, mode: Any = None) -> None:
    state = nbd_state(ctx.daemon)
    export = state.exports.get(id)
    if export is None:
        raise QMPError(f"Export '{id}' is not found")
    if (mode is None or str(mode) == "safe") and export.clients:
        raise QMPError(f"export '{id}' still in use")
    del state.exports[id]
    await _drain_as_qemu(export.node)
    if state.server is not None and state.server.exports.get(export.name) is export:
        await state.server.remove_export(export.name)
    else:
        export.detach()
    _deleted(ctx, id)


async def _drain_as_qemu(node: BlockNode) -> None:
    """QEMU drains the node twice while it takes an export down (its
    shutdown, then removing the BlockBackend): jobs there pause and resume,
    and are running again before the command returns, as after QEMU's
    drained_end."""
    for _ in range(2):
        async with drained(node):
            pass
    for holder in holders_above(node):
        job = getattr(holder, "job", None)
        while job is not None and job.status == JobStatus.PAUSED and not job.pause_count:
            await asyncio.sleep(0)


def qmp_query_block_exports(ctx: Any) -> list[BlockExportInfo]:
    state = nbd_state(ctx.daemon)
    return [BlockExportInfo(id=export_id, type=BlockExportType.NBD, node_name=export.node.node_name,
                            shutting_down=False)
            for export_id, export in reversed(state.exports.items())]


# -- the older commands -------------------------------------------------------------

def qmp_nbd_server_add(ctx: Any, options: Any) -> None:
    """The older way to add an export; its arguments come boxed (``NbdServerAddOptions``)."""
    device: str = options.device
    node = ctx.daemon.block.get(device)
    if node is None:
        raise QMPError(f"Cannot find device='{device}' nor node-name='{device}'")
    name: str = _member(options, "name") or device
    bitmap: str | None = _member(options, "bitmap")
    # nbd-server-add quietly exports a read-only node read-only.
    add = _AddOptions(id=name, node_name=node.node_name,
                      writable=bool(_member(options, "writable")) and not node.read_only,
                      u=_NbdOptions(name=name, description=_member(options, "description"),
                                    bitmaps=[bitmap] if bitmap is not None else None))
    qmp_block_export_add(ctx, add)


async def qmp_nbd_server_remove(ctx: Any, name: str, mode: Any = None) -> None:
    await qmp_block_export_del(ctx, name, mode)


class _NbdOptions:
    """The ``u`` branch of BlockExportOptions that nbd-server-add builds."""

    def __init__(self, name: str, description: str | None, bitmaps: list[str] | None) -> None:
        self.name = name
        self.description = description
        self.bitmaps = bitmaps
        self.allocation_depth = None


class _AddOptions:
    """The BlockExportOptions that nbd-server-add amounts to."""

    type = "nbd"

    def __init__(self, id: str, node_name: str, writable: bool, u: _NbdOptions) -> None:
        self.id = id
        self.node_name = node_name
        self.writable = writable
        self.u = u
