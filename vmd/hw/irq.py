"""Interrupt lines as devices see them.

A device holds an ``IrqLine`` and sets its level; what the level does
(``KVM_IRQ_LINE`` on the in-kernel PIC/IOAPIC, a GPIO of another device)
is the machine's business. An ISA line is edge-triggered at the PIC: a
device that wants a new interrupt lowers the line first, as QEMU's do.
"""

from __future__ import annotations

from typing import Protocol


class IrqLine(Protocol):
    """One interrupt (or GPIO) line."""

    def set_level(self, level: int) -> None:
        """Drive the line: 1 asserted, 0 deasserted."""


class NoIrq:
    """A line connected to nothing (QEMU's NULL ``qemu_irq``)."""

    def set_level(self, level: int) -> None:
        del level
