"""The ``pc`` board: KVM, memory, the in-kernel chips, devices, vCPUs, boot.

Everything is wired here, in one place (Firecracker's builder shape):

* KVM: the VM with QEMU's TSS and identity-map pages (0xfeffd000,
  0xfeffc000, reserved in the e820 map), the in-kernel PIC/IOAPIC/LAPICs
  (``KVM_CREATE_IRQCHIP``) and PIT (``KVM_CREATE_PIT2``, with the port-0x61
  speaker stub);
* memory: ``pc.ram`` (anonymous memory of ``-m`` bytes) seen through the
  ``ram-below-4g``/``ram-above-4g`` aliases, ``pc.rom`` at 0xc0000 (the boot
  GDTs) and ``pc.bios`` below 4 GiB (a halt loop at the reset vector: vmd
  has no firmware, so without ``-kernel`` the CPU halts, like a PC with no
  boot device);
* the PCI chipset (``vmd.hw.pci.host``: i440FX host bridge with the
  configuration ports 0xcf8/0xcfc, PIIX3 at 01.0 routing INTx to GSIs
  10/11, its IDE and PM functions), MSI routes on KVM (``vmd.machine.msi``)
  and the services virtio needs: guest RAM views, loop notifiers,
  ioeventfds;
* devices from the QOM registry on the port and MMIO buses: the RTC (with
  QEMU's CMOS bytes), i8042, port 0x92, port 0x80, the ACPI PM ports, a
  16550A per ``-serial``, then every ``-device`` on the bus its type (or
  ``bus=``) names (``vmd.machine.peripherals``, which ``device_add`` uses too);
* ACPI PCI hotplug on ``pci.0`` (``vmd.machine.acpi_pcihp``, GPE0 in
  ``vmd.machine.acpi_pm``): the board is the bus's hotplug controller and
  removes what the guest ejects;
* one vCPU per ``-smp`` CPU with the CPUID of ``-cpu``.

Thread use: built on the loop thread; afterwards the buses and devices are
used with ``bql`` held (vCPU threads, and the loop for chardev input and
timers), and the ``Machine`` in ``vmd.machine.vm`` drives life cycle.
"""

from __future__ import annotations

import asyncio
import mmap
import threading
from typing import Any

from vmd.accel import abi, cpuid
from vmd.accel.kvm import Kvm, Vcpu, Vm
from vmd.cli.config import Config
from vmd.hw import devices  # noqa: F401  (registers the device types)
from vmd.hw.bus import IoBus
from vmd.hw.charport import CharPort
from vmd.hw.clock import LoopClock
from vmd.hw.context import DeviceContext
from vmd.hw.misc_ports import IoPort80
from vmd.hw.notifier import LoopNotifier
from vmd.hw.pc_cmos import pc_cmos_init, pc_ram_split
from vmd.hw.pci.bus import CONFIG_ADDRESS_PORT, PciBus
from vmd.hw.pci.host import I440fx, I440fxHost, Piix3, Piix3Ide, Piix4Pm, firmware_setup
from vmd.hw.virtio.memory import GuestMemory
from vmd.machine import x86
from vmd.machine.acpi_pcihp import GPE_PCI_HOTPLUG, PCIHP_BASE, PCIHP_SIZE, AcpiPciHotplug
from vmd.machine.acpi_pm import GPE0_BASE, GPE0_SIZE, PM_BASE, PM_SIZE, SCI_IRQ, AcpiPm, Gpe0Block
from vmd.machine.boot import BootError, BootImage, acpi, linux, multiboot, read_file
from vmd.machine.boot.e820 import memory_map
from vmd.machine.memory import AddressSpace, MemoryRegion
from vmd.machine.msi import KvmMsiRoutes
from vmd.machine.peripherals import Peripherals
from vmd.machine.slots import KvmSlots
from vmd.qom.device import Device, create_device
from vmd.qom.qtree import Bus, find_bus

TSS_ADDR = 0xFEFFD000
IDENTITY_MAP_ADDR = 0xFEFFC000
ROM_BASE, ROM_SIZE = 0xC0000, 0x20000
MULTIBOOT_GDT = ROM_BASE
LINUX_GDT = ROM_BASE + 0x100
BIOS_BASE, BIOS_SIZE = 0xFFFC0000, 0x40000
HALT_LOOP = bytes.fromhex("faf4ebfd")  # cli; 1: hlt; jmp 1b

BUILTIN_DEVICES = ("mc146818rtc", "i8042", "port92")
#: What QEMU's pc sets on them (its RTC has base_year 0: the year registers hold the real year).
BUILTIN_PROPERTIES = {"mc146818rtc": {"base_year": "0"}}


class KvmIrq:
    """An ``IrqLine`` that drives a GSI of the in-kernel irqchip."""

    def __init__(self, vm: Vm, gsi: int) -> None:
        self._vm = vm
        self._gsi = gsi

    def set_level(self, level: int) -> None:
        self._vm.irq_line(self._gsi, level)


class PcBoard:
    """Built from the configuration; raises ``BootError``/``QOMError`` on bad input."""

    def __init__(self, config: Config, kvm: Kvm, services: Any, loop: asyncio.AbstractEventLoop,
                 bql: threading.Lock) -> None:
        self.config = config
        self.kvm = kvm
        self.cpu_model = cpuid.model_name(config.cpu or "qemu64")
        self.vm = vm = kvm.create_vm()
        vm.set_tss_addr(TSS_ADDR)
        vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        vm.create_irqchip()
        vm.create_pit2()
        self.ram_size = config.memory_bytes
        self.memory, self.io = self._build_memory()
        self.pio = IoBus("io", unassigned_all_ones=True)
        self.mmio = IoBus("memory", unassigned_all_ones=False)
        self.root_bus = Bus("main-system-bus", "System")
        self.isa_bus = Bus("isa.0", "ISA")
        self.pci_bus = PciBus("pci.0", self.pio, self.mmio)
        self.pci_bus.bar_listeners.append(self._bar_mapped)
        self._bar_regions: dict[tuple[bool, str, int], MemoryRegion] = {}
        self.context = DeviceContext(
            pio=self.pio, mmio=self.mmio, irq=lambda gsi: KvmIrq(vm, gsi),
            chardev=lambda chardev_id: self._char_port(services, chardev_id, loop, bql),
            ram_size=self.ram_size, request_reset=services.request_guest_reset,
            request_shutdown=services.request_guest_shutdown, request_exit=services.request_exit,
            clock=LoopClock(loop, bql), smp_cpus=config.smp.cpus,
            memory=self._guest_ram(), msi=KvmMsiRoutes(vm),
            notifier=lambda callback: LoopNotifier(loop, bql, callback),
            ioeventfd=lambda fd, address, length, assign: vm.ioeventfd(
                fd, address, length, pio=False, deassign=not assign),
            bql=bql, block=services.block_graph, iothreads=services.iothread_ids,
            events=services.events, runstate=services.runstate)
        self.peripherals = Peripherals(self.root_bus, self.context, loop)
        self.devices = self.peripherals.devices
        self.piix3 = self._build_chipset()
        self.acpi_pm = AcpiPm(KvmIrq(vm, SCI_IRQ), lambda: services.request_guest_shutdown("guest-shutdown"))
        self.pcihp = AcpiPciHotplug(lambda: self.acpi_pm.gpe_event(GPE_PCI_HOTPLUG), self._eject,
                                    self._fixed_slots)
        self.pci_bus.hotpluggable = True
        self.pci_bus.hotplug = self
        self._add_devices()
        self.vcpus = self._create_vcpus()
        self.boot = self._load_kernel()
        self._pristine_irqchip = [vm.get_irqchip(chip) for chip in range(3)]
        self._pristine_lapic = [vcpu.get_lapic() for vcpu in self.vcpus]

    # -- memory ---------------------------------------------------------------

    def _build_memory(self) -> tuple[AddressSpace, AddressSpace]:
        system = MemoryRegion("system", 1 << 64)
        ram = MemoryRegion.ram("pc.ram", self.ram_size)
        if not self.config.dump_guest_core and ram.backing is not None:
            ram.backing.madvise(mmap.MADV_DONTDUMP)  # -machine dump-guest-core=off
        below, above = pc_ram_split(self.ram_size)
        system.add(0, MemoryRegion.alias_of("ram-below-4g", ram, 0, below))
        if above:
            system.add(1 << 32, MemoryRegion.alias_of("ram-above-4g", ram, below, above))
        system.add(ROM_BASE, MemoryRegion.ram("pc.rom", ROM_SIZE, readonly=True), priority=1)
        system.add(BIOS_BASE, MemoryRegion.ram("pc.bios", BIOS_SIZE, readonly=True))
        system.add(0xA0000, MemoryRegion.io("vga-lowmem", 0x20000, None), priority=1)
        system.add(acpi.IOAPIC_ADDRESS, MemoryRegion.io("kvm-ioapic", 0x1000, None))
        system.add(acpi.LAPIC_ADDRESS, MemoryRegion.io("kvm-apic-msi", 0x100000, None), priority=4096)
        memory = AddressSpace("memory", system)
        slots = KvmSlots(self.vm)
        memory.listeners.append(slots.update)
        memory.commit()
        io = MemoryRegion("io", 0x10000)
        for base, size, name in ((0x20, 2, "kvm-pic"), (0x40, 4, "kvm-pit"), (0x61, 1, "pcspk"),
                                 (0xA0, 2, "kvm-pic"), (0x4D0, 1, "kvm-elcr"), (0x4D1, 1, "kvm-elcr")):
            io.add(base, MemoryRegion.io(name, size, None))
        return memory, AddressSpace("I/O", io)

    def _guest_ram(self) -> GuestMemory:
        """What devices may DMA to: the flat ranges backed by ``pc.ram``."""
        ranges = []
        for flat in self.memory.view:
            if flat.region.name == "pc.ram" and flat.region.backing is not None:
                whole = memoryview(flat.region.backing)
                ranges.append((flat.start, whole[flat.offset:flat.offset + flat.end - flat.start]))
        return GuestMemory(ranges)

    def _bar_mapped(self, io: bool, name: str, address: int, size: int, mapped: bool) -> None:
        """Keep ``info mtree`` in step with the guest's BAR placement."""
        space = self.io if io else self.memory
        key = (io, name, address)
        if mapped:
            region = self._bar_regions[key] = MemoryRegion.io(name, size, None)
            space.root.add(address, region, priority=0 if io else -1)
        elif key in self._bar_regions:
            space.root.remove(self._bar_regions.pop(key))
        space.commit()

    def io_regions(self) -> None:
        """Mirror the buses' device mappings into the tree (for ``info mtree``)."""
        for bus, space in ((self.pio, self.io), (self.mmio, self.memory)):
            for mapping in bus.mappings():
                if not any(child.offset == mapping.base and child.region.name == mapping.name
                           for child in space.root.children):
                    space.root.add(mapping.base, MemoryRegion.io(mapping.name, mapping.size, mapping.handler))

    # -- devices --------------------------------------------------------------

    @staticmethod
    def _char_port(services: Any, chardev_id: str, loop: asyncio.AbstractEventLoop,
                   bql: threading.Lock) -> CharPort | None:
        if services.chardevs.get(chardev_id) is None:
            return None
        return CharPort(services.chardevs, chardev_id, loop, bql)

    def _build_chipset(self) -> Piix3:
        """i440FX-pcihost with pci.0: 00.0 host bridge, 01.0 PIIX3 (isa.0), 01.1 IDE, 01.3 PM."""
        host = I440fxHost({})
        host.attach_bus(self.pci_bus)
        self.root_bus.plug(host)
        assert host.ports is not None
        self.pio.map(CONFIG_ADDRESS_PORT, 8, host.ports, "pci-conf", max_access=4)
        self.devices.append(host)
        piix3 = Piix3({"addr": 0x08})
        piix3.child_buses.append(self.isa_bus)
        for function in (I440fx({"addr": 0x00}), piix3, Piix3Ide({"addr": 0x09}), Piix4Pm({"addr": 0x0B})):
            self.pci_bus.attach(function)
            function.realize(self.context)
            self.devices.append(function)
        self.pci_bus.router = piix3
        self.pci_bus.first_free_slot = 2
        return piix3

    def _add_devices(self) -> None:
        self.pio.map(0x80, 1, IoPort80(), "ioport80")
        self.pio.map(PM_BASE, PM_SIZE, self.acpi_pm, "acpi-pm", max_access=4)
        self.pio.map(GPE0_BASE, GPE0_SIZE, Gpe0Block(self.acpi_pm), "acpi-gpe0")
        self.pio.map(PCIHP_BASE, PCIHP_SIZE, self.pcihp, "acpi-pci-hotplug", max_access=4)
        for driver in BUILTIN_DEVICES:
            device = self._realize(create_device({"driver": driver, **BUILTIN_PROPERTIES.get(driver, {})},
                                                 user=False))
            if driver == "mc146818rtc":
                pc_cmos_init(device.rtc, self.ram_size, self.config.smp.cpus)  # type: ignore[attr-defined]
        for chardev_id in self.config.serials:
            self._realize(create_device({"driver": "isa-serial", "chardev": chardev_id}, user=False))
        for device_config in self.config.devices:
            self.peripherals.add(dict(device_config.options), hotplug=False)
        self.io_regions()

    def _realize(self, device: Device) -> Device:
        """A built-in device on the bus of its type."""
        return self.peripherals.realize(device, find_bus(self.root_bus, device.type_info, None))

    # -- PCI hotplug (QEMU's piix4 acpi-pcihp on pci.0) --------------------------

    def plugged(self, device: Device) -> None:
        self.pcihp.plugged(device.slot)  # type: ignore[attr-defined]

    def unplug_request(self, device: Device) -> None:
        self.pcihp.unplug_request(device.slot)  # type: ignore[attr-defined]

    def _eject(self, slot: int) -> None:
        """The guest ejected ``slot``: its removable functions leave."""
        for devfn in range(slot << 3, (slot << 3) + 8):
            device = self.pci_bus.functions.get(devfn)
            if device is not None and device.type_info.user_creatable:
                self.peripherals.remove(device)

    def _fixed_slots(self) -> set[int]:
        """Slots holding a device that cannot be unplugged (the chipset's)."""
        return {device.slot for device in self.pci_bus.functions.values() if not device.type_info.user_creatable}

    # -- CPUs and boot -------------------------------------------------------

    def _create_vcpus(self) -> list[Vcpu]:
        table = cpuid.model_cpuid(self.cpu_model, self.kvm.supported_cpuid())
        cpus = self.config.smp.cpus
        vcpus = []
        for index in range(cpus):
            vcpu = self.vm.create_vcpu(index)
            vcpu.set_cpuid(cpuid.for_vcpu(table, index, cpus))
            vcpus.append(vcpu)
        return vcpus

    def _load_kernel(self) -> BootImage | None:
        blobs = [(MULTIBOOT_GDT, x86.MULTIBOOT_GDT), (LINUX_GDT, x86.LINUX_GDT),
                 (BIOS_BASE + BIOS_SIZE - 16, HALT_LOOP), *acpi.tables(self.config.smp.cpus)]
        path = self.config.kernel
        image = None
        if path is not None:
            data = read_file(path, "kernel")
            header = multiboot.find_header(data)
            if linux.is_bzimage(data):
                image = linux.load(data, self.config.append or "", self.config.initrd, self.ram_size,
                                   memory_map(self.ram_size), acpi.RSDP, LINUX_GDT)
            elif header is not None:
                image = multiboot.load(path, data, header, self.config.append or "", self.config.initrd,
                                       self.ram_size, amd=True)
                image.entry.gdt_base = MULTIBOOT_GDT
            else:
                raise BootError(f"could not load kernel '{path}': not a Linux bzImage or a multiboot image")
        elif self.config.initrd or self.config.append:
            raise BootError("-initrd and -append only allowed with -kernel option")
        self._firmware = blobs
        return image

    def reset(self) -> None:
        """Power-on state: chips, devices, memory blobs, CPUs (BQL held, vCPUs parked)."""
        for state in self._pristine_irqchip:
            self.vm.set_irqchip(state)
        for device in self.devices:
            device.reset()
        firmware_setup(self.pci_bus, self.piix3)
        self.acpi_pm.reset()
        self.pcihp.reset()
        for address, data in self._firmware + (self.boot.blobs if self.boot else []):
            self.memory.write(address, data)
        for vcpu, lapic in zip(self.vcpus, self._pristine_lapic):
            x86.reset(vcpu)
            vcpu.set_lapic(lapic)
            if vcpu.index == 0:
                vcpu.set_mp_state(abi.MP_STATE_RUNNABLE)
                if self.boot is not None:
                    x86.enter(vcpu, self.boot.entry)
            else:
                vcpu.set_mp_state(abi.MP_STATE_UNINITIALIZED)

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vm.close()

