"""Multiboot (v1) images, loaded as QEMU's ``load_multiboot`` and option ROM do.

What the guest finds (the multiboot spec's machine state, as QEMU leaves
it): 32-bit protected mode, paging off, flat segments (CS 0x08, data 0x10
from QEMU's option-ROM GDT), interrupts off, EAX = 0x2BADB002, EBX = the
info structure at 0x9500. The info has QEMU's flags (memory, boot device,
command line, modules, memory map, boot loader name "qemu"); the memory map
at 0x9000 is the PC's e820 table; ``mem_lower`` is 639 KiB (below the EBDA)
and ``mem_upper`` the RAM contiguous from 1 MiB. The command line is the
kernel's file name, a space and ``-append``; each comma-separated
``-initrd`` file (",," escapes a comma; text after a space is the module's
command line) is a page-aligned module after the kernel, as in QEMU.
"""

from __future__ import annotations

import struct

from vmd.machine.boot import BootError, BootImage, read_file
from vmd.machine.boot.e820 import memory_map, upper_memory_kib
from vmd.machine.x86 import EntryState

HEADER_MAGIC = 0x1BADB002
BOOT_MAGIC = 0x2BADB002
SEARCH = 8192
FLAG_VIDEO = 1 << 2
FLAG_ADDRESS = 1 << 16

MMAP_ADDR = 0x9000
INFO_ADDR = 0x9500
INFO_SIZE = 88
MODULE_SIZE = 16
MEM_LOWER_KIB = 639
BOOT_DEVICE = 0x8000FFFF
LOADER_NAME = b"qemu"

INFO_FLAGS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
PAGE = 4096

ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62
PT_LOAD = 1


def find_header(image: bytes) -> tuple[int, int] | None:
    """(offset, flags) of a valid multiboot header in the first 8 KiB."""
    start = image[:SEARCH].ljust(SEARCH, b"\0")
    for offset in range(0, SEARCH - 48, 4):
        magic, flags, checksum = struct.unpack_from("<3I", start, offset)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return offset, flags
    return None


def _align(value: int) -> int:
    return (value + PAGE - 1) & ~(PAGE - 1)


def load(path: str, image: bytes, header: tuple[int, int], cmdline: str,
         initrd: str | None, ram_size: int, amd: bool) -> BootImage:
    offset, flags = header
    if flags & FLAG_ADDRESS:
        load_addr, kernel, entry = _load_aout_kludge(image, offset)
    else:
        load_addr, kernel, entry = _load_elf(image)
    buffer = bytearray(kernel)
    buffer += bytes(_align(len(buffer)) - len(buffer))
    modules = _split_modules(initrd) if initrd else []
    reserved = len(path) + 1 + len(cmdline.encode()) + 1 + (len(initrd.encode()) + 1 if initrd else 0)
    table = buffer_layout(buffer, load_addr, path, cmdline, modules, reserved)
    mmap = memory_map(ram_size, amd)
    info = struct.pack("<7I", INFO_FLAGS, MEM_LOWER_KIB, upper_memory_kib(mmap), BOOT_DEVICE,
                       table["cmdline"], len(modules), table["mods"])
    info = info.ljust(44, b"\0") + struct.pack("<2I", len(mmap) * 24, MMAP_ADDR)
    info = info.ljust(64, b"\0") + struct.pack("<I", table["loader"])
    info = info.ljust(INFO_SIZE, b"\0")
    mmap_bytes = b"".join(struct.pack("<IQQI", 20, *entry) for entry in mmap)
    state = EntryState(rip=entry, regs={"rax": BOOT_MAGIC, "rbx": INFO_ADDR, "rcx": entry})
    return BootImage(state, [(load_addr, bytes(buffer)), (MMAP_ADDR, mmap_bytes), (INFO_ADDR, info)])


def buffer_layout(buffer: bytearray, base: int, path: str, cmdline: str,
                  modules: list[str], reserved: int) -> dict[str, int]:
    """Append module records, command lines, loader name and modules to ``buffer``.

    QEMU's order: the module table; the module command lines and the kernel
    command line in ``reserved`` bytes; the loader name; page alignment;
    then each module, page-aligned.
    """
    mods_at = len(buffer)
    strings = bytearray()
    module_lines = [strings_add(strings, name) for name in modules]
    kernel_line = strings_add(strings, f"{path} {cmdline}")
    strings = strings.ljust(reserved, b"\0")
    loader = strings_add(strings, LOADER_NAME.decode())
    strings_at = mods_at + MODULE_SIZE * len(modules)
    buffer += bytes(MODULE_SIZE * len(modules)) + strings
    buffer += bytes(_align(len(buffer)) - len(buffer))
    for index, spec in enumerate(modules):
        data = read_file(spec.split(" ", 1)[0], "multiboot module")
        start = len(buffer)
        buffer += data + bytes(_align(len(data)) - len(data))
        struct.pack_into("<3I", buffer, mods_at + index * MODULE_SIZE, base + start,
                         base + start + len(data), base + strings_at + module_lines[index])
    return {"mods": base + mods_at, "cmdline": base + strings_at + kernel_line,
            "loader": base + strings_at + loader}


def strings_add(strings: bytearray, text: str) -> int:
    offset = len(strings)
    strings += text.encode() + b"\0"
    return offset


def _split_modules(initrd: str) -> list[str]:
    """``-initrd a,b`` as QEMU's get_opt_value splits it (",," is a comma)."""
    modules, current, i = [], "", 0
    while i < len(initrd):
        if initrd[i] == ",":
            if initrd[i + 1:i + 2] == ",":
                current += ","
                i += 2
                continue
            modules.append(current)
            current = ""
        else:
            current += initrd[i]
        i += 1
    modules.append(current)
    return modules


def _load_aout_kludge(image: bytes, offset: int) -> tuple[int, bytes, int]:
    header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from("<5I", image, offset + 12)
    if header_addr < load_addr:
        raise BootError("invalid mh_load_addr address")
    text_offset = offset - (header_addr - load_addr)
    if load_end:
        if load_end < load_addr:
            raise BootError("invalid mh_load_end_addr address")
        size = load_end - load_addr
    else:
        if len(image) < text_offset:
            raise BootError("invalid kernel_file_size")
        size = len(image) - text_offset
    kernel = image[text_offset:text_offset + size]
    if bss_end:
        if bss_end < load_addr + size:
            raise BootError("invalid mh_bss_end_addr address")
        kernel = kernel.ljust(bss_end - load_addr, b"\0")
    return load_addr, kernel, entry


def _load_elf(image: bytes) -> tuple[int, bytes, int]:
    if image[:4] != ELF_MAGIC:
        raise BootError("Error while loading elf kernel")
    if struct.unpack_from("<H", image, 18)[0] == EM_X86_64:
        raise BootError("Cannot load x86-64 image, give a 32bit one.")
    entry, phoff = struct.unpack_from("<2I", image, 24)
    phentsize, phnum = struct.unpack_from("<2H", image, 42)
    segments = []
    for index in range(phnum):
        kind, file_offset, _vaddr, paddr, filesz, memsz = struct.unpack_from(
            "<6I", image, phoff + index * phentsize)
        if kind == PT_LOAD and memsz:
            segments.append((paddr, image[file_offset:file_offset + filesz].ljust(memsz, b"\0")))
    if not segments:
        raise BootError("Error while loading elf kernel")
    low = min(address for address, _ in segments)
    high = max(address + len(data) for address, data in segments)
    kernel = bytearray(high - low)
    for address, data in segments:
        kernel[address - low:address - low + len(data)] = data
    return low, bytes(kernel), entry
