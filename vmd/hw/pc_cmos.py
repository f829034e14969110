"""The CMOS bytes the pc board fills for firmware (QEMU's pc_cmos_init).

SeaBIOS and old boot loaders read the memory size from CMOS RAM; a guest
booted by ``-kernel`` can read the same bytes. All sizes come from the
RAM below and above 4 GiB (``pc_ram_split``):

* 0x15/0x16: base memory in KiB, at most 640;
* 0x17/0x18 and 0x30/0x31: KiB above 1 MiB (below 4 GiB), at most 65535;
* 0x34/0x35: 64 KiB blocks above 16 MiB (below 4 GiB), at most 65535;
* 0x5b/0x5c/0x5d: 64 KiB blocks above 4 GiB;
* 0x14: equipment byte, FPU and PS/2 mouse present (no floppy drive);
* 0x3d/0x38: boot order, QEMU's default ``cad`` (disk, floppy, CD-ROM);
* 0x5f: number of CPUs minus one.
"""

from __future__ import annotations

from vmd.hw.rtc import Mc146818

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# pc-i440fx: RAM from 3.5 GiB up moves above 4 GiB, at a 1 GiB boundary
# (``gigabyte_align``, the default of current pc machine types).
_LOWMEM_LIMIT = 0xE000_0000
_LOWMEM_ALIGNED = 0xC000_0000

_BOOT_DEVICES = {"a": 0x01, "c": 0x02, "d": 0x03, "n": 0x04}


def pc_ram_split(ram_size: int) -> tuple[int, int]:
    """(below 4 GiB, above 4 GiB) for ``-M pc`` (QEMU's pc_init1)."""
    if ram_size >= _LOWMEM_LIMIT:
        return _LOWMEM_ALIGNED, ram_size - _LOWMEM_ALIGNED
    return ram_size, 0


def _word(rtc: Mc146818, low: int, value: int) -> None:
    rtc.set_cmos(low, value)
    rtc.set_cmos(low + 1, value >> 8)


def pc_cmos_init(rtc: Mc146818, ram_size: int, smp_cpus: int,
                 boot_order: str = "cad") -> None:
    """Fill ``rtc``'s CMOS RAM as QEMU's pc board does."""
    below, above = pc_ram_split(ram_size)
    _word(rtc, 0x15, min(below // KIB, 640))
    extended = min((below - MIB) // KIB if below > MIB else 0, 65535)
    _word(rtc, 0x17, extended)
    _word(rtc, 0x30, extended)
    _word(rtc, 0x34, min((below - 16 * MIB) // (64 * KIB) if below > 16 * MIB else 0, 65535))
    blocks = above // (64 * KIB)
    _word(rtc, 0x5B, blocks)
    rtc.set_cmos(0x5D, blocks >> 16)
    rtc.set_cmos(0x14, 0x02 | 0x04)
    order = [_BOOT_DEVICES.get(letter, 0) for letter in boot_order[:3].ljust(3, "\0")]
    rtc.set_cmos(0x3D, (order[1] << 4) | order[0])
    rtc.set_cmos(0x38, order[2] << 4)
    rtc.set_cmos(0x5F, smp_cpus - 1)
