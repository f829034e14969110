"""``query-pci`` and HMP ``info pci`` in QEMU's shapes and texts.

HMP prints from the QMP reply, as QEMU's ``hmp_info_pci`` does. Classes
QEMU names are described; others print as ``Class NNNN`` (decimal).
"""

from __future__ import annotations

from typing import Any

from vmd._generated.types import PciDeviceClass, PciDeviceId, PciDeviceInfo, PciInfo, PciMemoryRegion
from vmd.hw.pci import config as cfg
from vmd.hw.pci.device import PciDevice

#: The entries of QEMU's ``pci_class_descriptions`` that vmd's devices and common guests use.
_CLASS_DESCRIPTIONS = {
    0x0100: "SCSI controller", 0x0101: "IDE controller", 0x0106: "SATA controller",
    0x0180: "Storage controller", 0x0200: "Ethernet controller", 0x0280: "Network controller",
    0x0300: "VGA controller", 0x0380: "Display controller", 0x0401: "Audio controller",
    0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0604: "PCI bridge", 0x0680: "Bridge",
    0x0700: "Serial port", 0x0880: "System peripheral", 0x0c03: "USB controller",
}


def class_description(class_code: int) -> str | None:
    return _CLASS_DESCRIPTIONS.get(class_code)


def device_info(device: PciDevice) -> PciDeviceInfo:
    c = device.config
    class_code = c.get(cfg.CLASS_DEVICE, 2)
    info = PciDeviceInfo(
        bus=0, slot=device.slot, function=device.function,
        class_info=PciDeviceClass(desc=class_description(class_code), class_=class_code),
        id=PciDeviceId(device=c.get(cfg.DEVICE_ID, 2), vendor=c.get(cfg.VENDOR_ID, 2),
                       subsystem=c.get(cfg.SUBSYSTEM_ID, 2),
                       subsystem_vendor=c.get(cfg.SUBSYSTEM_VENDOR_ID, 2)),
        irq_pin=c.data[cfg.INTERRUPT_PIN], qdev_id=device.id or "", regions=[])
    if info.irq_pin:
        info.irq = c.data[cfg.INTERRUPT_LINE]
    for bar in sorted(device.bars.values(), key=lambda b: b.index):
        region = PciMemoryRegion(bar=bar.index, type="io" if bar.io else "memory",
                                 address=bar.address, size=bar.size)
        if not bar.io:
            region.prefetch = bar.prefetch
            region.mem_type_64 = bar.mem64
        info.regions.append(region)
    return info


def _bus(ctx: Any) -> Any:
    machine = ctx.daemon.machine
    return None if machine is None else machine.board.pci_bus


def qmp_query_pci(ctx: Any) -> list[PciInfo]:
    bus = _bus(ctx)
    if bus is None:
        return []
    with ctx.daemon.machine.bql:
        devices = [device_info(bus.functions[devfn]) for devfn in sorted(bus.functions)]
    return [PciInfo(bus=0, devices=devices)]


def info_pci(ctx: Any, _args: list[str]) -> str:
    return "".join(_device_text(device) for pci in qmp_query_pci(ctx) for device in pci.devices)


def _device_text(dev: PciDeviceInfo) -> str:
    lines = [f"  Bus {dev.bus:2}, device {dev.slot:3}, function {dev.function}:"]
    desc = dev.class_info.desc or f"Class {dev.class_info.class_:04}"
    lines.append(f"    {desc}: PCI device {dev.id.vendor:04x}:{dev.id.device:04x}")
    if dev.id.subsystem is not None and dev.id.subsystem_vendor is not None:
        lines.append(f"      PCI subsystem {dev.id.subsystem_vendor:04x}:{dev.id.subsystem:04x}")
    if dev.irq is not None:
        lines.append(f"      IRQ {dev.irq}, pin {chr(dev.irq_pin + ord('A') - 1)}")
    for region in dev.regions:
        start = region.address & 0xFFFFFFFFFFFFFFFF
        end = (region.address + region.size - 1) & 0xFFFFFFFFFFFFFFFF
        if region.type == "io":
            lines.append(f"      BAR{region.bar}: I/O at 0x{start:04x} [0x{end:04x}].")
        else:
            prefetch = " prefetchable" if region.prefetch else ""
            lines.append(f"      BAR{region.bar}: {64 if region.mem_type_64 else 32} bit{prefetch} memory "
                         f"at 0x{start:08x} [0x{end:08x}].")
    lines.append(f'      id "{dev.qdev_id}"')
    return "".join(line + "\n" for line in lines)
