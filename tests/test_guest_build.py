"""Every test guest builds with the system gcc into a multiboot v1 ELF."""

from __future__ import annotations

import shutil
import struct

import pytest

from tests.guests.build import build_guest, guest_names

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
MULTIBOOT_MAGIC = 0x1BADB002


@pytest.mark.parametrize("name", guest_names())
def test_guest_is_a_32bit_multiboot_elf(name: str) -> None:
    image = build_guest(name).read_bytes()
    assert image[:5] == b"\x7fELF\x01"  # 32-bit: QEMU's multiboot loader takes no other
    header = image[:8192]
    for offset in range(0, len(header) - 12, 4):
        magic, flags, checksum = struct.unpack_from("<III", header, offset)
        if magic == MULTIBOOT_MAGIC:
            assert (magic + flags + checksum) & 0xFFFFFFFF == 0
            assert flags & 0x10000 == 0  # loaded as ELF, not with the a.out kludge
            return
    pytest.fail("no multiboot header in the first 8 KiB")


def test_build_is_cached() -> None:
    first = build_guest("hello")
    mtime = first.stat().st_mtime_ns
    assert build_guest("hello") == first and first.stat().st_mtime_ns == mtime
