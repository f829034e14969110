"""KVM through cffi: the system, VM and vCPU file descriptors.

Thread use: a ``Vm`` is built on the loop thread before any vCPU runs;
afterwards its interrupt calls (``irq_line``, ``signal_msi``) may come from
any thread holding the BQL. Each ``Vcpu`` belongs to its own vCPU thread,
except ``kick`` (any thread) and register reads while the vCPU is stopped.
cffi releases the GIL around every C call, so a thread blocked in
``KVM_RUN`` does not stall Python elsewhere.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

from vmd.accel import abi
from vmd.accel.abi import ffi

_libc = ffi.dlopen(None)

KVM_DEVICE = "/dev/kvm"
API_VERSION = 12


class KvmError(Exception):
    """An ioctl failed; ``errno`` is the kernel's reason."""

    def __init__(self, what: str, err: int) -> None:
        super().__init__(f"{what}: {os.strerror(err)}")
        self.errno = err


class KvmUnavailable(Exception):
    """/dev/kvm is missing, not writable or too old: QEMU's wording."""


def _ioctl(fd: int, request: int, arg: Any, what: str) -> int:
    if isinstance(arg, int):
        arg = ffi.cast("unsigned long", arg)
    result: int = _libc.ioctl(fd, ffi.cast("unsigned long", request), arg)
    if result < 0:
        raise KvmError(what, ffi.errno)
    return result


class Kvm:
    """The ``/dev/kvm`` system descriptor: capabilities and VM creation."""

    def __init__(self, path: str = KVM_DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            raise KvmUnavailable(
                f"Could not access KVM kernel module: {error.strerror}\n"
                f"failed to initialize kvm: {error.strerror}") from None
        version = _ioctl(self.fd, abi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if version != API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(f"kvm version not supported (API {version})")
        self.vcpu_mmap_size = _ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def supported_cpuid(self) -> list[dict[str, int]]:
        """``KVM_GET_SUPPORTED_CPUID`` as a list of entry dicts."""
        count = 256
        buf = ffi.new("struct kvm_cpuid2 *", {"nent": count, "entries": count})
        _ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, buf, "KVM_GET_SUPPORTED_CPUID")
        return [{key: getattr(buf.entries[i], key)
                 for key in ("function", "index", "flags", "eax", "ebx", "ecx", "edx")}
                for i in range(buf.nent)]

    def msr_index_list(self) -> list[int]:
        count = 1024
        buf = ffi.new("struct kvm_msr_list *", {"nmsrs": count, "indices": count})
        _ioctl(self.fd, abi.KVM_GET_MSR_INDEX_LIST, buf, "KVM_GET_MSR_INDEX_LIST")
        return list(buf.indices[0:buf.nmsrs])

    def create_vm(self) -> Vm:
        return Vm(self, _ioctl(self.fd, abi.KVM_CREATE_VM, 0, "KVM_CREATE_VM"))

    def close(self) -> None:
        os.close(self.fd)


class Vm:
    """A VM descriptor: memory slots, the in-kernel irqchip, interrupts."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self._irq_level = ffi.new("struct kvm_irq_level *")

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, abi.KVM_CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION")

    def set_tss_addr(self, address: int) -> None:
        _ioctl(self.fd, abi.KVM_SET_TSS_ADDR, address, "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, address: int) -> None:
        _ioctl(self.fd, abi.KVM_SET_IDENTITY_MAP_ADDR, ffi.new("uint64_t *", address),
               "KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self) -> None:
        """PIC x2, IOAPIC (0xfec00000) and a LAPIC per vCPU, in the kernel."""
        _ioctl(self.fd, abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def create_pit2(self, speaker_dummy: bool = True) -> None:
        flags = abi.PIT_SPEAKER_DUMMY if speaker_dummy else 0
        _ioctl(self.fd, abi.KVM_CREATE_PIT2, ffi.new("struct kvm_pit_config *", {"flags": flags}),
               "KVM_CREATE_PIT2")

    def set_memory_region(self, slot: int, guest_address: int, size: int, host_address: int,
                          flags: int = 0) -> None:
        """Map (size > 0) or remove (size 0) one memory slot."""
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": guest_address,
            "memory_size": size, "userspace_addr": host_address})
        _ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def get_dirty_log(self, slot: int, pages: int) -> bytes:
        """The slot's dirty bitmap since the last call (one bit a page)."""
        bitmap = ffi.new("uint64_t[]", max(1, (pages + 63) // 64))
        log = ffi.new("struct kvm_dirty_log *", {"slot": slot, "dirty_bitmap": bitmap})
        _ioctl(self.fd, abi.KVM_GET_DIRTY_LOG, log, "KVM_GET_DIRTY_LOG")
        return bytes(ffi.buffer(bitmap))

    def irq_line(self, gsi: int, level: int) -> None:
        """Drive GSI ``gsi`` (PIC and IOAPIC pin with default routing)."""
        self._irq_level.irq = gsi
        self._irq_level.level = level
        _ioctl(self.fd, abi.KVM_IRQ_LINE, self._irq_level, "KVM_IRQ_LINE")

    def signal_msi(self, address: int, data: int) -> int:
        msi = ffi.new("struct kvm_msi *", {"address_lo": address & 0xFFFFFFFF,
                                           "address_hi": address >> 32, "data": data})
        return _ioctl(self.fd, abi.KVM_SIGNAL_MSI, msi, "KVM_SIGNAL_MSI")

    def set_gsi_routing(self, routes: list[tuple[int, int, int]],
                        msi: list[tuple[int, int, int]] | None = None) -> None:
        """Install ``(gsi, irqchip, pin)`` and ``(gsi, address, data)`` MSI
        routes, replacing the whole table (KVM's default table included)."""
        msi = msi or []
        count = len(routes) + len(msi)
        table = ffi.new("struct kvm_irq_routing *", {"nr": count, "entries": count})
        for entry, (gsi, chip, pin) in zip(table.entries, routes):
            entry.gsi = gsi
            entry.type = abi.IRQ_ROUTING_IRQCHIP
            entry.u.irqchip.irqchip = chip
            entry.u.irqchip.pin = pin
        for index, (gsi, address, data) in enumerate(msi, len(routes)):
            entry = table.entries[index]
            entry.gsi = gsi
            entry.type = abi.IRQ_ROUTING_MSI
            entry.u.msi.address_lo = address & 0xFFFFFFFF
            entry.u.msi.address_hi = address >> 32
            entry.u.msi.data = data
        _ioctl(self.fd, abi.KVM_SET_GSI_ROUTING, table, "KVM_SET_GSI_ROUTING")

    def ioeventfd(self, fd: int, address: int, length: int, pio: bool,
                  datamatch: int | None = None, deassign: bool = False) -> None:
        """Let a guest write to ``address`` signal eventfd ``fd`` without an exit."""
        flags = ((abi.IOEVENTFD_FLAG_PIO if pio else 0)
                 | (abi.IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0)
                 | (abi.IOEVENTFD_FLAG_DEASSIGN if deassign else 0))
        args = ffi.new("struct kvm_ioeventfd *", {
            "datamatch": datamatch or 0, "addr": address, "len": length, "fd": fd, "flags": flags})
        _ioctl(self.fd, abi.KVM_IOEVENTFD, args, "KVM_IOEVENTFD")

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        """Inject GSI ``gsi`` (edge) each time eventfd ``fd`` is signalled."""
        args = ffi.new("struct kvm_irqfd *", {
            "fd": fd, "gsi": gsi, "flags": abi.IRQFD_FLAG_DEASSIGN if deassign else 0})
        _ioctl(self.fd, abi.KVM_IRQFD, args, "KVM_IRQFD")

    def get_irqchip(self, chip: int) -> bytes:
        """The state of PIC master (0), PIC slave (1) or IOAPIC (2)."""
        state = ffi.new("struct kvm_irqchip *", {"chip_id": chip})
        _ioctl(self.fd, abi.KVM_GET_IRQCHIP, state, "KVM_GET_IRQCHIP")
        return bytes(ffi.buffer(state))

    def set_irqchip(self, state: bytes) -> None:
        _ioctl(self.fd, abi.KVM_SET_IRQCHIP, ffi.from_buffer(state), "KVM_SET_IRQCHIP")

    def create_vcpu(self, index: int) -> Vcpu:
        fd = _ioctl(self.fd, abi.KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU")
        return Vcpu(index, fd, self.kvm.vcpu_mmap_size)

    def close(self) -> None:
        os.close(self.fd)


class Vcpu:
    """One vCPU descriptor and its shared ``kvm_run`` page."""

    def __init__(self, index: int, fd: int, mmap_size: int) -> None:
        self.index = index
        self.fd = fd
        self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._page = ffi.from_buffer(self._map)
        self.run_struct: Any = ffi.cast("struct kvm_run *", self._page)
        self._run_request = ffi.cast("unsigned long", abi.KVM_RUN)
        self._zero = ffi.cast("unsigned long", 0)

    def run(self) -> int:
        """One ``KVM_RUN``; returns the exit reason, or EXIT_INTR when kicked."""
        if _libc.ioctl(self.fd, self._run_request, self._zero) < 0:
            err = ffi.errno
            if err in (errno.EINTR, errno.EAGAIN):
                return abi.EXIT_INTR
            raise KvmError("KVM_RUN", err)
        return int(self.run_struct.exit_reason)

    def io_data(self, offset: int, length: int) -> Any:
        """The PIO data buffer of the current exit (a cffi buffer slice)."""
        return ffi.buffer(self._page + offset, length)

    def get_regs(self) -> Any:
        regs = ffi.new("struct kvm_regs *")
        _ioctl(self.fd, abi.KVM_GET_REGS, regs, "KVM_GET_REGS")
        return regs

    def set_regs(self, regs: Any) -> None:
        _ioctl(self.fd, abi.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> Any:
        sregs = ffi.new("struct kvm_sregs *")
        _ioctl(self.fd, abi.KVM_GET_SREGS, sregs, "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs: Any) -> None:
        _ioctl(self.fd, abi.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_fpu(self) -> Any:
        fpu = ffi.new("struct kvm_fpu *")
        _ioctl(self.fd, abi.KVM_GET_FPU, fpu, "KVM_GET_FPU")
        return fpu

    def set_fpu(self, fpu: Any) -> None:
        _ioctl(self.fd, abi.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def set_cpuid(self, entries: list[dict[str, int]]) -> None:
        buf = ffi.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": len(entries)})
        for slot, entry in zip(buf.entries, entries):
            for key, value in entry.items():
                setattr(slot, key, value)
        _ioctl(self.fd, abi.KVM_SET_CPUID2, buf, "KVM_SET_CPUID2")

    def set_msrs(self, msrs: dict[int, int]) -> None:
        buf = ffi.new("struct kvm_msrs *", {"nmsrs": len(msrs), "entries": len(msrs)})
        for slot, (index, value) in zip(buf.entries, msrs.items()):
            slot.index = index
            slot.data = value
        done = _ioctl(self.fd, abi.KVM_SET_MSRS, buf, "KVM_SET_MSRS")
        if done != len(msrs):
            raise KvmError(f"KVM_SET_MSRS: MSR {buf.entries[done].index:#x} refused", errno.EINVAL)

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        buf = ffi.new("struct kvm_msrs *", {"nmsrs": len(indices), "entries": len(indices)})
        for slot, index in zip(buf.entries, indices):
            slot.index = index
        done = _ioctl(self.fd, abi.KVM_GET_MSRS, buf, "KVM_GET_MSRS")
        return {buf.entries[i].index: buf.entries[i].data for i in range(done)}

    def get_mp_state(self) -> int:
        state = ffi.new("struct kvm_mp_state *")
        _ioctl(self.fd, abi.KVM_GET_MP_STATE, state, "KVM_GET_MP_STATE")
        return int(state.mp_state)

    def set_mp_state(self, value: int) -> None:
        _ioctl(self.fd, abi.KVM_SET_MP_STATE, ffi.new("struct kvm_mp_state *", {"mp_state": value}),
               "KVM_SET_MP_STATE")

    def get_lapic(self) -> bytes:
        state = ffi.new("struct kvm_lapic_state *")
        _ioctl(self.fd, abi.KVM_GET_LAPIC, state, "KVM_GET_LAPIC")
        return bytes(ffi.buffer(state))

    def set_lapic(self, state: bytes) -> None:
        _ioctl(self.fd, abi.KVM_SET_LAPIC, ffi.from_buffer(state), "KVM_SET_LAPIC")

    def close(self) -> None:
        del self.run_struct, self._page
        self._map.close()
        os.close(self.fd)
