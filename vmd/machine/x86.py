"""x86 CPU state that vmd sets itself: reset, flat 32-bit and 64-bit entry.

QEMU reaches a multiboot or Linux entry point through firmware and an
option ROM; vmd has no firmware and puts the vCPU directly in the state
the boot protocol promises. The GDTs and selectors are those QEMU's guests
see: Linux boot.rst's __BOOT_CS 0x10 and __BOOT_DS 0x18, and QEMU's
multiboot option ROM's code 0x08 and data 0x10.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from vmd.accel.kvm import Vcpu

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

# Flat descriptors: 64-bit code, 32-bit code, data (base 0, limit 4 GiB).
GDT_CODE64 = 0x00AF9B000000FFFF
GDT_CODE32 = 0x00CF9B000000FFFF
GDT_DATA = 0x00CF93000000FFFF
GDT_TSS = 0x00008B0000000067
GDT_CODE16 = 0x00009E000000FFFF
GDT_DATA16 = 0x000092000000FFFF

#: Linux 64-bit entry: null, null, code64 (0x10), data (0x18), TSS (0x20).
LINUX_GDT = struct.pack("<5Q", 0, 0, GDT_CODE64, GDT_DATA, GDT_TSS)
#: QEMU's multiboot.bin: null, code32 (0x08), data (0x10), code16, data16.
MULTIBOOT_GDT = struct.pack("<5Q", 0, GDT_CODE32, GDT_DATA, GDT_CODE16, GDT_DATA16)


@dataclass
class EntryState:
    """Registers a boot loader leaves for the image it starts."""

    rip: int
    regs: dict[str, int] = field(default_factory=dict)
    long_mode: bool = False
    gdt_base: int = 0
    code_selector: int = 0x08
    data_selector: int = 0x10
    page_table: int = 0  # CR3 when long_mode


def _segment(seg: Any, selector: int, code: bool, long_mode: bool) -> None:
    seg.base, seg.limit, seg.selector = 0, 0xFFFFFFFF, selector
    seg.type = 0xB if code else 0x3
    seg.present, seg.dpl, seg.s, seg.g, seg.avl, seg.unusable = 1, 0, 1, 1, 0, 0
    seg.l = 1 if (code and long_mode) else 0
    seg.db = 0 if (code and long_mode) else 1


def enter(vcpu: Vcpu, state: EntryState) -> None:
    """Put ``vcpu`` in protected (or long) mode at ``state.rip``."""
    sregs = vcpu.get_sregs()
    _segment(sregs.cs, state.code_selector, True, state.long_mode)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _segment(seg, state.data_selector, False, state.long_mode)
    tr = sregs.tr
    tr.base, tr.limit, tr.selector, tr.type, tr.present, tr.s, tr.g = 0, 0xFFFF, 0, 11, 1, 0, 0
    sregs.gdt.base, sregs.gdt.limit = state.gdt_base, 5 * 8 - 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    sregs.cr0 = CR0_PE | CR0_ET
    sregs.cr4 = 0
    sregs.efer = 0
    if state.long_mode:
        sregs.cr0 |= CR0_PG
        sregs.cr3 = state.page_table
        sregs.cr4 = CR4_PAE
        sregs.efer = EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"):
        setattr(regs, name, state.regs.get(name, 0))
    regs.rip = state.rip
    regs.rflags = 0x2
    vcpu.set_regs(regs)


def reset(vcpu: Vcpu, fpu: bool = True) -> None:
    """The architectural reset state: real mode at F000:FFF0."""
    sregs = vcpu.get_sregs()
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFF, 0, 3
        seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl, seg.unusable = 1, 0, 0, 1, 0, 0, 0, 0
    cs = sregs.cs
    cs.base, cs.limit, cs.selector, cs.type = 0xFFFF0000, 0xFFFF, 0xF000, 0xB
    cs.present, cs.dpl, cs.db, cs.s, cs.l, cs.g, cs.avl, cs.unusable = 1, 0, 0, 1, 0, 0, 0, 0
    sregs.tr.base, sregs.tr.limit, sregs.tr.selector, sregs.tr.type, sregs.tr.present = 0, 0xFFFF, 0, 11, 1
    sregs.ldt.base, sregs.ldt.limit, sregs.ldt.selector, sregs.ldt.type, sregs.ldt.present = 0, 0xFFFF, 0, 2, 1
    sregs.gdt.base, sregs.gdt.limit = 0, 0xFFFF
    sregs.idt.base, sregs.idt.limit = 0, 0xFFFF
    sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer = 0x60000010, 0, 0, 0, 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    for name in ("rax", "rbx", "rcx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
                 "r12", "r13", "r14", "r15"):
        setattr(regs, name, 0)
    regs.rdx, regs.rip, regs.rflags = 0x600, 0xFFF0, 0x2
    vcpu.set_regs(regs)
    if fpu:
        state = vcpu.get_fpu()
        state.fcw, state.mxcsr = 0x37F, 0x1F80
        vcpu.set_fpu(state)


def identity_page_tables(base: int) -> bytes:
    """PML4, PDPT and 4 page directories mapping the low 4 GiB with 2 MiB pages."""
    pml4 = struct.pack("<Q", (base + 0x1000) | 3).ljust(4096, b"\0")
    pdpt = b"".join(struct.pack("<Q", (base + 0x2000 + i * 0x1000) | 3) for i in range(4)).ljust(4096, b"\0")
    pds = b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(4 * 512))
    return pml4 + pdpt + pds
