"""HMP ``info registers`` and the internal-error dump, in QEMU's x86 format.

The layout is QEMU's ``x86_cpu_dump_state`` with the FPU/SSE part: 32-bit
names and widths unless the CPU is in 64-bit mode, segment descriptors as
QEMU's flag word plus its description in protected mode. Debug registers
are shown at their reset values (vmd does not read them from KVM).
"""

from __future__ import annotations

from typing import Any

from vmd.accel import abi
from vmd.accel.kvm import Vcpu

_SYS_TYPES = (
    ("Reserved", "TSS16-avl", "LDT", "TSS16-busy", "CallGate16", "TaskGate", "IntGate16", "TrapGate16",
     "Reserved", "TSS32-avl", "Reserved", "TSS32-busy", "CallGate32", "Reserved", "IntGate32", "TrapGate32"),
    ("<hiword>", "Reserved", "LDT", "Reserved", "Reserved", "Reserved", "Reserved", "Reserved",
     "Reserved", "TSS64-avl", "Reserved", "TSS64-busy", "CallGate64", "Reserved", "IntGate64", "TrapGate64"),
)
_EFLAGS = ((10, "D"), (11, "O"), (7, "S"), (6, "Z"), (4, "A"), (2, "P"), (0, "C"))


def _flags(seg: Any) -> int:
    return ((seg.type << 8) | (seg.s << 12) | (seg.dpl << 13) | (seg.present << 15) | (seg.avl << 20)
            | (seg.l << 21) | (seg.db << 22) | (seg.g << 23))


def _describe(seg: Any, protected: bool, lma: bool) -> str:
    if not protected or not seg.present:
        return ""
    text = f" DPL={seg.dpl} "
    if seg.s:
        if seg.type & 8:
            text += "CS64" if seg.l else ("CS32" if seg.db else "CS16")
            text += f" [{'C' if seg.type & 4 else '-'}{'R' if seg.type & 2 else '-'}"
        else:
            text += "DS  " if (seg.db or lma) else "DS16"
            text += f" [{'E' if seg.type & 4 else '-'}{'W' if seg.type & 2 else '-'}"
        return text + ("A]" if seg.type & 1 else "-]")
    return text + _SYS_TYPES[1 if lma else 0][seg.type & 15]


def dump_registers(vcpu: Vcpu) -> str:
    regs, sregs, fpu = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu()
    halted = int(vcpu.get_mp_state() == abi.MP_STATE_HALTED)
    long_mode = bool(sregs.efer & (1 << 10)) and bool(sregs.cs.l)
    lma = bool(sregs.efer & (1 << 10))
    protected = bool(sregs.cr0 & 1)
    flags = "".join(letter if regs.rflags & (1 << bit) else "-" for bit, letter in _EFLAGS)
    cpl = sregs.ss.dpl if protected else 0
    tail = f"[{flags}] CPL={cpl} II=0 A20=1 SMM=0 HLT={halted}"
    lines = []
    if long_mode:
        names: tuple[str, ...] = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                                  "r10", "r11", "r12", "r13", "r14", "r15")
        for row in range(4):
            lines.append(" ".join(f"{n.upper():<3}={getattr(regs, n):016x}" for n in names[row * 4:row * 4 + 4]))
        lines.append(f"RIP={regs.rip:016x} RFL={regs.rflags & 0xFFFFFFFF:08x} {tail}")
    else:
        names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")
        for row in range(2):
            lines.append(" ".join(f"E{n[1:].upper()}={getattr(regs, n) & 0xFFFFFFFF:08x}"
                                  for n in names[row * 4:row * 4 + 4]))
        lines.append(f"EIP={regs.rip & 0xFFFFFFFF:08x} EFL={regs.rflags & 0xFFFFFFFF:08x} {tail}")
    width = 16 if long_mode else 8
    for name in ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr"):
        seg = getattr(sregs, name)
        base = seg.base if long_mode else seg.base & 0xFFFFFFFF
        lines.append(f"{name.upper():<3}={seg.selector:04x} {base:0{width}x} {seg.limit:08x} "
                     f"{_flags(seg):08x}{_describe(seg, protected, lma)}")
    for name in ("gdt", "idt"):
        table = getattr(sregs, name)
        lines.append(f"{name.upper()}=     {table.base:0{width}x} {table.limit:08x}")
    if long_mode:
        lines.append(f"CR0={sregs.cr0:08x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} CR4={sregs.cr4:08x}")
    else:
        lines.append(f"CR0={sregs.cr0 & 0xFFFFFFFF:08x} CR2={sregs.cr2 & 0xFFFFFFFF:08x} "
                     f"CR3={sregs.cr3 & 0xFFFFFFFF:08x} CR4={sregs.cr4 & 0xFFFFFFFF:08x}")
    lines.append("".join(f"DR{i}={0:016x} " for i in range(4)))
    lines.append(f"DR6={0xFFFF0FF0:016x} DR7={0x400:016x}")
    lines.append(f"EFER={sregs.efer:016x}")
    lines.extend(_fpu_lines(fpu, 16 if long_mode else 8))
    return "\n".join(lines) + "\n"


def _fpu_lines(fpu: Any, xmm_count: int) -> list[str]:
    lines = [f"FCW={fpu.fcw:04x} FSW={fpu.fsw:04x} [ST={(fpu.fsw >> 11) & 7}] FTW={fpu.ftwx:02x} "
             f"MXCSR={fpu.mxcsr:08x}"]
    fprs = []
    for i in range(8):
        raw = bytes(fpu.fpr[i])
        fprs.append(f"FPR{i}={int.from_bytes(raw[:8], 'little'):016x} {int.from_bytes(raw[8:10], 'little'):04x}")
    lines.extend(" ".join(fprs[i:i + 2]) for i in range(0, 8, 2))
    xmms = []
    for i in range(xmm_count):
        raw = bytes(fpu.xmm[i])
        xmms.append(f"XMM{i:02d}={int.from_bytes(raw[8:], 'little'):016x} {int.from_bytes(raw[:8], 'little'):016x}")
    lines.extend(" ".join(xmms[i:i + 2]) for i in range(0, xmm_count, 2))
    return lines
