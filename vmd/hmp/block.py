"""HMP ``commit DEVICE|all``: copy a drive's top image into its backing file.

QEMU's bdrv_commit, the synchronous commit of the HMP monitor (no job, no
events): what the top image holds is copied into its backing file, which
is made writable for the copy if it is read-only (and read-only again
after), grows to the top's size if it is smaller, and is flushed. A
``commit_top`` filter sits above the backing file meanwhile, so that the
write does not conflict with the top's users (a guest device writing to
the top forbids writes to its backing chain). Failures
are the command's output (``'commit' error for 'drv': Operation not
supported`` for an image without a backing file), as QEMU reports them.

vmd leaves the top image's copy of the data in place where QEMU empties
the top image afterwards (qcow2's make_empty); what a reader of the drive
sees is the same either way.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from vmd.block.edge import Transaction, refresh_perms
from vmd.block.jobs.filters import CommitTopNode, drop_filter, insert_filter
from vmd.block.node import BlockNode, Status
from vmd.block.perm import ALL, Perm
from vmd.errors import QMPError
from vmd.job.blockjob import check_not_blocked

#: Bytes copied per request.
CHUNK = 1 << 20


async def hmp_commit(ctx: Any, args: list[str]) -> str:
    device = args[0]
    graph = ctx.daemon.block
    if device == "all":
        backends = [b for b in graph.backends if b.name and b.edge is not None]
    else:
        backend = graph.named_backend(device)
        if backend is None:
            return f"Device '{device}' not found\n"
        if backend.edge is None:
            return f"Device '{device}' has no medium\n"
        backends = [backend]
    for backend in backends:
        code = await commit(graph, backend.node)
        if code and (device != "all" or code != errno.ENOTSUP):
            return f"'commit' error for '{device}': {os.strerror(code)}\n"
    return ""


async def commit(graph: Any, top: BlockNode) -> int:
    """bdrv_commit(): 0, or the errno QEMU would return."""
    base = top.backing
    if base is None:
        return errno.ENOTSUP
    try:
        check_not_blocked(top)
        check_not_blocked(base)
    except QMPError:
        return errno.EBUSY
    read_only = base.read_only
    if read_only:
        try:
            await base.reopen_read_write()
            _refresh(base)
        except QMPError:
            return errno.EACCES
    reader = graph.backend(Perm.CONSISTENT_READ, ALL)
    writer = graph.backend(Perm.WRITE | Perm.RESIZE, ALL)
    filt: CommitTopNode | None = None
    try:
        reader.attach(top)
        filt = CommitTopNode("", base)
        await insert_filter(graph, filt, base, None)
        writer.attach(base)
        await _copy(top, base)
        await base.flush()
    except QMPError:
        return errno.EPERM
    except OSError as error:
        return error.errno or errno.EIO
    finally:
        reader.detach()
        writer.detach()
        if filt is not None and filt.parents:
            await drop_filter(graph, filt)
        if read_only:
            await base.reopen_read_only()
            _refresh(base)
    return 0


async def _copy(top: BlockNode, base: BlockNode) -> None:
    """Every range the top image itself holds, into the base."""
    size = top.total_size
    if base.total_size < size:
        await base.truncate(size)
    offset = 0
    while offset < size:
        extent = await top.block_status(offset, min(CHUNK, size - offset))
        if extent.status & Status.ALLOCATED:
            buf = bytearray(extent.length)
            await top.read(offset, memoryview(buf))
            await base.write(offset, memoryview(buf))
        offset += extent.length


def _refresh(node: BlockNode) -> None:
    with Transaction() as tran:
        refresh_perms([node], tran)
