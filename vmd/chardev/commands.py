"""QMP commands for chardevs (char.json)."""

from __future__ import annotations

from typing import Any

from vmd._generated.types import ChardevBackend, ChardevBackendInfo, ChardevInfo, ChardevReturn, DataFormat
from vmd.chardev.registry import backend_names
from vmd.qmp.errors import QMPError


def qmp_query_chardev(ctx: Any) -> list[ChardevInfo]:
    return [ChardevInfo(label=chardev.id, filename=chardev.filename(),
                        frontend_open=chardev.frontend_open)
            for chardev in ctx.daemon.chardevs]


def qmp_query_chardev_backends(ctx: Any) -> list[ChardevBackendInfo]:
    return [ChardevBackendInfo(name=name) for name in backend_names()]


async def qmp_chardev_add(ctx: Any, id: str, backend: ChardevBackend
                          ) -> ChardevReturn:
    chardev = await ctx.daemon.chardevs.add(id, backend)
    return ChardevReturn(**chardev.extra_return())


async def qmp_chardev_change(ctx: Any, id: str, backend: ChardevBackend
                             ) -> ChardevReturn:
    chardev = await ctx.daemon.chardevs.change(id, backend)
    return ChardevReturn(**chardev.extra_return())


async def qmp_chardev_remove(ctx: Any, id: str) -> None:
    await ctx.daemon.chardevs.remove(id)


def qmp_chardev_send_break(ctx: Any, id: str) -> None:
    ctx.daemon.chardevs.find(id).send_break()


def _ringbuf(ctx: Any, device: str) -> Any:
    from vmd.chardev.ringbuf import RingbufChardev
    chardev = ctx.daemon.chardevs.get(device)
    if chardev is None:
        raise QMPError(f"Device '{device}' not found")
    if not isinstance(chardev, RingbufChardev):
        raise QMPError(f"{device} is not a ringbuf device")
    return chardev


def qmp_ringbuf_write(ctx: Any, device: str, data: str,
                      format: DataFormat | None) -> None:
    from vmd.chardev.ringbuf import decode_input
    _ringbuf(ctx, device).write_data(decode_input(data, format))


def qmp_ringbuf_read(ctx: Any, device: str, size: int,
                     format: DataFormat | None) -> str:
    from vmd.chardev.ringbuf import encode_output
    if size <= 0:
        raise QMPError("size must be greater than zero")
    return encode_output(_ringbuf(ctx, device).read_data(size), format)
