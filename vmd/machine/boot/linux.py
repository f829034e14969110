"""Linux bzImage, booted through the 64-bit entry (x86 boot protocol).

QEMU boots a bzImage in real mode through an option ROM and SeaBIOS; vmd
has no firmware and uses the protocol's 64-bit entry point instead (as
Firecracker does): the protected-mode kernel is loaded at 1 MiB, and the
vCPU starts at load + 0x200 in long mode with identity page tables for the
low 4 GiB, a GDT with __BOOT_CS 0x10 / __BOOT_DS 0x18, interrupts off and
RSI pointing at the zero page (``boot_params``). The zero page holds the
image's setup header, the loader fields, the e820 table and the ACPI RSDP
address. The initrd goes as high as ``initrd_addr_max`` and low RAM allow,
page-aligned, below the area QEMU keeps for ACPI data.
"""

from __future__ import annotations

import struct

from vmd.hw.pc_cmos import pc_ram_split
from vmd.machine.boot import BootError, BootImage, read_file
from vmd.machine.boot.e820 import Entry, pack
from vmd.machine.x86 import EntryState, identity_page_tables

# Guest addresses vmd uses for the boot data.
PAGE_TABLES = 0x1000  # 6 pages: PML4, PDPT, 4 page directories
ZERO_PAGE = 0x7000
STACK_TOP = 0x8FF0
CMDLINE = 0x20000
KERNEL = 0x100000
ACPI_DATA_SIZE = 0x28000  # what QEMU's pc keeps below the top of low RAM

# Offsets in the setup header (in the file and in boot_params).
HDR_SETUP_SECTS = 0x1F1
HDR_JUMP = 0x200
HDR_MAGIC = 0x202
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_XLOADFLAGS = 0x236
HDR_CMDLINE_SIZE = 0x238
# Other boot_params fields.
BP_ACPI_RSDP = 0x070
BP_E820_ENTRIES = 0x1E8
BP_E820_TABLE = 0x2D0
E820_MAX = 128

LOADER_QEMU = 0xB0
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
LOADED_HIGH = 1 << 0


def is_bzimage(image: bytes) -> bool:
    return len(image) > 0x240 and image[HDR_MAGIC:HDR_MAGIC + 4] == b"HdrS"


def zero_page(image: bytes, cmdline_addr: int, initrd: tuple[int, int],
              e820: list[Entry], rsdp: int) -> bytes:
    """``boot_params``: the file's setup header plus what the loader fills in."""
    params = bytearray(4096)
    header_end = HDR_JUMP + 2 + image[HDR_JUMP + 1]
    params[HDR_SETUP_SECTS:header_end] = image[HDR_SETUP_SECTS:header_end]
    params[HDR_TYPE_OF_LOADER] = LOADER_QEMU
    params[HDR_LOADFLAGS] |= LOADED_HIGH
    struct.pack_into("<I", params, HDR_CMD_LINE_PTR, cmdline_addr)
    struct.pack_into("<2I", params, HDR_RAMDISK_IMAGE, *initrd)
    struct.pack_into("<Q", params, BP_ACPI_RSDP, rsdp)
    entries = e820[:E820_MAX]
    params[BP_E820_ENTRIES] = len(entries)
    table = pack(entries)
    params[BP_E820_TABLE:BP_E820_TABLE + len(table)] = table
    return bytes(params)


def initrd_address(image: bytes, size: int, ram_size: int) -> int:
    """Where QEMU's x86_load_linux puts an initrd of ``size`` bytes."""
    version = struct.unpack_from("<H", image, HDR_VERSION)[0]
    xloadflags = struct.unpack_from("<H", image, HDR_XLOADFLAGS)[0]
    if version >= 0x20C and xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G:
        highest = 0xFFFFFFFF
    elif version >= 0x203:
        highest = struct.unpack_from("<I", image, HDR_INITRD_ADDR_MAX)[0]
    else:
        highest = 0x37FFFFFF
    below_4g = pc_ram_split(ram_size)[0]
    highest = min(highest, below_4g - ACPI_DATA_SIZE - 1)
    if size >= highest:
        raise BootError(f"initrd is too large, cannot support. (max: {highest}, need {size})")
    return (highest - size) & ~4095


def load(image: bytes, cmdline: str, initrd_path: str | None, ram_size: int,
         e820: list[Entry], rsdp: int, gdt_base: int) -> BootImage:
    version = struct.unpack_from("<H", image, HDR_VERSION)[0]
    xloadflags = struct.unpack_from("<H", image, HDR_XLOADFLAGS)[0]
    if version < 0x20C or not xloadflags & XLF_KERNEL_64:
        raise BootError("this Linux kernel has no 64-bit entry point (boot protocol 2.12+ needed)")
    cmdline_size = struct.unpack_from("<I", image, HDR_CMDLINE_SIZE)[0]
    encoded = cmdline.encode()
    if len(encoded) > cmdline_size:
        raise BootError("kernel command line too long")
    setup_sects = image[HDR_SETUP_SECTS] or 4
    kernel = image[(setup_sects + 1) * 512:]
    blobs = [(KERNEL, kernel), (CMDLINE, encoded + b"\0"),
             (PAGE_TABLES, identity_page_tables(PAGE_TABLES))]
    initrd = (0, 0)
    if initrd_path is not None:
        data = read_file(initrd_path, "initrd")
        initrd = (initrd_address(image, len(data), ram_size), len(data))
        blobs.append((initrd[0], data))
    blobs.append((ZERO_PAGE, zero_page(image, CMDLINE, initrd, e820, rsdp)))
    entry = EntryState(rip=KERNEL + 0x200, regs={"rsi": ZERO_PAGE, "rsp": STACK_TOP}, long_mode=True,
                       gdt_base=gdt_base, code_selector=0x10, data_selector=0x18,
                       page_table=PAGE_TABLES)
    return BootImage(entry, blobs)
