"""PCI's KVM plumbing on a real VM: MMIO doorbells as ioeventfds, MSI routes with irqfds."""

from __future__ import annotations

import os
import select

import pytest

from tests.test_kvm_interrupts import Recorder, start_vcpu, tiny_vm
from vmd.hw.bus import IoBus
from vmd.machine.msi import FIRST_MSI_GSI, KvmMsiRoutes, default_irqchip_routes

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm is absent")]

DOORBELL = 0xE0003000
# 32-bit code: mov ax, 1; mov [DOORBELL], ax (an ioeventfd: no exit); mov [DOORBELL+4], eax (exits); hlt
GUEST = bytes.fromhex("66b80100" "66a3003000e0" "a3043000e0" "f4")


def test_mmio_doorbell_ioeventfd_and_msi_routes() -> None:
    kvm, vm, _ = tiny_vm(GUEST)
    doorbell = os.eventfd(0, os.EFD_NONBLOCK)
    vm.ioeventfd(doorbell, DOORBELL, 2, pio=False)
    mmio = IoBus("memory", unassigned_all_ones=False)
    recorder = Recorder()
    mmio.map(DOORBELL, 0x1000, recorder, "notify", max_access=4)
    thread = start_vcpu(kvm, vm, IoBus("io", unassigned_all_ones=True), mmio)
    assert select.select([doorbell], [], [], 30)[0] == [doorbell]
    assert os.eventfd_read(doorbell) == 1
    assert recorder.written.wait(30)
    thread.quit()
    assert recorder.ports == [1]                 # only the 4-byte write exited to Python
    routes = KvmMsiRoutes(vm)
    first, second = routes.vector(), routes.vector()
    assert (first.gsi, second.gsi) == (FIRST_MSI_GSI, FIRST_MSI_GSI + 1)
    first.fire(0xFEE00000, 0x41)                 # route + irqfd, then one eventfd write
    second.fire(0xFEE00000, 0x42)
    first.fire(0xFEE01000, 0x43)                 # the guest moved the vector: route rewritten
    assert first.message == (0xFEE01000, 0x43)
    vm.irq_line(10, 1)                           # the legacy routes are still there
    vm.irq_line(10, 0)
    first.release()
    assert routes.vector().gsi == FIRST_MSI_GSI  # the GSI is reused
    assert len(default_irqchip_routes()) == 16 + 24
    os.close(doorbell)
