"""The ``ringbuf`` chardev (alias ``memory``): output kept in memory.

Front-end output goes into a ring of ``size`` bytes (default 65536, a
power of two) that keeps the newest bytes, read with ``ringbuf-read``.
``ringbuf-write`` puts data into the same ring, as QEMU's
``qmp_ringbuf_write`` does (it calls the backend's own write), so it comes
back from ``ringbuf-read``; the front end never receives input.

QEMU accepts ``size: 0`` (0 passes its power-of-two test) and then writes
past its empty buffer; here such a ring simply holds nothing.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from vmd._generated.types import DataFormat
from vmd.chardev.base import Chardev, ChardevError
from vmd.chardev.registry import ChardevRegistry, backend
from vmd.qmp.errors import QMPError

DEFAULT_SIZE = 65536


class RingbufChardev(Chardev):
    kind = "ringbuf"

    def __init__(self, chardev_id: str, size: int = DEFAULT_SIZE, kind: str = "ringbuf") -> None:
        super().__init__(chardev_id)
        if size & (size - 1):
            raise ChardevError("size of ringbuf chardev must be power of two")
        self.kind = kind
        self.size = size
        # The unread bytes, oldest first; never longer than ``size``.
        # Deleting from the front of a bytearray is cheap in CPython.
        self._data = bytearray()

    async def open(self) -> None:
        self.set_connected(True)

    def write_data(self, data: bytes) -> None:
        """Append, dropping the oldest bytes beyond ``size``."""
        self._data += data[-self.size:] if self.size else b""
        excess = len(self._data) - self.size
        if excess > 0:
            del self._data[:excess]

    def read_data(self, size: int) -> bytes:
        """Take up to ``size`` of the oldest bytes."""
        data = bytes(self._data[:size])
        del self._data[:size]
        return data

    def _write(self, data: bytes) -> int:
        self.write_data(data)
        return len(data)


def _create(chardev_id: str, options: Any, kind: str) -> Chardev:
    size = getattr(options, "size", None)
    return RingbufChardev(chardev_id, DEFAULT_SIZE if size is None else size, kind)


@backend("ringbuf")
def _create_ringbuf(chardev_id: str, options: Any, registry: ChardevRegistry) -> Chardev:
    return _create(chardev_id, options, "ringbuf")


@backend("memory")
def _create_memory(chardev_id: str, options: Any, registry: ChardevRegistry) -> Chardev:
    return _create(chardev_id, options, "memory")


_NUL = b"\xc0\x80"

# base64 as QEMU's qbase64_decode checks it: these characters only.
_BASE64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n")


def decode_input(data: str, format: DataFormat | None) -> bytes:
    """``ringbuf-write`` data as bytes."""
    if format != DataFormat.BASE64:
        # QEMU's JSON parser stores U+0000 as the overlong pair C0 80, so it
        # is not taken for the end of the C string.
        return data.encode("utf-8", "replace").replace(b"\x00", _NUL)
    raw = data.encode("utf-8", "replace")
    if not _BASE64_CHARS.issuperset(raw):
        raise QMPError("Base64 data contains invalid characters")
    return _glib_base64_decode(raw)


def _glib_base64_decode(raw: bytes) -> bytes:
    """g_base64_decode: groups of four, '=' counts as zero, a short tail
    is ignored, and a '=' in a group's last two places drops a byte."""
    chars = raw.replace(b"\n", b"")
    whole = len(chars) - len(chars) % 4
    out = bytearray()
    for start in range(0, whole, 4):
        group = chars[start:start + 4]
        try:
            three = base64.b64decode(group.replace(b"=", b"A"), validate=True)
        except binascii.Error:  # pragma: no cover - the alphabet was checked
            raise QMPError("Base64 data contains invalid characters") from None
        keep = [True, group[2:3] != b"=", group[3:4] != b"="]
        out += bytes(b for b, k in zip(three, keep, strict=True) if k)
    return bytes(out)


def encode_output(data: bytes, format: DataFormat | None) -> str:
    """``ringbuf-read``'s reply string."""
    if format == DataFormat.BASE64:
        return base64.b64encode(data).decode("ascii")
    # QEMU returns the bytes as a C string: a NUL byte ends it (the bytes
    # after it are consumed all the same); its JSON writer turns C0 80 back
    # into U+0000 and invalid UTF-8 into U+FFFD.
    text = data.split(b"\x00", 1)[0]
    return "\x00".join(part.decode("utf-8", "replace") for part in text.split(_NUL))
