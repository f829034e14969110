"""The KVM user-space ABI: structure layouts and ioctl numbers (x86_64).

Declared for cffi in ABI mode (no compiler at run time). The layouts follow
``<linux/kvm.h>`` and ``<asm/kvm.h>``; ``tests/test_kvm_abi.py`` compiles a
program against the installed kernel headers and checks every size, offset
and ioctl number here against it. Only the union members vmd reads are
declared; each union is padded to the kernel's size.
"""

from __future__ import annotations

import cffi

CDEF = """
struct kvm_userspace_memory_region {
    uint32_t slot; uint32_t flags;
    uint64_t guest_phys_addr; uint64_t memory_size; uint64_t userspace_addr;
};
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
};
struct kvm_segment {
    uint64_t base; uint32_t limit; uint16_t selector;
    uint8_t type, present, dpl, db, s, l, g, avl, unusable, padding;
};
struct kvm_dtable { uint64_t base; uint16_t limit; uint16_t padding[3]; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    uint64_t interrupt_bitmap[4];
};
struct kvm_fpu {
    uint8_t fpr[8][16]; uint16_t fcw, fsw; uint8_t ftwx, pad1;
    uint16_t last_opcode; uint64_t last_ip, last_dp;
    uint8_t xmm[16][16]; uint32_t mxcsr, pad2;
};
struct kvm_cpuid_entry2 {
    uint32_t function, index, flags, eax, ebx, ecx, edx, padding[3];
};
struct kvm_cpuid2 { uint32_t nent, padding; struct kvm_cpuid_entry2 entries[]; };
struct kvm_msr_entry { uint32_t index, reserved; uint64_t data; };
struct kvm_msrs { uint32_t nmsrs, pad; struct kvm_msr_entry entries[]; };
struct kvm_msr_list { uint32_t nmsrs; uint32_t indices[]; };
struct kvm_irq_level { uint32_t irq; uint32_t level; };
struct kvm_pit_config { uint32_t flags; uint32_t pad[15]; };
struct kvm_msi {
    uint32_t address_lo, address_hi, data, flags, devid; uint8_t pad[12];
};
struct kvm_irq_routing_irqchip { uint32_t irqchip, pin; };
struct kvm_irq_routing_msi { uint32_t address_lo, address_hi, data, devid; };
struct kvm_irq_routing_entry {
    uint32_t gsi, type, flags, pad;
    union {
        struct kvm_irq_routing_irqchip irqchip;
        struct kvm_irq_routing_msi msi;
        uint32_t pad[8];
    } u;
};
struct kvm_irq_routing {
    uint32_t nr, flags; struct kvm_irq_routing_entry entries[];
};
struct kvm_ioeventfd {
    uint64_t datamatch, addr; uint32_t len; int32_t fd; uint32_t flags;
    uint8_t pad[36];
};
struct kvm_irqfd {
    uint32_t fd, gsi, flags, resamplefd; uint8_t pad[16];
};
struct kvm_dirty_log { uint32_t slot, padding1; void *dirty_bitmap; };
struct kvm_mp_state { uint32_t mp_state; };
struct kvm_lapic_state { char regs[1024]; };
struct kvm_irqchip { uint32_t chip_id, pad; union { char dummy[512]; } chip; };
struct kvm_run {
    uint8_t request_interrupt_window, immediate_exit, padding1[6];
    uint32_t exit_reason;
    uint8_t ready_for_interrupt_injection, if_flag;
    uint16_t flags;
    uint64_t cr8, apic_base;
    union {
        struct { uint64_t hardware_exit_reason; } hw;
        struct { uint64_t hardware_entry_failure_reason; uint32_t cpu; } fail_entry;
        struct { uint32_t exception, error_code; } ex;
        struct {
            uint8_t direction, size; uint16_t port;
            uint32_t count; uint64_t data_offset;
        } io;
        struct {
            uint64_t phys_addr; uint8_t data[8]; uint32_t len; uint8_t is_write;
        } mmio;
        struct { uint32_t suberror, ndata; uint64_t data[16]; } internal;
        struct { uint32_t type, ndata; uint64_t data[16]; } system_event;
        char padding[256];
    };
    uint64_t kvm_valid_regs, kvm_dirty_regs;
};
int ioctl(int fd, unsigned long request, ...);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)


# -- ioctl numbers: _IOC(dir, 0xAE, nr, size), as <asm-generic/ioctl.h> -----

_NONE, _WRITE, _READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_NONE, nr, 0)


def _iow(nr: int, ctype: str) -> int:
    return _ioc(_WRITE, nr, ffi.sizeof(ctype))


def _ior(nr: int, ctype: str) -> int:
    return _ioc(_READ, nr, ffi.sizeof(ctype))


def _iowr(nr: int, ctype: str) -> int:
    return _ioc(_READ | _WRITE, nr, ffi.sizeof(ctype))


KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, "struct kvm_msr_list")
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, "struct kvm_cpuid2")
KVM_SET_USER_MEMORY_REGION = _iow(0x46, "struct kvm_userspace_memory_region")
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, "uint64_t")
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, "struct kvm_irq_level")
KVM_GET_DIRTY_LOG = _iow(0x42, "struct kvm_dirty_log")
KVM_SET_GSI_ROUTING = _iow(0x6A, "struct kvm_irq_routing")
KVM_IRQFD = _iow(0x76, "struct kvm_irqfd")
KVM_CREATE_PIT2 = _iow(0x77, "struct kvm_pit_config")
KVM_IOEVENTFD = _iow(0x79, "struct kvm_ioeventfd")
KVM_SIGNAL_MSI = _iow(0xA5, "struct kvm_msi")
KVM_CREATE_VCPU = _io(0x41)
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, "struct kvm_regs")
KVM_SET_REGS = _iow(0x82, "struct kvm_regs")
KVM_GET_SREGS = _ior(0x83, "struct kvm_sregs")
KVM_SET_SREGS = _iow(0x84, "struct kvm_sregs")
KVM_GET_MSRS = _iowr(0x88, "struct kvm_msrs")
KVM_SET_MSRS = _iow(0x89, "struct kvm_msrs")
KVM_GET_FPU = _ior(0x8C, "struct kvm_fpu")
KVM_SET_FPU = _iow(0x8D, "struct kvm_fpu")
KVM_SET_CPUID2 = _iow(0x90, "struct kvm_cpuid2")
KVM_GET_MP_STATE = _ior(0x98, "struct kvm_mp_state")
KVM_SET_MP_STATE = _iow(0x99, "struct kvm_mp_state")
KVM_GET_LAPIC = _ior(0x8E, "struct kvm_lapic_state")
KVM_SET_LAPIC = _iow(0x8F, "struct kvm_lapic_state")
KVM_GET_IRQCHIP = _iowr(0x62, "struct kvm_irqchip")
# Encoded as _IOR in the kernel headers for historical reasons.
KVM_SET_IRQCHIP = _ior(0x63, "struct kvm_irqchip")

# Capabilities (KVM_CAP_*).
CAP_IRQCHIP = 0
CAP_USER_MEMORY = 3
CAP_NR_VCPUS = 9
CAP_NR_MEMSLOTS = 10
CAP_IRQ_ROUTING = 25
CAP_IRQFD = 32
CAP_PIT2 = 33
CAP_IOEVENTFD = 36
CAP_MAX_VCPUS = 66
CAP_SIGNAL_MSI = 77
CAP_READONLY_MEM = 81
CAP_IMMEDIATE_EXIT = 136

# Exit reasons (KVM_EXIT_*).
EXIT_UNKNOWN = 0
EXIT_EXCEPTION = 1
EXIT_IO = 2
EXIT_HLT = 5
EXIT_MMIO = 6
EXIT_SHUTDOWN = 8
EXIT_FAIL_ENTRY = 9
EXIT_INTR = 10
EXIT_INTERNAL_ERROR = 17
EXIT_SYSTEM_EVENT = 24

EXIT_IO_IN = 0
EXIT_IO_OUT = 1

SYSTEM_EVENT_SHUTDOWN = 1
SYSTEM_EVENT_RESET = 2
SYSTEM_EVENT_CRASH = 3

INTERNAL_ERROR_EMULATION = 1

MEM_LOG_DIRTY_PAGES = 1
MEM_READONLY = 2

PIT_SPEAKER_DUMMY = 1
IRQ_ROUTING_IRQCHIP = 1
IRQ_ROUTING_MSI = 2
IRQFD_FLAG_DEASSIGN = 1
IOEVENTFD_FLAG_DATAMATCH = 1
IOEVENTFD_FLAG_PIO = 2
IOEVENTFD_FLAG_DEASSIGN = 4
CPUID_FLAG_SIGNIFCANT_INDEX = 1

MP_STATE_RUNNABLE = 0
MP_STATE_UNINITIALIZED = 1
MP_STATE_HALTED = 3

#: The ioctls the layout test checks against the kernel headers, by name.
IOCTLS = {name: value for name, value in globals().items()
          if name.startswith("KVM_") and isinstance(value, int)}
