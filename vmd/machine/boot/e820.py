"""The PC memory map a guest finds (BIOS e820 on QEMU's pc board).

On QEMU the guest sees SeaBIOS's e820 table: RAM below the EBDA, the EBDA
and BIOS areas reserved, RAM from 1 MiB up to 128 KiB below the end of low
RAM (SeaBIOS keeps its tables there), the KVM TSS/identity-map pages, the
BIOS ROM, on AMD CPUs the HyperTransport hole below 1 TiB, and RAM above
4 GiB. vmd builds the same table for both multiboot and Linux, so a guest
that prints its memory map prints the same under both.
"""

from __future__ import annotations

import struct

from vmd.hw.pc_cmos import pc_ram_split

RAM = 1
RESERVED = 2
ACPI = 3

EBDA = 0x9FC00
BIOS_TABLES = 0x20000  # reserved by SeaBIOS at the top of low RAM
KVM_PAGES = (0xFEFFC000, 0x4000)  # identity map + TSS (QEMU's e820 entry)
BIOS_ROM = (0xFFFC0000, 0x40000)
AMD_HT_HOLE = (0xFD00000000, 0x300000000)

Entry = tuple[int, int, int]  # address, length, type


def memory_map(ram_size: int, amd: bool = True) -> list[Entry]:
    below, above = pc_ram_split(ram_size)
    table: list[Entry] = [
        (0, EBDA, RAM),
        (EBDA, 0xA0000 - EBDA, RESERVED),
        (0xF0000, 0x10000, RESERVED),
        (0x100000, below - BIOS_TABLES - 0x100000, RAM),
        (below - BIOS_TABLES, BIOS_TABLES, RESERVED),
        (*KVM_PAGES, RESERVED),
        (*BIOS_ROM, RESERVED),
    ]
    if amd:
        table.append((*AMD_HT_HOLE, RESERVED))
    if above:
        table.append((1 << 32, above, RAM))
    return sorted(table)


def pack(table: list[Entry]) -> bytes:
    """The 20-byte ``{u64 addr; u64 size; u32 type}`` records of boot_params."""
    return b"".join(struct.pack("<QQI", *entry) for entry in table)


def upper_memory_kib(table: list[Entry]) -> int:
    """Contiguous RAM from 1 MiB, in KiB (multiboot's mem_upper)."""
    end = 0x100000
    grown = True
    while grown:
        grown = False
        for address, length, kind in table:
            if kind == RAM and address < 1 << 32 and address <= end < address + length:
                end, grown = address + length, True
    return (end - 0x100000) // 1024
