"""The cffi declarations of the KVM ABI match the installed kernel headers.

A C program compiled against ``<linux/kvm.h>`` prints every size, field
offset and ioctl number vmd declares; the test compares them one by one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmd.accel import abi
from vmd.accel.abi import ffi

HEADER = Path("/usr/include/linux/kvm.h")

# struct -> fields whose offsets are checked (nested fields with dots).
LAYOUTS: dict[str, list[str]] = {
    "kvm_userspace_memory_region": ["slot", "flags", "guest_phys_addr", "memory_size", "userspace_addr"],
    "kvm_regs": ["rax", "rsp", "r8", "r15", "rip", "rflags"],
    "kvm_segment": ["base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl",
                    "unusable"],
    "kvm_dtable": ["base", "limit"],
    "kvm_sregs": ["cs", "ds", "tr", "ldt", "gdt", "idt", "cr0", "cr3", "cr4", "cr8", "efer", "apic_base",
                  "interrupt_bitmap"],
    "kvm_fpu": ["fpr", "fcw", "fsw", "ftwx", "last_opcode", "last_ip", "last_dp", "xmm", "mxcsr"],
    "kvm_cpuid_entry2": ["function", "index", "flags", "eax", "ebx", "ecx", "edx"],
    "kvm_cpuid2": ["nent", "entries"],
    "kvm_msr_entry": ["index", "data"],
    "kvm_msrs": ["nmsrs", "entries"],
    "kvm_msr_list": ["nmsrs", "indices"],
    "kvm_irq_level": ["irq", "level"],
    "kvm_pit_config": ["flags"],
    "kvm_msi": ["address_lo", "address_hi", "data", "flags", "devid"],
    "kvm_irq_routing_entry": ["gsi", "type", "flags", "u"],
    "kvm_irq_routing": ["nr", "flags", "entries"],
    "kvm_ioeventfd": ["datamatch", "addr", "len", "fd", "flags"],
    "kvm_irqfd": ["fd", "gsi", "flags", "resamplefd"],
    "kvm_dirty_log": ["slot", "dirty_bitmap"],
    "kvm_mp_state": ["mp_state"],
    "kvm_lapic_state": ["regs"],
    "kvm_irqchip": ["chip_id", "chip"],
    "kvm_run": ["request_interrupt_window", "immediate_exit", "exit_reason", "ready_for_interrupt_injection",
                "if_flag", "flags", "cr8", "apic_base", "io", "io.direction", "io.size", "io.port", "io.count",
                "io.data_offset", "mmio.phys_addr", "mmio.data", "mmio.len", "mmio.is_write",
                "fail_entry.hardware_entry_failure_reason", "fail_entry.cpu", "internal.suberror",
                "internal.ndata", "internal.data", "system_event.type", "system_event.ndata",
                "kvm_valid_regs", "kvm_dirty_regs"],
}
# Structs whose declared size must match (kvm_run is longer in the kernel:
# vmd declares it only up to the sync-regs area it does not use).
UNSIZED = {"kvm_run"}


def _cffi_offset(struct: str, path: str) -> int:
    return int(ffi.offsetof(f"struct {struct}", *path.split(".")))


def _c_program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for struct, fields in LAYOUTS.items():
        lines.append(f'printf("size {struct} %zu\\n", sizeof(struct {struct}));')
        for path in fields:
            lines.append(f'printf("offset {struct}.{path} %zu\\n", offsetof(struct {struct}, {path}));')
    for name in abi.IOCTLS:
        lines.append(f'printf("ioctl {name} %lu\\n", (unsigned long)({name}));')
    for cap in ("IRQCHIP", "USER_MEMORY", "NR_VCPUS", "NR_MEMSLOTS", "IRQ_ROUTING", "IRQFD", "PIT2",
                "IOEVENTFD", "MAX_VCPUS", "SIGNAL_MSI", "READONLY_MEM", "IMMEDIATE_EXIT"):
        lines.append(f'printf("const CAP_{cap} %d\\n", KVM_CAP_{cap});')
    for name in ("UNKNOWN", "EXCEPTION", "IO", "HLT", "MMIO", "SHUTDOWN", "FAIL_ENTRY", "INTR",
                 "INTERNAL_ERROR", "SYSTEM_EVENT"):
        lines.append(f'printf("const EXIT_{name} %d\\n", KVM_EXIT_{name});')
    lines.append("return 0; }")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def kernel_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if shutil.which("gcc") is None or not HEADER.exists():
        pytest.skip("gcc or the kernel headers (linux-libc-dev) are not installed")
    work = tmp_path_factory.mktemp("kvm-abi")
    (work / "layout.c").write_text(_c_program())
    subprocess.run(["gcc", "-o", str(work / "layout"), str(work / "layout.c")], check=True)
    output = subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True).stdout
    values = {}
    for line in output.splitlines():
        kind, name, value = line.split()
        values[f"{kind} {name}"] = int(value)
    return values


@pytest.mark.parametrize("struct", sorted(LAYOUTS))
def test_struct_layout(kernel_values: dict[str, int], struct: str) -> None:
    if struct not in UNSIZED:
        assert ffi.sizeof(f"struct {struct}") == kernel_values[f"size {struct}"]
    for path in LAYOUTS[struct]:
        assert _cffi_offset(struct, path) == kernel_values[f"offset {struct}.{path}"], path


def test_ioctl_numbers(kernel_values: dict[str, int]) -> None:
    assert len(abi.IOCTLS) > 25
    for name, value in abi.IOCTLS.items():
        assert value == kernel_values[f"ioctl {name}"], name


def test_constants(kernel_values: dict[str, int]) -> None:
    for key, value in kernel_values.items():
        kind, name = key.split(" ")
        if kind == "const":
            assert getattr(abi, name) == value, name
