"""The KVM binding's fast paths: ioeventfd, irqfd, MSI, GSI routing, dirty log."""

from __future__ import annotations

import os
import select
import threading

import pytest

from vmd.accel.kvm import Kvm, Vm
from vmd.hw.bus import IoBus
from vmd.machine import x86
from vmd.machine.memory import AddressSpace, MemoryRegion
from vmd.machine.vcpu import VcpuThread, install_kick_handler

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm is absent")]

# 32-bit code: out 0x10 <- 1 (an ioeventfd, no exit); mov [0x3000], eax; out 0x11 <- al; hlt
GUEST = bytes.fromhex("b001" "e610" "a300300000" "e611" "f4")


class Recorder:
    def __init__(self) -> None:
        self.ports: list[int] = []
        self.written = threading.Event()

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.ports.append(value)
        self.written.set()


def tiny_vm(code: bytes, slot_flags: int = 0) -> tuple[Kvm, Vm, MemoryRegion]:
    """A VM with an irqchip and 1 MiB of RAM holding ``code`` at 0x1000 (32-bit, flat GDT at 0x500)."""
    install_kick_handler()
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_irqchip()
    system = MemoryRegion("system", 1 << 64)
    ram = MemoryRegion.ram("pc.ram", 1 << 20)
    system.add(0, MemoryRegion.alias_of("ram-below-4g", ram, 0, ram.size))
    memory = AddressSpace("memory", system)
    memory.write(0x1000, code)
    memory.write(0x500, x86.MULTIBOOT_GDT)
    vm.set_memory_region(0, 0, ram.size, ram.host_address, flags=slot_flags)
    return kvm, vm, ram


def start_vcpu(kvm: Kvm, vm: Vm, pio: IoBus, mmio: IoBus) -> VcpuThread:
    """vCPU 0 at 0x1000 in 32-bit mode, running in its thread."""
    vcpu = vm.create_vcpu(0)
    vcpu.set_cpuid(kvm.supported_cpuid())
    x86.enter(vcpu, x86.EntryState(rip=0x1000, gdt_base=0x500))
    vcpu.set_mp_state(0)
    thread = VcpuThread(vcpu, pio, mmio, threading.Lock(), lambda *_: None)
    thread.start()
    thread.resume()
    return thread


def test_ioeventfd_dirty_log_and_interrupt_paths() -> None:
    kvm, vm, ram = tiny_vm(GUEST, slot_flags=1)  # LOG_DIRTY_PAGES
    assert vm.get_dirty_log(0, 256) == bytes(32)
    doorbell = os.eventfd(0, os.EFD_NONBLOCK)
    vm.ioeventfd(doorbell, 0x10, 1, pio=True)
    pio = IoBus("io", unassigned_all_ones=True)
    recorder = Recorder()
    pio.map(0x10, 2, recorder, "test")
    thread = start_vcpu(kvm, vm, pio, IoBus("memory", unassigned_all_ones=False))
    assert select.select([doorbell], [], [], 30)[0] == [doorbell]
    assert os.eventfd_read(doorbell) == 1
    assert recorder.written.wait(30)
    thread.quit()
    assert recorder.ports == [1]                # port 0x10 never exited; 0x11 did
    dirty = vm.get_dirty_log(0, 256)
    assert dirty[0] & (1 << 3)                  # the page at 0x3000 was written
    irq = os.eventfd(0, os.EFD_NONBLOCK)
    vm.irqfd(irq, 5)
    vm.irqfd(irq, 5, deassign=True)
    vm.set_gsi_routing([(gsi, 2, gsi) for gsi in range(24)])
    assert vm.signal_msi(0xFEE00000, 0x30) >= 0
    os.close(doorbell)
    os.close(irq)
