"""The ACPI PCI hotplug registers and the GPE0 block, fed accesses as a guest makes them."""

from __future__ import annotations

from tests.hw_fakes import RecordingIrq
from vmd.machine.acpi_pcihp import ACPI_INDEX, DOWN, EJECT, GPE_PCI_HOTPLUG, REMOVABLE, SELECT, UP, AcpiPciHotplug
from vmd.machine.acpi_pm import AcpiPm, Gpe0Block


class Board:
    """Records what the registers ask of the machine."""

    def __init__(self) -> None:
        self.events = 0
        self.ejected: list[int] = []

    def event(self) -> None:
        self.events += 1

    def hotplug(self, fixed: set[int] | None = None) -> AcpiPciHotplug:
        pcihp = AcpiPciHotplug(self.event, self.ejected.append, lambda: fixed or {0, 1})
        pcihp.reset()
        return pcihp


def test_a_plug_is_seen_once_and_raises_the_event() -> None:
    board = Board()
    pcihp = board.hotplug()
    assert [pcihp.read(offset, 4) for offset in (UP, DOWN, EJECT, REMOVABLE, SELECT, ACPI_INDEX)] == \
        [0, 0, 0, 0xFFFFFFFC, 0, 0]
    pcihp.plugged(2)
    pcihp.plugged(4)
    assert board.events == 2
    assert pcihp.read(UP, 1) == 0 and pcihp.read(UP, 2) == 0   # other widths: 0, nothing cleared
    assert pcihp.read(UP, 4) == 0x14
    assert pcihp.read(UP, 4) == 0


def test_unplug_request_stays_until_the_guest_ejects_the_lowest_slot() -> None:
    board = Board()
    pcihp = board.hotplug()
    pcihp.unplug_request(3)
    pcihp.unplug_request(5)
    assert pcihp.read(DOWN, 4) == 0x28 and pcihp.read(DOWN, 4) == 0x28
    pcihp.write(EJECT, 4, 0x28)
    assert board.ejected == [3]
    assert pcihp.read(DOWN, 4) == 0x20
    pcihp.write(EJECT, 2, 0x20)       # not a 32-bit write: ignored
    pcihp.write(EJECT, 4, 0)          # no slot
    assert board.ejected == [3]


def test_an_eject_needs_no_request_and_reset_carries_out_pending_ones() -> None:
    board = Board()
    pcihp = board.hotplug()
    pcihp.write(EJECT, 4, 1 << 7)
    pcihp.unplug_request(9)
    pcihp.unplug_request(6)
    pcihp.reset()
    assert board.ejected == [7, 6, 9]
    assert pcihp.read(DOWN, 4) == 0


def test_bus_select_other_buses_have_nothing_and_far_ones_read_zero() -> None:
    board = Board()
    pcihp = board.hotplug(fixed={0, 1, 3})
    assert pcihp.read(REMOVABLE, 4) == 0xFFFFFFF4
    pcihp.plugged(2)
    pcihp.write(SELECT, 4, 5)
    assert [pcihp.read(offset, 4) for offset in (UP, DOWN, REMOVABLE, SELECT)] == [0, 0, 0xFFFFFFFF, 5]
    pcihp.write(EJECT, 4, 4)
    assert board.ejected == []
    pcihp.write(SELECT, 4, 0x105)
    assert [pcihp.read(offset, 4) for offset in (UP, REMOVABLE, SELECT)] == [0, 0, 0]
    pcihp.write(SELECT, 4, 0)
    assert pcihp.read(UP, 4) == 4


def test_gpe_raises_the_sci_while_enabled_and_write_one_clears() -> None:
    sci = RecordingIrq()
    pm = AcpiPm(sci, lambda: None)
    gpe = Gpe0Block(pm)
    pm.gpe_event(GPE_PCI_HOTPLUG)
    assert (gpe.read(0, 1), gpe.read(1, 1), sci.level) == (2, 0, 0)
    gpe.write(2, 1, 0xFF)
    gpe.write(3, 1, 0xFF)
    assert (gpe.read(2, 1), gpe.read(3, 1), sci.level) == (0xFF, 0xFF, 1)
    gpe.write(0, 1, 0x01)             # another bit: the hotplug bit stays
    assert sci.level == 1
    gpe.write(0, 1, GPE_PCI_HOTPLUG)
    assert (gpe.read(0, 1), sci.level) == (0, 0)
    pm.reset()
    assert (pm.gpe_status, pm.gpe_enable) == (0, 0)
