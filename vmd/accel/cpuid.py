"""CPU models as CPUID tables: QEMU's ``qemu64`` and ``max`` under KVM.

``max`` is everything ``KVM_GET_SUPPORTED_CPUID`` offers. ``qemu64`` is
QEMU's model (AMD vendor, family 15 model 107 stepping 1, the SSE2-era
feature set, "QEMU Virtual CPU version 2.5+") with what KVM cannot give
removed, plus the bits QEMU adds under KVM by default (hypervisor, x2apic,
the KVM paravirtual leaves). Each vCPU gets its APIC id in leaf 1 EBX.
"""

from __future__ import annotations

import struct

MODELS = ("qemu64", "max")
#: Names QEMU accepts under KVM that mean ``max`` here.
ALIASES = {"host": "max"}


class UnknownModel(Exception):
    """QEMU's "unable to find CPU model" error."""


def model_name(option: str) -> str:
    """The model of ``-cpu MODEL[,feature...]`` (features are not supported)."""
    name = option.split(",", 1)[0]
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise UnknownModel(f"unable to find CPU model '{name}'")
    return name

# Leaf 1 EDX: FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV
# PAT PSE36 CLFLUSH MMX FXSR SSE SSE2 (QEMU's PPRO_FEATURES + SSE2 ...).
_QEMU64_1_EDX = 0x0781ABFD
# Leaf 1 ECX: SSE3, CX16, x2APIC (KVM default), hypervisor.
_QEMU64_1_ECX = (1 << 0) | (1 << 13) | (1 << 21) | (1 << 31)
# 0x80000001 EDX: SYSCALL, NX, LM (plus the leaf-1 bits AMD mirrors).
_QEMU64_EXT_EDX = (1 << 11) | (1 << 20) | (1 << 29) | (_QEMU64_1_EDX & 0x0183F3FF)
# 0x80000001 ECX: LAHF_LM (SVM is off under KVM by default).
_QEMU64_EXT_ECX = 1 << 0
_QEMU64_LEVEL = 0xD
_QEMU64_XLEVEL = 0x8000000A
_QEMU64_SIGNATURE = 0x00060FB1  # family 15, model 107, stepping 1
_QEMU64_BRAND = b"QEMU Virtual CPU version 2.5+".ljust(48, b"\0")
_AMD = b"AuthenticAMD"


def _vendor_regs(vendor: bytes) -> tuple[int, int, int]:
    ebx, edx, ecx = struct.unpack("<3I", vendor)
    return ebx, ecx, edx


def model_cpuid(model: str, supported: list[dict[str, int]]) -> list[dict[str, int]]:
    """The CPUID table for ``model`` from KVM's supported table."""
    if model == "max":
        return [dict(entry) for entry in supported]
    table = []
    for entry in supported:
        leaf = entry["function"]
        if leaf > _QEMU64_LEVEL and leaf < 0x40000000 or leaf > _QEMU64_XLEVEL:
            continue
        if leaf in (7, 0xD):  # no structured extended features, no XSAVE
            continue
        table.append(_qemu64_entry(dict(entry)))
    return table


def _qemu64_entry(entry: dict[str, int]) -> dict[str, int]:
    leaf = entry["function"]
    if leaf == 0:
        entry["eax"] = _QEMU64_LEVEL
        entry["ebx"], entry["ecx"], entry["edx"] = _vendor_regs(_AMD)
    elif leaf == 1:
        entry["eax"] = _QEMU64_SIGNATURE
        entry["ecx"] &= _QEMU64_1_ECX
        entry["edx"] &= _QEMU64_1_EDX
    elif leaf == 0x80000000:
        entry["eax"] = _QEMU64_XLEVEL
        entry["ebx"], entry["ecx"], entry["edx"] = _vendor_regs(_AMD)
    elif leaf == 0x80000001:
        entry["eax"] = _QEMU64_SIGNATURE
        entry["ecx"] &= _QEMU64_EXT_ECX
        entry["edx"] &= _QEMU64_EXT_EDX
    elif 0x80000002 <= leaf <= 0x80000004:
        chunk = _QEMU64_BRAND[(leaf - 0x80000002) * 16:][:16]
        entry["eax"], entry["ebx"], entry["ecx"], entry["edx"] = struct.unpack("<4I", chunk)
    return entry


def for_vcpu(table: list[dict[str, int]], apic_id: int, cpus: int) -> list[dict[str, int]]:
    """``table`` with this vCPU's APIC id and the logical CPU count in leaf 1."""
    result = []
    for entry in table:
        entry = dict(entry)
        if entry["function"] == 1:
            entry["ebx"] = (apic_id << 24) | (min(cpus, 255) << 16) | (8 << 8)
            if cpus > 1:
                entry["edx"] |= 1 << 28  # HTT: the count field is valid
        result.append(entry)
    return result
