"""Boot data vmd writes for a guest, checked byte by byte.

The e820 tables are what QEMU 7.2 (SeaBIOS) gives a multiboot guest on
this host, recorded with the demo guest's ``mem`` command; the boot_params
offsets are those of Linux's Documentation/arch/x86/boot.rst and
``struct boot_params``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vmd.accel import cpuid
from vmd.machine.boot import BootError, acpi, e820, linux, multiboot

MIB = 1 << 20

# -m MiB -> (mem_upper KiB, e820 table) as QEMU's guest sees them.
_COMMON_LOW = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2)]
_COMMON_HIGH = [(0xFEFFC000, 0x4000, 2), (0xFFFC0000, 0x40000, 2)]
_HT = [(0xFD00000000, 0x300000000, 2)]
QEMU_MAPS = {
    16: (15232, _COMMON_LOW + [(0x100000, 0xEE0000, 1), (0xFE0000, 0x20000, 2)] + _COMMON_HIGH + _HT),
    128: (129920, _COMMON_LOW + [(0x100000, 0x7EE0000, 1), (0x7FE0000, 0x20000, 2)] + _COMMON_HIGH + _HT),
    1000: (1022848, _COMMON_LOW + [(0x100000, 0x3E6E0000, 1), (0x3E7E0000, 0x20000, 2)] + _COMMON_HIGH + _HT),
    4096: (3144576, _COMMON_LOW + [(0x100000, 0xBFEE0000, 1), (0xBFFE0000, 0x20000, 2)] + _COMMON_HIGH
           + [(0x100000000, 0x40000000, 1)] + _HT),
}


@pytest.mark.parametrize("mib", sorted(QEMU_MAPS))
def test_memory_map_is_qemus(mib: int) -> None:
    upper, table = QEMU_MAPS[mib]
    assert e820.memory_map(mib * MIB) == table
    assert e820.upper_memory_kib(table) == upper


def _aout_kludge_image(code: bytes) -> bytes:
    """A multiboot image with the address fields: loaded at 1 MiB, entry after the header."""
    flags = 0x00010003
    header = struct.pack("<3I5I", multiboot.HEADER_MAGIC, flags, -(multiboot.HEADER_MAGIC + flags) & 0xFFFFFFFF,
                         0x100000, 0x100000, 0, 0, 0x100020)
    return header.ljust(0x20, b"\0") + code


def test_multiboot_info_matches_qemus_layout(tmp_path: Path) -> None:
    module = tmp_path / "mod.bin"
    module.write_bytes(b"module data")
    image = _aout_kludge_image(b"\xf4")
    header = multiboot.find_header(image)
    assert header == (0, 0x00010003)
    boot = multiboot.load("kernel.elf", image, header, "console=x", f"{module} arg", 128 * MIB, amd=True)
    blobs = dict(boot.blobs)
    assert boot.entry.rip == 0x100020
    assert boot.entry.regs["rax"] == 0x2BADB002 and boot.entry.regs["rbx"] == 0x9500
    info = blobs[0x9500]
    flags, lower, upper, device, cmdline, mods_count, mods_addr = struct.unpack_from("<7I", info)
    assert flags == 0x24F and lower == 639 and upper == 129920 and device == 0x8000FFFF
    mmap_length, mmap_addr = struct.unpack_from("<2I", info, 44)
    assert mmap_addr == 0x9000 and mmap_length == 8 * 24
    assert struct.unpack_from("<IQQI", blobs[0x9000], 0) == (20, 0, 0x9FC00, 1)
    kernel = blobs[0x100000]
    def string_at(address: int) -> bytes:
        offset = address - 0x100000
        return kernel[offset:kernel.index(b"\0", offset)]
    assert string_at(cmdline) == b"kernel.elf console=x"
    assert string_at(struct.unpack_from("<I", info, 64)[0]) == b"qemu"
    assert mods_count == 1 and mods_addr == 0x101000  # after the page-aligned kernel
    start, end, mod_cmdline = struct.unpack_from("<3I", kernel, mods_addr - 0x100000)
    assert start % 4096 == 0 and end - start == len(b"module data")
    assert kernel[start - 0x100000:end - 0x100000] == b"module data"
    assert string_at(mod_cmdline) == f"{module} arg".encode()


def test_multiboot_refuses_64_bit_elf() -> None:
    elf = bytearray(b"\x7fELF".ljust(64, b"\0"))
    struct.pack_into("<H", elf, 18, 62)
    image = bytes(elf) + struct.pack("<3I", multiboot.HEADER_MAGIC, 0, -multiboot.HEADER_MAGIC & 0xFFFFFFFF)
    header = multiboot.find_header(image)
    assert header is not None
    with pytest.raises(BootError, match="Cannot load x86-64 image, give a 32bit one."):
        multiboot.load("k", image, header, "", None, 32 * MIB, amd=True)


def _bzimage(version: int = 0x020F, xloadflags: int = 0x7F) -> bytes:
    image = bytearray(0x2000)
    image[0x1F1] = 1                                   # setup_sects: setup = 2 sectors
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x200:0x202] = bytes([0xEB, 0x6A])           # jump: header ends at 0x26C
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, version)
    image[0x211] = 0x01
    struct.pack_into("<I", image, 0x22C, 0x7FFFFFFF)   # initrd_addr_max
    struct.pack_into("<I", image, 0x230, 0x200000)     # kernel_alignment
    struct.pack_into("<H", image, 0x236, xloadflags)
    struct.pack_into("<I", image, 0x238, 2047)         # cmdline_size
    struct.pack_into("<I", image, 0x260, 0x1000000)    # init_size
    image[0x400:0x404] = b"KERN"                       # protected-mode code
    return bytes(image)


def test_linux_boot_params_bytes(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\x01" * 5000)
    table = e820.memory_map(256 * MIB)
    image = _bzimage(xloadflags=0x01)
    boot = linux.load(image, "console=ttyS0", str(initrd), 256 * MIB, table, 0xF0000, 0xC0100)
    blobs = dict(boot.blobs)
    assert blobs[0x100000][:4] == b"KERN"                  # (setup_sects + 1) * 512 skipped
    assert blobs[0x20000] == b"console=ttyS0\0"
    params = blobs[0x7000]
    assert len(params) == 4096
    assert params[0x1F1:0x26C] != bytes(0x26C - 0x1F1)
    assert params[0x202:0x206] == b"HdrS" and params[0x230:0x234] == image[0x230:0x234]
    assert params[0x210] == 0xB0                           # type_of_loader
    assert params[0x211] & 1                               # LOADED_HIGH
    assert struct.unpack_from("<I", params, 0x228)[0] == 0x20000
    ramdisk_image, ramdisk_size = struct.unpack_from("<2I", params, 0x218)
    below_acpi = 256 * MIB - linux.ACPI_DATA_SIZE - 1
    assert ramdisk_size == 5000 and ramdisk_image == (below_acpi - 5000) & ~4095
    assert blobs[ramdisk_image] == b"\x01" * 5000
    assert struct.unpack_from("<Q", params, 0x70)[0] == 0xF0000  # acpi_rsdp_addr
    assert params[0x1E8] == len(table)
    for index, entry in enumerate(table):
        assert struct.unpack_from("<QQI", params, 0x2D0 + 20 * index) == entry
    assert params[0x1EF] == 0                              # sentinel stays zero
    assert params[0x26C:0x2D0] == bytes(0x2D0 - 0x26C)
    entry = boot.entry
    assert entry.long_mode and entry.rip == 0x100200 and entry.regs["rsi"] == 0x7000
    assert (entry.code_selector, entry.data_selector) == (0x10, 0x18)
    tables = dict([blob for blob in boot.blobs if blob[0] == linux.PAGE_TABLES])[linux.PAGE_TABLES]
    assert struct.unpack_from("<Q", tables, 0)[0] == 0x2003          # PML4[0] -> PDPT
    assert struct.unpack_from("<Q", tables, 0x2000 + 8 * 5)[0] == (5 << 21) | 0x83


def test_linux_initrd_above_4g_capable_kernel_still_below_low_ram() -> None:
    assert linux.initrd_address(_bzimage(), 4096, 64 * MIB) == (64 * MIB - linux.ACPI_DATA_SIZE - 1 - 4096) & ~4095


def test_linux_needs_the_64_bit_entry() -> None:
    with pytest.raises(BootError, match="64-bit entry"):
        linux.load(_bzimage(xloadflags=0), "", None, 64 * MIB, [], 0, 0)


def test_acpi_tables_are_well_formed() -> None:
    blobs = dict(acpi.tables(2))
    rsdp = blobs[acpi.RSDP]
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    assert struct.unpack_from("<Q", rsdp, 24)[0] == acpi.XSDT
    for address in (acpi.XSDT, acpi.FADT, acpi.MADT, acpi.DSDT):
        table = blobs[address]
        assert struct.unpack_from("<I", table, 4)[0] == len(table) and sum(table) % 256 == 0
    fadt = blobs[acpi.FADT]
    assert struct.unpack_from("<I", fadt, 64)[0] == 0x604 and fadt[89] == 2  # PM1a_CNT_BLK, PM1_CNT_LEN
    assert struct.unpack_from("<H", fadt, 46)[0] == 9                         # SCI
    madt = blobs[acpi.MADT]
    assert madt[44:52] == bytes([0, 8, 0, 0, 1, 0, 0, 0]) and madt[52:54] == bytes([0, 8])
    assert b"_S5_" in blobs[acpi.DSDT]


def test_qemu64_cpuid_model() -> None:
    supported = [{"function": 0, "index": 0, "flags": 0, "eax": 0x10, "ebx": 0, "ecx": 0, "edx": 0},
                 {"function": 1, "index": 0, "flags": 0, "eax": 0, "ebx": 0, "ecx": 0xFFFFFFFF,
                  "edx": 0xFFFFFFFF},
                 {"function": 7, "index": 0, "flags": 1, "eax": 0, "ebx": 0xFF, "ecx": 0, "edx": 0}]
    table = cpuid.for_vcpu(cpuid.model_cpuid("qemu64", supported), apic_id=1, cpus=2)
    leaves = {entry["function"]: entry for entry in table}
    assert 7 not in leaves
    assert struct.pack("<3I", leaves[0]["ebx"], leaves[0]["edx"], leaves[0]["ecx"]) == b"AuthenticAMD"
    assert leaves[1]["eax"] == 0x00060FB1 and leaves[1]["ebx"] >> 24 == 1
    assert leaves[1]["ecx"] & (1 << 31) and not leaves[1]["ecx"] & (1 << 26)   # hypervisor, no XSAVE
    assert cpuid.model_name("host,+x2apic") == "max"
    with pytest.raises(cpuid.UnknownModel, match="unable to find CPU model 'foo'"):
        cpuid.model_name("foo")
