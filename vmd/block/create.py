"""``blockdev-create``: creating an image as a job (QEMU's block/create.c).

The job creates a ``file`` (an empty file of the given size) or writes a
fresh ``qcow2`` image into an existing node (``file`` names the protocol
node, usually added with ``blockdev-add`` right after creating it). The
work runs in the job's coroutine, so the monitor stays responsive; errors
end the job with the error in ``query-jobs``.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from vmd._generated.types import BlockdevCreateOptions, BlockdevCreateOptionsFile, BlockdevCreateOptionsQcow2, JobType
from vmd.block import aio
from vmd.block.graph import BlockGraph
from vmd.errors import QMPError
from vmd.job.core import Job


class BlockdevCreateJob(Job):
    job_type = JobType.CREATE

    def __init__(self, registry: Any, job_id: str, options: BlockdevCreateOptions, graph: BlockGraph) -> None:
        super().__init__(registry, job_id, auto_finalize=True, auto_dismiss=False)
        self.options = options
        self.graph = graph

    async def run(self) -> None:
        self.progress_set_remaining(1)
        u = self.options.u
        if isinstance(u, BlockdevCreateOptionsFile):
            await _create_file(u)
        elif isinstance(u, BlockdevCreateOptionsQcow2):
            await self._create_qcow2(u)
        else:
            raise QMPError(f"Driver '{self.options.driver}' does not support blockdev-create")
        self.progress_update(1)

    async def _create_qcow2(self, u: BlockdevCreateOptionsQcow2) -> None:
        from vmd.block.drivers.qcow2 import create_qcow2
        unsupported = {"data-file": u.data_file, "encrypt": u.encrypt, "extended-l2": u.extended_l2 or None}
        for name, value in unsupported.items():
            if value is not None:
                raise QMPError(f"qcow2 option '{name}' is not supported by vmd")
        file = self.graph.find(u.file) if isinstance(u.file, str) else await self.graph.open(u.file)
        if file.read_only:
            raise QMPError("Block node is read-only")
        version = 2 if str(u.version or "v3") == "v2" else 3
        await create_qcow2(file, u.size, cluster_size=u.cluster_size or 65536, backing_file=u.backing_file,
                           backing_fmt=str(u.backing_fmt) if u.backing_fmt else None,
                           lazy_refcounts=bool(u.lazy_refcounts), version=version,
                           refcount_bits=u.refcount_bits or 16)


async def _create_file(u: BlockdevCreateOptionsFile) -> None:
    if u.preallocation is not None and str(u.preallocation) != "off":
        raise QMPError(f"Unsupported preallocation mode '{u.preallocation}'")
    await aio.run(create_empty_file, u.filename, u.size)


def create_empty_file(path: str, size: int) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise QMPError(f"Could not create '{path}': {os.strerror(error.errno or errno.EIO)}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as error:
        raise QMPError(f"Could not resize file: {os.strerror(error.errno or errno.EIO)}") from None
    finally:
        os.close(fd)


def qmp_blockdev_create(ctx: Any, job_id: str, options: BlockdevCreateOptions) -> None:
    BlockdevCreateJob(ctx.daemon.jobs, job_id, options, ctx.daemon.block).start()


async def create_image(path: str, fmt: str, size: int, backing_file: str | None = None,
                       backing_fmt: str | None = None) -> None:
    """A new, empty image file (QEMU's bdrv_img_create, for the formats vmd
    writes): what drive-mirror, drive-backup and blockdev-snapshot-sync
    create unless told to use an existing image."""
    from vmd.block.drivers.file import FileNode
    from vmd.block.drivers.qcow2 import create_qcow2
    if fmt not in ("qcow2", "raw"):
        raise QMPError(f"Unknown file format '{fmt}'")
    if fmt == "raw" and backing_file is not None:
        raise QMPError("Backing file not supported for file format 'raw'")
    _print_formatting(path, fmt, size, backing_file, backing_fmt)
    await aio.run(create_empty_file, path, size if fmt == "raw" else 0)
    if fmt == "raw":
        return
    file = FileNode("", path)
    await file.open()
    try:
        await create_qcow2(file, size, backing_file=backing_file, backing_fmt=backing_fmt)
    except OSError as error:
        raise QMPError(f"Could not create '{path}': {os.strerror(error.errno or errno.EIO)}") from None
    finally:
        await file.close()


def _print_formatting(path: str, fmt: str, size: int, backing_file: str | None, backing_fmt: str | None) -> None:
    """bdrv_img_create() says what it creates on stdout, as qemu-img create does."""
    from vmd.chardev.stdio import write_process_stdout
    from vmd.img.create import Request, formatting_line
    options = {"backing_file": backing_file, "backing_fmt": backing_fmt}
    request = Request(path, fmt, {name: value for name, value in options.items() if value is not None})
    write_process_stdout(formatting_line(request, size) + "\n")
