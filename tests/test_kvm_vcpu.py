"""A vCPU thread runs a tiny guest whose port accesses reach a device."""

from __future__ import annotations

import os
import threading

import pytest

from vmd.accel.kvm import Kvm
from vmd.hw.bus import IoBus
from vmd.machine import x86
from vmd.machine.memory import AddressSpace, MemoryRegion
from vmd.machine.slots import KvmSlots
from vmd.machine.vcpu import VcpuThread, install_kick_handler

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm is absent")]

# 32-bit code: out 0x10 <- 0x42; al = in 0x10; out 0x10 <- al + 1; hlt
GUEST = bytes.fromhex("66ba1000" "b042" "ee" "ec" "0401" "ee" "f4")


class Port:
    """A device on port 0x10 that records writes and answers reads with 7."""

    def __init__(self) -> None:
        self.writes: list[int] = []

    def read(self, offset: int, size: int) -> int:
        return 7

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append(value)


def test_guest_port_io_reaches_device() -> None:
    install_kick_handler()
    kvm = Kvm()
    vm = kvm.create_vm()
    system = MemoryRegion("system", 1 << 64)
    ram = MemoryRegion.ram("pc.ram", 2 << 20)
    system.add(0, MemoryRegion.alias_of("ram-below-4g", ram, 0, ram.size))
    memory = AddressSpace("memory", system)
    slots = KvmSlots(vm)
    memory.listeners.append(slots.update)
    memory.commit()
    pio = IoBus("io", unassigned_all_ones=True)
    port = Port()
    pio.map(0x10, 1, port, "test-port")
    memory.write(0x1000, GUEST)
    memory.write(0x500, x86.MULTIBOOT_GDT)
    vcpu = vm.create_vcpu(0)
    vcpu.set_cpuid(kvm.supported_cpuid())
    x86.enter(vcpu, x86.EntryState(rip=0x1000, gdt_base=0x500))
    halted = threading.Event()
    mmio = IoBus("memory", unassigned_all_ones=False)
    thread = VcpuThread(vcpu, pio, mmio, threading.Lock(), lambda _i, _kind, _d: halted.set())
    thread.start()
    thread.resume()
    assert halted.wait(30)
    thread.quit()
    assert port.writes == [0x42, 8]
    assert list(slots.slots()) == [(0, 2 << 20, ram.host_address, 0)]
