"""MSI on KVM: one GSI route and one irqfd per vector.

KVM keeps a single GSI routing table, replaced as a whole by
``KVM_SET_GSI_ROUTING``; ``KvmMsiRoutes`` owns it. It starts as KVM's
default table (GSI n to IOAPIC pin n for n < 24, and to PIC pin n mod 8
of chip n / 8 for n < 16), which vmd's ACPI MADT describes, and adds one
MSI route per vector in use, from GSI 24 up. Each vector has an eventfd
bound to its GSI with ``KVM_IRQFD``: firing the vector is one
``eventfd_write``, from any thread, with no ioctl. When the guest changes
a vector's address/data the route is rewritten at the next delivery.
Routes change with the BQL held (table writes and deliveries hold it).
"""

from __future__ import annotations

import os

from vmd.accel.kvm import Vm

FIRST_MSI_GSI = 24
IOAPIC_PINS = 24
PIC_MASTER, PIC_SLAVE, IOAPIC = 0, 1, 2


def default_irqchip_routes() -> list[tuple[int, int, int]]:
    """KVM's default routing (``kvm_setup_default_irq_routing``)."""
    routes = [(gsi, PIC_MASTER if gsi < 8 else PIC_SLAVE, gsi % 8) for gsi in range(16)]
    routes += [(gsi, IOAPIC, gsi) for gsi in range(IOAPIC_PINS)]
    return routes


class KvmMsiVector:
    """One MSI source: a GSI with an MSI route and an irqfd."""

    def __init__(self, owner: KvmMsiRoutes, gsi: int) -> None:
        self._owner = owner
        self.gsi = gsi
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.message: tuple[int, int] | None = None
        self._bound = False

    def fire(self, address: int, data: int) -> None:
        if self.message != (address, data):
            self.message = (address, data)
            self._owner.commit()
        if not self._bound:
            self._owner.vm.irqfd(self.fd, self.gsi)
            self._bound = True
        os.eventfd_write(self.fd, 1)

    def release(self) -> None:
        if self._bound:
            self._owner.vm.irqfd(self.fd, self.gsi, deassign=True)
        os.close(self.fd)
        self._owner.forget(self)


class KvmMsiRoutes:
    """The VM's GSI routing table and the MSI vectors in it."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self._vectors: dict[int, KvmMsiVector] = {}

    def vector(self) -> KvmMsiVector:
        gsi = FIRST_MSI_GSI
        while gsi in self._vectors:
            gsi += 1
        vector = self._vectors[gsi] = KvmMsiVector(self, gsi)
        return vector

    def forget(self, vector: KvmMsiVector) -> None:
        self._vectors.pop(vector.gsi, None)
        self.commit()

    def commit(self) -> None:
        msi = [(gsi, *vector.message) for gsi, vector in sorted(self._vectors.items())
               if vector.message is not None]
        self.vm.set_gsi_routing(default_irqchip_routes(), msi)
