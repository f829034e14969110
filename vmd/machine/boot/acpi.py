"""Minimal ACPI tables: RSDP, XSDT, FADT (+FACS), MADT and DSDT.

Enough for a Linux guest to find the CPUs and the IOAPIC (the Debian
kernel ignores MP tables) and to power off through ACPI S5: the FADT
points at the PM1 event/control blocks, the PM timer and the GPE0 block
of vmd's PIIX4-like power management ports (``vmd.machine.acpi_pm``), and the DSDT declares
``\\_S5`` with SLP_TYP 0, which the PM1 control port treats as power-off,
as QEMU's piix4 does. The tables live in the BIOS area at 0xF0000 (reserved
in the e820 map), where the guest's RSDP scan finds them; Linux also gets
the RSDP address in boot_params. With KVM's default routing GSI n is IOAPIC
pin n, so the only override is the SCI's (IRQ 9, level, active high).
"""

from __future__ import annotations

import struct

from vmd.machine.acpi_pm import GPE0_BASE, GPE0_SIZE, PM_BASE, SCI_IRQ

BASE = 0xF0000
RSDP = BASE
XSDT = BASE + 0x40
FADT = BASE + 0x100
FACS = BASE + 0x200
MADT = BASE + 0x300
DSDT = BASE + 0x400
LAPIC_ADDRESS = 0xFEE00000
IOAPIC_ADDRESS = 0xFEC00000

OEM_ID = b"BOCHS "
OEM_TABLE_ID = b"BXPC    "


def _checksum(data: bytes | bytearray) -> int:
    return (-sum(data)) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    length = 36 + len(body)
    header = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                         b"BXPC", 1)
    data = bytearray(header + body)
    data[9] = _checksum(data)
    return bytes(data)


def rsdp() -> bytes:
    data = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, XSDT, 0))
    data[8] = _checksum(data[:20])
    data[32] = _checksum(data)
    return bytes(data)


def xsdt() -> bytes:
    return _table(b"XSDT", 1, struct.pack("<2Q", FADT, MADT))


def fadt() -> bytes:
    body = bytearray(244 - 36)

    def put(offset: int, fmt: str, *values: int) -> None:
        struct.pack_into(fmt, body, offset - 36, *values)

    put(36, "<II", FACS, DSDT)
    put(46, "<H", SCI_IRQ)
    put(56, "<I", PM_BASE)          # PM1a_EVT_BLK
    put(64, "<I", PM_BASE + 4)      # PM1a_CNT_BLK
    put(76, "<I", PM_BASE + 8)      # PM_TMR_BLK
    put(80, "<I", GPE0_BASE)        # GPE0_BLK (PCI hotplug raises GPE 1 there)
    put(88, "<5B", 4, 2, 0, 4, GPE0_SIZE)  # PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN, GPE0_BLK_LEN
    put(96, "<HH", 0xFFF, 0xFFF)    # no C2/C3
    put(108, "<B", 0x32)            # CMOS century register
    put(112, "<I", (1 << 0) | (1 << 2) | (1 << 5) | (1 << 7))  # WBINVD, PROC_C1, SLP_BUTTON, RTC_S4
    put(140, "<Q", DSDT)            # X_DSDT
    return _table(b"FACP", 3, bytes(body))


def facs() -> bytes:
    return struct.pack("<4sI", b"FACS", 64).ljust(64, b"\0")


def madt(cpus: int) -> bytes:
    body = struct.pack("<II", LAPIC_ADDRESS, 1)  # PCAT_COMPAT: there are 8259s
    for apic_id in range(cpus):
        body += struct.pack("<BBBBI", 0, 8, apic_id, apic_id, 1)
    body += struct.pack("<BBBBII", 1, 12, 0, 0, IOAPIC_ADDRESS, 0)
    body += struct.pack("<BBBBIH", 2, 10, 0, SCI_IRQ, SCI_IRQ, 0x000D)
    return _table(b"APIC", 1, body)


def dsdt() -> bytes:
    # Name (_S5, Package (4) { 0, 0, 0, 0 })
    s5 = bytes([0x08]) + b"_S5_" + bytes([0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00])
    return _table(b"DSDT", 1, s5)


def tables(cpus: int) -> list[tuple[int, bytes]]:
    """Blobs to copy into guest memory; the RSDP is at ``RSDP``."""
    return [(RSDP, rsdp()), (XSDT, xsdt()), (FADT, fadt()), (FACS, facs()), (MADT, madt(cpus)),
            (DSDT, dsdt())]
