"""virtio-blk: a guest disk served by the block layer (QEMU's hw/block/virtio-blk.c).

``virtio-blk-pci`` (``-device virtio-blk-pci,drive=NODE``) puts a
``VirtioBlk`` model behind the virtio-pci transport. The disk is a block
node reached through a ``BlockBackend`` (the ``root`` edge, with QEMU's
permissions: ``consistent-read`` and ``write`` taken, ``consistent-read``,
``write-unchanged`` and ``resize`` shared, plus ``write`` with
``share-rw=on``), so ``blockdev-del`` of the node is refused while the
device holds it, and block jobs, snapshots and NBD exports work on the
disk of a running guest: a job's pivot moves the edge, and the device
follows it.

Requests, as QEMU 7.2 handles them: the first 16 device-readable bytes
are the header (type, sector), the last device-writable byte is the
status, and what lies between is the data, in any layout. ``IN``/``OUT``
(with the legacy barrier bit ignored), ``FLUSH``, ``GET_ID`` (the serial,
NUL-terminated only when shorter than 20 bytes), ``DISCARD`` and
``WRITE_ZEROES`` (one 16-byte segment; the unmap flag allows holes) are
served; ranges that are misaligned to the logical block size, too long
or beyond the end get ``IOERR``; unknown types, unknown segment flags
and a discard with the unmap flag get ``UNSUPP``. A failed I/O follows
``rerror``/``werror`` (``auto``: the ``-drive``'s, else QEMU's defaults)
as QEMU's: ``report`` (``IOERR``; reads by default), ``ignore``
(``OK``), ``stop`` (the VM stops in ``io-error``, the request waits and
is tried again on ``cont``) or ``enospc`` (``stop`` for a full disk, else
``report``; writes by default), each with a ``BLOCK_IO_ERROR`` event;
flush, discard and write-zeroes count as writes. A request with no header
or no status byte is a broken driver: the device stops and asks for a
reset (``virtio_error``), nothing else happens. The used length is
always every device-writable byte of the request, as QEMU reports it.

Threads: the transport calls ``handle_queue`` on the event-loop thread
with the BQL held; each request then runs as a task on the loop (no BQL
while the block layer works; guest buffers are memoryview slices of guest
RAM, read and written in place by the block drivers and their worker
threads) and completes under the BQL. An ``iothread=`` is accepted as in
QEMU, but the queues still run on the main loop: vmd's block layer lives
on the loop thread. A reset drops what is in flight: its completions are
not pushed (the queue's generation changed), but QEMU drains them first,
so a read finishing after a reset may still land in the buffer the old
driver gave.

Where vmd departs from QEMU: without ``cyls``/``heads``/``secs`` the
geometry is guessed from the size only (QEMU first looks for an MBR
partition table in sector 0); ``num-queues`` auto is one queue per vCPU
as in QEMU, but the MSI-X vector count then stays at 2 (QEMU gives
queues + 1).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import struct
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmd._generated import events
from vmd._generated.types import BlockErrorAction, IoOperationType, RunState
from vmd.block.accounting import AcctType, Cookie
from vmd.block.backend import BlockBackend
from vmd.block.perm import NONE, Perm
from vmd.errors import QMPError
from vmd.hw.pci.device import TYPE_PCI_BUS
from vmd.hw.virtio.device import VirtioDevice
from vmd.hw.virtio.pci import TYPE_VIRTIO_PCI, VirtioPciDevice
from vmd.hw.virtio.queue import Element
from vmd.qom.errors import QOMError
from vmd.qom.property import Property
from vmd.qom.types import TYPES, Category, TypeInfo, device_type

if TYPE_CHECKING:
    from vmd.block.graph import BlockGraph
    from vmd.block.node import BlockNode
    from vmd.hw.context import DeviceContext
    from vmd.system.runstate import RunStateMachine

log = logging.getLogger(__name__)

VIRTIO_ID_BLOCK = 2
SECTOR = 512
#: BDRV_REQUEST_MAX_SECTORS: the longest request the block layer takes.
REQUEST_MAX_SECTORS = 0x7FFFFFFF >> 9
MAX_QUEUE_SIZE = 1024
AUTO_NUM_QUEUES = 0xFFFF
UNSPECIFIED = 0xFFFFFFFF
ID_BYTES = 20

# Feature bits (virtio 1.x 5.2.3).
F_SEG_MAX, F_GEOMETRY, F_RO, F_BLK_SIZE = 2, 4, 5, 6
F_FLUSH, F_TOPOLOGY, F_CONFIG_WCE, F_MQ = 9, 10, 11, 12
F_DISCARD, F_WRITE_ZEROES = 13, 14

# Request types and status bytes.
T_IN, T_OUT, T_SCSI_CMD, T_FLUSH, T_GET_ID = 0, 1, 2, 4, 8
T_DISCARD, T_WRITE_ZEROES = 11, 13
T_BARRIER = 0x80000000
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
WRITE_ZEROES_FLAG_UNMAP = 1

_OUTHDR = struct.Struct("<IIQ")
_SEGMENT = struct.Struct("<QII")

# virtio_blk_config: the fields up to num_queues always, then the discard
# and write-zeroes ones when offered (QEMU's feature_sizes).
_CONFIG_BASE = struct.Struct("<QIIHBBIBBHIBxH")
CONFIG_MIN_SIZE = _CONFIG_BASE.size
_DISCARD_FIELDS = struct.Struct("<III")
_WZ_FIELDS = struct.Struct("<IIB")
DISCARD_OFFSET, WZ_OFFSET, WCE_OFFSET = 36, 48, 32
CONFIG_DISCARD_END = DISCARD_OFFSET + _DISCARD_FIELDS.size
CONFIG_WZ_END = WZ_OFFSET + _WZ_FIELDS.size

#: What the device holds on its node, as QEMU's blkconf_apply_backend_options.
DEVICE_SHARED = Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED | Perm.RESIZE


@dataclass(frozen=True)
class BlkConf:
    """The checked properties of one virtio-blk device."""

    serial: bytes
    num_queues: int
    queue_size: int
    seg_max: int
    logical_block_size: int
    physical_block_size: int
    min_io_size: int
    opt_io_size: int
    discard_granularity: int
    cyls: int
    heads: int
    secs: int
    config_wce: bool
    discard: bool
    write_zeroes: bool
    max_discard_sectors: int
    max_write_zeroes_sectors: int

    @property
    def sector_mask(self) -> int:
        return self.logical_block_size // SECTOR - 1


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _block_size(props: dict[str, Any], name: str) -> int:
    """QEMU's block-size property setter checks (0: not set)."""
    value = props[name]
    if value == 0:
        return 0
    if not 512 <= value <= 2 * 1024 * 1024:
        raise QOMError(f"Property .{name} doesn't take value {value} (minimum: 512, maximum: 2097152)")
    if not _power_of_two(value):
        raise QOMError(f"Property .{name} doesn't take value '{value}', it's not a power of 2")
    return int(value)


def check_conf(props: dict[str, Any], smp_cpus: int, capacity: int) -> BlkConf:
    """The properties after QEMU's realize checks, in QEMU's order and texts."""
    logical = _block_size(props, "logical_block_size") or SECTOR
    physical = _block_size(props, "physical_block_size") or SECTOR
    num_queues = props["num-queues"]
    if num_queues == AUTO_NUM_QUEUES:
        num_queues = max(1, smp_cpus)
    if num_queues == 0:
        raise QOMError("num-queues property must be larger than 0")
    queue_size = props["queue-size"]
    if queue_size <= 2:
        raise QOMError(f"invalid queue-size property ({queue_size}), must be > 2")
    if not _power_of_two(queue_size) or queue_size > MAX_QUEUE_SIZE:
        raise QOMError(f"invalid queue-size property ({queue_size}), must be a power of 2 (max {MAX_QUEUE_SIZE})")
    if logical > physical:
        raise QOMError("logical_block_size > physical_block_size not supported")
    for name in ("min_io_size", "opt_io_size"):
        if props[name] % logical:
            raise QOMError(f"{name} must be a multiple of logical_block_size")
    for name in ("max-discard-sectors", "max-write-zeroes-sectors"):
        if not 1 <= props[name] <= REQUEST_MAX_SECTORS:
            raise QOMError(f"invalid {name} property ({props[name]}), must be between 1 and {REQUEST_MAX_SECTORS}")
    serial = (props["serial"] or "").encode()
    cyls, heads, secs = props["cyls"], props["heads"], props["secs"]
    if not (cyls and heads and secs):
        cyls, heads, secs = min(max(capacity // (16 * 63), 2), 16383), 16, 63
    return BlkConf(
        serial=serial, num_queues=num_queues, queue_size=queue_size,
        seg_max=queue_size - 2 if props["seg-max-adjust"] else 128 - 2,
        logical_block_size=logical, physical_block_size=physical,
        min_io_size=props["min_io_size"], opt_io_size=props["opt_io_size"],
        discard_granularity=props["discard_granularity"], cyls=cyls, heads=heads, secs=secs,
        config_wce=props["config-wce"], discard=props["discard"], write_zeroes=props["write-zeroes"],
        max_discard_sectors=props["max-discard-sectors"],
        max_write_zeroes_sectors=props["max-write-zeroes-sectors"])


def device_features(conf: BlkConf, read_only: bool, write_cache: bool) -> int:
    """The device feature bits QEMU 7.2 offers for ``conf``."""
    bits = [F_SEG_MAX, F_GEOMETRY, F_TOPOLOGY, F_BLK_SIZE]
    if write_cache or conf.config_wce:  # x-enable-wce-if-config-wce is on
        bits.append(F_FLUSH)
    if conf.config_wce:
        bits.append(F_CONFIG_WCE)
    if conf.discard:
        bits.append(F_DISCARD)
    if conf.write_zeroes:
        bits.append(F_WRITE_ZEROES)
    if read_only:
        bits.append(F_RO)
    if conf.num_queues > 1:
        bits.append(F_MQ)
    return sum(1 << bit for bit in bits)


def config_size(conf: BlkConf) -> int:
    if conf.write_zeroes:
        return CONFIG_WZ_END
    if conf.discard:
        return CONFIG_DISCARD_END
    return CONFIG_MIN_SIZE


# -- splitting a request's buffers ------------------------------------------------

def _take_front(bufs: list[memoryview], count: int) -> tuple[bytes, list[memoryview]]:
    """The first ``count`` bytes (fewer if the buffers are shorter) and the views after them."""
    taken = bytearray()
    rest = list(bufs)
    while rest and len(taken) < count:
        need = count - len(taken)
        first = rest[0]
        taken += first[:need]
        if len(first) > need:
            rest[0] = first[need:]
        else:
            rest.pop(0)
    return bytes(taken), rest


def _drop_last_byte(bufs: list[memoryview]) -> list[memoryview]:
    rest = list(bufs)
    last = rest.pop()
    if len(last) > 1:
        rest.append(last[:-1])
    return rest


def _fill(bufs: list[memoryview], data: bytes) -> None:
    done = 0
    for buf in bufs:
        if done >= len(data):
            return
        count = min(len(buf), len(data) - done)
        buf[:count] = data[done:done + count]
        done += count


@dataclass
class Request:
    """One parsed request: where its status goes and what it asks."""

    queue: int
    element: Element
    status: memoryview
    kind: int
    sector: int
    data_out: list[memoryview]
    data_in: list[memoryview]
    #: The request's I/O accounting, from submission to completion.
    acct: Cookie | None = None

    @property
    def in_len(self) -> int:
        return self.element.writable_size


class VirtioBlk(VirtioDevice):
    """The virtio-blk device model (QEMU's ``virtio-blk-device``)."""

    device_id = VIRTIO_ID_BLOCK
    type_name = "virtio-blk-device"

    def __init__(self, conf: BlkConf, backend: BlockBackend, bql: AbstractContextManager[Any]) -> None:
        features = device_features(conf, read_only=backend.node.read_only, write_cache=backend.write_cache)
        super().__init__([conf.queue_size] * conf.num_queues, features, config_size(conf))
        self.conf = conf
        self.backend = backend
        self._bql = bql
        self._tasks: set[asyncio.Task[None]] = set()
        #: Requests an error stopped the VM for, tried again on ``cont``.
        self._parked: list[tuple[Request, Callable[[], Awaitable[None]], bool]] = []
        #: Where BLOCK_IO_ERROR goes and what an error policy ``stop`` stops (None in unit tests).
        self.events: Any = None
        self.runstate: RunStateMachine | None = None
        self.read_config()

    @property
    def write_cache(self) -> bool:
        """Off: every write is flushed (writethrough; ``wce`` 0 in the config space)."""
        return self.backend.write_cache

    @write_cache.setter
    def write_cache(self, on: bool) -> None:
        self.backend.write_cache = on
        self.read_config()

    async def wait_idle(self) -> None:
        """Return once every request started so far has completed."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- configuration space -----------------------------------------------------

    def read_config(self) -> None:
        conf = self.conf
        size = self.backend.node.total_size
        blk_size = conf.logical_block_size
        sectors = conf.secs
        if size > 0 and size // conf.heads // conf.secs % blk_size:
            sectors = conf.secs & ~conf.sector_mask
        physical_exp = (conf.physical_block_size // blk_size).bit_length() - 1
        _CONFIG_BASE.pack_into(
            self.config, 0, size // SECTOR, 0, conf.seg_max, conf.cyls, conf.heads, sectors, blk_size,
            physical_exp, 0, conf.min_io_size // blk_size, conf.opt_io_size // blk_size, int(self.write_cache),
            conf.num_queues)
        if conf.discard:
            granularity = conf.discard_granularity
            if granularity == UNSPECIFIED:
                granularity = blk_size
            _DISCARD_FIELDS.pack_into(self.config, DISCARD_OFFSET, conf.max_discard_sectors, 1, granularity // SECTOR)
        if conf.write_zeroes:
            _WZ_FIELDS.pack_into(self.config, WZ_OFFSET, conf.max_write_zeroes_sectors, 1, 1)

    def write_config(self, offset: int, data: bytes) -> None:
        """Only ``wce`` is writable: the driver turns the write cache on or off."""
        if offset <= WCE_OFFSET < offset + len(data):
            self.write_cache = data[WCE_OFFSET - offset] != 0

    # -- requests ---------------------------------------------------------------

    def handle_queue(self, index: int) -> None:
        while (element := self.pop(index)) is not None:
            request = self._parse(index, element)
            if request is not None:
                self._dispatch(request)

    def _parse(self, index: int, element: Element) -> Request | None:
        """Split header, data and status; a request without them breaks the device."""
        if not element.readable or not element.writable:
            self.error("virtio-blk missing headers")
            return None
        header, data_out = _take_front(element.readable, _OUTHDR.size)
        if len(header) < _OUTHDR.size:
            self.error("virtio-blk request outhdr too short")
            return None
        kind, _, sector = _OUTHDR.unpack(header)
        last = element.writable[-1]
        return Request(index, element, last[len(last) - 1:], kind, sector, data_out,
                       _drop_last_byte(element.writable))

    def _dispatch(self, request: Request) -> None:
        kind = request.kind & ~(T_OUT | T_BARRIER)
        if kind == T_IN:
            is_write = bool(request.kind & T_OUT)
            data = request.data_out if is_write else request.data_in
            length = sum(len(buf) for buf in data)
            acct_type = AcctType.WRITE if is_write else AcctType.READ
            if not self._range_ok(request.sector, length):
                self._complete(request, S_IOERR)
                self.backend.stats.invalid(acct_type)
            else:
                request.acct = self.backend.stats.start(acct_type, length)
                self._start(request, functools.partial(self._write, request) if is_write else
                            functools.partial(self._read, request), is_read=not is_write)
        elif kind == T_FLUSH:
            request.acct = self.backend.stats.start(AcctType.FLUSH, 0)
            self._start(request, self._flush)
        elif kind == T_GET_ID:
            size = min(len(self.conf.serial) + 1, sum(len(buf) for buf in request.data_in), ID_BYTES)
            _fill(request.data_in, (self.conf.serial + b"\0")[:size])
            self._complete(request, S_OK)
        elif kind in (T_DISCARD & ~T_OUT, T_WRITE_ZEROES & ~T_OUT):
            self._discard_or_zero(request, kind == T_WRITE_ZEROES & ~T_OUT)
        elif kind == T_SCSI_CMD:
            self._refuse_scsi(request)
        else:
            self._complete(request, S_UNSUPP)

    def _range_ok(self, sector: int, length: int) -> bool:
        """QEMU's virtio_blk_sect_range_ok."""
        count = length // SECTOR
        total = self.backend.node.total_size // SECTOR
        return (count <= REQUEST_MAX_SECTORS and not sector & self.conf.sector_mask
                and not length % self.conf.logical_block_size and sector <= total and count <= total - sector)

    def _refuse_scsi(self, request: Request) -> None:
        """SCSI passthrough (legacy) is off: IOERR without its headers, else UNSUPP with errors=255."""
        element = request.element
        if len(element.readable) < 2 or len(element.writable) < 3:
            self._complete(request, S_IOERR)
            return
        errors = element.writable[-2]
        errors[:min(4, len(errors))] = (255).to_bytes(4, "little")[:min(4, len(errors))]
        self._complete(request, S_UNSUPP)

    def _discard_or_zero(self, request: Request, zeroes: bool) -> None:
        out_len = sum(len(buf) for buf in request.data_out)
        if not request.kind & T_OUT or out_len > _SEGMENT.size:
            self._complete(request, S_UNSUPP)
            return
        segment, _ = _take_front(request.data_out, _SEGMENT.size)
        if len(segment) < _SEGMENT.size:
            self.error("virtio-blk discard/write_zeroes header too short")
            return
        sector, count, flags = _SEGMENT.unpack(segment)
        limit = self.conf.max_write_zeroes_sectors if zeroes else self.conf.max_discard_sectors
        if count > limit or not self._range_ok(sector, count * SECTOR):
            self._complete(request, S_IOERR)
        elif flags & ~WRITE_ZEROES_FLAG_UNMAP or (not zeroes and flags & WRITE_ZEROES_FLAG_UNMAP):
            self._complete(request, S_UNSUPP)
        elif zeroes:
            request.acct = self.backend.stats.start(AcctType.WRITE, count * SECTOR)
            self._start(request, functools.partial(self._zero, sector * SECTOR, count * SECTOR,
                                                   bool(flags & WRITE_ZEROES_FLAG_UNMAP)))
        else:
            self._start(request, functools.partial(self._discard, sector * SECTOR, count * SECTOR))
        if zeroes and request.acct is None:   # refused (QEMU accounts no discard)
            self.backend.stats.invalid(AcctType.WRITE)

    def _complete(self, request: Request, status: int) -> None:
        """Store the status byte and return the request (BQL held)."""
        if request.element.generation == self.queues[request.queue].generation:
            request.status[0] = status
        self.push(request.queue, request.element, request.in_len)

    # -- block I/O on the loop -------------------------------------------------------

    def _start(self, request: Request, work: Callable[[], Awaitable[None]], is_read: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(request, work, is_read))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: Request, work: Callable[[], Awaitable[None]], is_read: bool) -> None:
        error = 0
        try:
            await work()
        except OSError as failure:
            error = failure.errno or errno.EIO
        except QMPError:
            error = errno.EIO
        except Exception:  # a bug must not take the daemon down with it
            log.exception("%s: request failed", self.type_name)
            error = errno.EIO
        with self._bql:
            action = self._finish(request, work, is_read, error)
        if action == BlockErrorAction.STOP and self.runstate is not None:
            self.runstate.stop(RunState.IO_ERROR)

    def _finish(self, request: Request, work: Callable[[], Awaitable[None]], is_read: bool,
                error: int) -> BlockErrorAction | None:
        """Complete the request, or apply the error policy (QEMU's
        virtio_blk_handle_rw_error); an ignored error is accounted as done."""
        if not error:
            self._complete(request, S_OK)
            self._account(request, failed=False)
            return None
        action = self._error_action(is_read, error)
        if action == BlockErrorAction.STOP:
            self._parked.append((request, work, is_read))
            self.backend.iostatus = "nospace" if error == errno.ENOSPC else "failed"
        else:
            self._complete(request, S_IOERR if action == BlockErrorAction.REPORT else S_OK)
            self._account(request, failed=action == BlockErrorAction.REPORT)
        if self.events is not None:
            events.qapi_event_send_block_io_error(
                self.events, device=self.backend.name, node_name=self.backend.node.node_name,
                operation=IoOperationType.READ if is_read else IoOperationType.WRITE, action=action,
                nospace=error == errno.ENOSPC, reason=os.strerror(error))
        return action

    def _account(self, request: Request, *, failed: bool) -> None:
        if request.acct is not None:
            (self.backend.stats.failed if failed else self.backend.stats.done)(request.acct)

    def _error_action(self, is_read: bool, error: int) -> BlockErrorAction:
        """The backend's policy for the failed read or write (QEMU's blk_get_error_action)."""
        policy = self.backend.on_error[0 if is_read else 1]
        if policy == "enospc":
            policy = "stop" if error == errno.ENOSPC else "report"
        return BlockErrorAction(policy)

    def vm_state_changed(self, state: RunState) -> None:
        """On ``cont`` the requests stopped by an error are tried again (QEMU's dma restart)."""
        if state != RunState.RUNNING or not self._parked:
            return
        parked, self._parked = self._parked, []
        self.backend.iostatus = "ok"
        for request, work, is_read in parked:
            self._start(request, work, is_read)

    async def _read(self, request: Request) -> None:
        await self.backend.read(request.sector * SECTOR, *request.data_in)

    async def _write(self, request: Request) -> None:
        await self.backend.write(request.sector * SECTOR, *request.data_out)
        if not self.write_cache:
            await self.backend.flush()

    async def _flush(self) -> None:
        await self.backend.flush()

    async def _zero(self, offset: int, length: int, may_unmap: bool) -> None:
        await self.backend.write_zeroes(offset, length, may_unmap)
        if not self.write_cache:
            await self.backend.flush()

    async def _discard(self, offset: int, length: int) -> None:
        await self.backend.discard(offset, length)


# -- the PCI device --------------------------------------------------------------

class UnrealizedBlk(VirtioDevice):
    """What a ``virtio-blk-pci`` holds before realize: the ids, no disk."""

    device_id = VIRTIO_ID_BLOCK
    type_name = VirtioBlk.type_name


def _find_drive(graph: BlockGraph | None, drive: str | None) -> tuple[BlockBackend | None, BlockNode]:
    """What ``drive`` names: a named backend (``-drive``) and its node, or a node."""
    if not drive:
        raise QOMError("drive property not set")
    named = None if graph is None else next((b for b in graph.backends if b.name == drive), None)
    node = named.node if named is not None and named.edge is not None else None
    if node is None and graph is not None:
        node = graph.get(drive)
    if node is None:
        raise QOMError(f"Property 'virtio-blk-device.drive' can't find value '{drive}'")
    if named is not None and named.device is not None:
        raise QOMError(f"Drive '{drive}' is already in use by another device")
    return named, node


def _attach(graph: BlockGraph, named: BlockBackend | None, node: BlockNode, share_rw: bool,
            owner: str) -> BlockBackend:
    """The device's backend with QEMU's permissions; a read-only node gives a
    read-only disk (QEMU's blk_supports_write_perm)."""
    perm = Perm.CONSISTENT_READ | (NONE if node.read_only else Perm.WRITE)
    shared = DEVICE_SHARED | (Perm.WRITE if share_rw else NONE)
    backend = named if named is not None else graph.backend(perm, shared)
    backend.device = owner  # named in a permission conflict, as QEMU's blk->dev
    try:
        if named is not None:
            named.set_perm(perm, shared)
        else:
            backend.attach(node)
    except QMPError as error:
        backend.device = None
        raise QOMError(error.desc) from None
    return backend


#: QEMU's abstract parent of the virtio-blk-pci variants.
TYPE_VIRTIO_BLK_PCI_BASE = "virtio-blk-pci-base"
TYPES.register(TypeInfo(TYPE_VIRTIO_BLK_PCI_BASE, TYPE_VIRTIO_PCI, abstract=True, bus_type=TYPE_PCI_BUS))


@device_type("virtio-blk-pci", TYPE_VIRTIO_BLK_PCI_BASE, categories=(Category.STORAGE,), alias="virtio-blk",
             properties=(
    Property("drive", "str", None, "Node name or ID of a block device to use as a backend"),
    Property("serial", "str", None),
    Property("logical_block_size", "size", 0, "A power of two between 512 B and 2 MiB"),
    Property("physical_block_size", "size", 0, "A power of two between 512 B and 2 MiB"),
    Property("min_io_size", "size", 0),
    Property("opt_io_size", "size", 0),
    Property("discard_granularity", "size", UNSPECIFIED),
    Property("cyls", "uint32", 0),
    Property("heads", "uint32", 0),
    Property("secs", "uint32", 0),
    Property("num-queues", "uint16", AUTO_NUM_QUEUES),
    Property("queue-size", "uint16", 256),
    Property("seg-max-adjust", "bool", True),
    Property("config-wce", "bool", True, "on/off"),
    Property("discard", "bool", True, "on/off"),
    Property("write-zeroes", "bool", True, "on/off"),
    Property("report-discard-granularity", "bool", True),
    Property("max-discard-sectors", "uint32", REQUEST_MAX_SECTORS),
    Property("max-write-zeroes-sectors", "uint32", REQUEST_MAX_SECTORS),
    Property("write-cache", "OnOffAuto", "auto", "on/off/auto", enum=("on", "off", "auto")),
    Property("share-rw", "bool", False),
    Property("rerror", "BlockdevOnError", "auto", "Error handling policy, report/ignore/enospc/stop/auto",
             enum=("report", "ignore", "enospc", "stop", "auto")),
    Property("werror", "BlockdevOnError", "auto", "Error handling policy, report/ignore/enospc/stop/auto",
             enum=("report", "ignore", "enospc", "stop", "auto")),
    Property("iothread", "link<iothread>"),
    Property("bootindex", "int32"),
    Property("vectors", "uint32", UNSPECIFIED),
))
class VirtioBlkPci(VirtioPciDevice):
    """``virtio-blk-pci``: the virtio-pci function around a ``VirtioBlk``."""

    pci_class = 0x010000  # PCI_CLASS_STORAGE_SCSI, as QEMU's

    def __init__(self, props: dict[str, Any], dev_id: str | None = None) -> None:
        if props.get("vectors", UNSPECIFIED) == UNSPECIFIED:
            queues = props.get("num-queues", AUTO_NUM_QUEUES)
            props = {**props, "vectors": 2 if queues == AUTO_NUM_QUEUES else queues + 1}
        super().__init__(props, dev_id)
        self._graph: BlockGraph | None = None

    def create_vdev(self, props: dict[str, Any]) -> VirtioDevice:
        """A stand-in until realize has the node; realize replaces it."""
        return UnrealizedBlk([1], 0, CONFIG_MIN_SIZE)

    @property
    def qdev_path(self) -> str:
        """The inner device's QOM path (``query-block``'s ``qdev``)."""
        return f"{self.qom_path}/virtio-backend"

    def realize(self, ctx: DeviceContext) -> None:
        iothread = self.props["iothread"]
        if iothread and (ctx.iothreads is None or iothread not in ctx.iothreads()):
            raise QOMError(f"Device '{iothread}' not found")
        graph = ctx.block() if ctx.block is not None else None
        named, node = _find_drive(graph, self.props["drive"])
        assert graph is not None
        conf = check_conf(self.props, ctx.smp_cpus, node.total_size // SECTOR)
        backend = _attach(graph, named, node, self.props["share-rw"], self.qdev_path)
        if self.props["write-cache"] != "auto":
            backend.write_cache = self.props["write-cache"] == "on"
        rerror, werror = self.props["rerror"], self.props["werror"]
        backend.on_error = (rerror if rerror != "auto" else backend.on_error[0],
                            werror if werror != "auto" else backend.on_error[1])
        vdev = VirtioBlk(conf, backend, ctx.bql if ctx.bql is not None else threading.Lock())
        vdev.events, vdev.runstate = ctx.events, ctx.runstate
        if ctx.runstate is not None:
            ctx.runstate.add_listener(vdev.vm_state_changed)
        vdev.transport = self
        self.vdev = vdev
        self._graph = graph
        super().realize(ctx)

    async def release(self) -> None:
        """Requests end, then the disk lets go of its node; a ``-drive``
        goes with its device (QEMU's blockdev_auto_del)."""
        vdev = self.vdev
        assert isinstance(vdev, VirtioBlk) and self._graph is not None
        await vdev.wait_idle()
        if vdev.runstate is not None:
            vdev.runstate.remove_listener(vdev.vm_state_changed)
        await super().release()
        backend = vdev.backend
        backend.device = None
        if backend.name:
            await self._graph.delete_backend(backend)
        else:
            backend.detach()

