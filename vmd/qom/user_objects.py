"""User-created objects: ``-object`` and ``object-add``/``object-del``.

QEMU keeps them under ``/objects`` in the composition tree. vmd has the
two types libvirt puts on every domain's command line, with QEMU's checks
and texts:

* ``secret``: libvirt's master key (``-object secret,id=masterKey0,
  format=raw,file=...``). vmd cannot decrypt a secret with another
  (``keyid``), so that is refused rather than ignored;
* ``memory-backend-ram``: the guest's RAM, named by ``-machine
  memory-backend=ID``. vmd's RAM is private anonymous memory, so the
  backend only says how much (its size must be ``-m``'s, as in QEMU);
  shared, preallocated, mergeable or dumped memory is refused;
* ``throttle-group``: limits shared by ``throttle`` filter nodes and
  BlockBackends with I/O limits (``vmd.block.throttle_group``); one in use
  cannot be deleted;
* ``iothread``: named by a device's ``iothread=`` (virtio-blk). vmd's
  block layer runs on the main loop, so the object is a name only: the
  devices that name it keep their queues on the main loop.

``-object`` runs through ``object-add`` (``vmd.system.startup_commands``),
so both paths check the same way. Reading ``file`` happens on a worker
thread: the loop never waits on a disk.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
from typing import Any

from vmd._generated.types import (
    IOThreadInfo,
    IothreadProperties,
    MemoryBackendProperties,
    ObjectOptions,
    QCryptoSecretFormat,
    SecretProperties,
    ThrottleGroupProperties,
)
from vmd.errors import QMPError
from vmd.qom.objects import ensure_registered
from vmd.qom.tree import IOTHREAD_TYPE, RAM_BACKEND_TYPE, SECRET_TYPE

#: QEMU's IOTHREAD_POLL_MAX_NS_DEFAULT on Linux.
POLL_MAX_NS_DEFAULT = 32768


class Secret:
    """A loaded ``secret``: its bytes, decoded from ``format``."""

    type_name = SECRET_TYPE

    def __init__(self, value: bytes) -> None:
        self.value = value


class RamBackend:
    """A ``memory-backend-ram``: the size of the guest RAM it stands for."""

    type_name = RAM_BACKEND_TYPE

    def __init__(self, size: int) -> None:
        self.size = size


class IoThread:
    """An ``iothread``: a name devices may give (their work stays on the main loop).

    Its polling properties are kept for ``query-iothreads`` (QEMU's defaults
    otherwise); its thread is the main loop's.
    """

    type_name = IOTHREAD_TYPE

    def __init__(self, props: IothreadProperties) -> None:
        self.poll_max_ns = props.poll_max_ns if props.poll_max_ns is not None else POLL_MAX_NS_DEFAULT
        self.poll_grow = props.poll_grow or 0
        self.poll_shrink = props.poll_shrink or 0
        self.aio_max_batch = props.aio_max_batch or 0


UserObject = Any   # Secret, RamBackend, IoThread or a ThrottleGroup


class UserObjects:
    """The daemon's user-created objects by id (QEMU's ``/objects``)."""

    def __init__(self) -> None:
        self._objects: dict[str, UserObject] = {}
        #: QEMU makes ``/objects`` with the first object and keeps it.
        self.container = False

    def __iter__(self) -> Any:
        return iter(self._objects.items())

    def add(self, object_id: str, obj: UserObject) -> None:
        if object_id in self._objects:
            raise QMPError(f"attempt to add duplicate property '{object_id}' to object "
                           "(type 'container')")
        self._objects[object_id] = obj
        self.container = True

    def get(self, object_id: str) -> UserObject | None:
        return self._objects.get(object_id)

    def remove(self, object_id: str) -> None:
        obj = self._objects.get(object_id)
        if obj is None:
            raise QMPError(f"object '{object_id}' not found")
        if obj is self.in_use or getattr(obj, "busy", False):
            raise QMPError(f"object '{object_id}' is in use, can not be deleted")
        del self._objects[object_id]
        if getattr(obj, "type_name", None) == "throttle-group":
            from vmd.block.throttle_group import GROUPS
            del GROUPS[object_id]

    #: The object the machine uses (its memory backend), not deletable.
    in_use: UserObject | None = None


async def _load_secret(props: SecretProperties) -> Secret:
    """QEMU's qcrypto_secret_load_data and format decoding."""
    if props.keyid is not None or props.iv is not None:
        raise QMPError("vmd cannot decrypt secrets: 'keyid' and 'iv' are not supported")
    if props.data is not None and props.file is not None:
        raise QMPError("'file' and 'data' are mutually exclusive")
    if props.file is not None:
        try:
            data = await asyncio.to_thread(_read, props.file)
        except OSError as error:
            raise QMPError(f"Unable to read {props.file}: Failed to open file "
                           f"\u201c{props.file}\u201d: {error.strerror}") from None
    elif props.data is not None:
        data = props.data.encode()
    else:
        raise QMPError("Either 'file' or 'data' must be provided")
    if props.format == QCryptoSecretFormat.BASE64:
        try:
            data = base64.b64decode(data, validate=True)
        except binascii.Error:
            raise QMPError("Base64 data contains invalid characters") from None
    return Secret(data)


def _ram_backend(props: MemoryBackendProperties) -> RamBackend:
    """Only what vmd's RAM is: private, not preallocated, merged or dumped."""
    for name in ("share", "prealloc", "merge", "dump"):
        if getattr(props, name):
            raise QMPError(f"memory-backend-ram: {name}=on is not supported by vmd "
                           "(guest RAM is private anonymous memory)")
    if props.size == 0:
        raise QMPError("property 'size' of memory-backend-ram doesn't take value '0'")
    return RamBackend(props.size)


def use_machine_memory_backend(objects: UserObjects, backend_id: str, ram_size: int) -> None:
    """``-machine memory-backend=ID``: the backend must be RAM of ``-m``'s size."""
    backend = objects.get(backend_id)
    if not isinstance(backend, RamBackend):
        raise QMPError(f"Device '{backend_id}' not found")
    if backend.size != ram_size:
        raise QMPError("Machine memory size does not match the size of the memory backend")
    objects.in_use = backend


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


async def qmp_object_add(ctx: Any, options: ObjectOptions) -> None:
    ensure_registered()
    obj: UserObject
    if isinstance(options.u, SecretProperties):
        obj = await _load_secret(options.u)
    elif isinstance(options.u, ThrottleGroupProperties):
        from vmd.block.throttle_group import new_group
        obj = new_group(options.id, options.u)
    elif isinstance(options.u, IothreadProperties):
        obj = IoThread(options.u)
    else:
        assert isinstance(options.u, MemoryBackendProperties)
        obj = _ram_backend(options.u)
    ctx.daemon.objects.add(options.id, obj)
    if getattr(obj, "type_name", None) == "throttle-group":
        from vmd.block.throttle_group import GROUPS
        GROUPS[options.id] = obj


def qmp_object_del(ctx: Any, id: str) -> None:
    ctx.daemon.objects.remove(id)


def qmp_query_iothreads(ctx: Any) -> list[IOThreadInfo]:
    """Newest first, as QEMU lists its ``/objects`` children."""
    return [IOThreadInfo(id=object_id, thread_id=threading.main_thread().native_id or 0,
                         poll_max_ns=obj.poll_max_ns, poll_grow=obj.poll_grow, poll_shrink=obj.poll_shrink,
                         aio_max_batch=obj.aio_max_batch)
            for object_id, obj in reversed(list(ctx.daemon.objects)) if isinstance(obj, IoThread)]
