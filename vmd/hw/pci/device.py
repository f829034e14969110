"""A PCI function: configuration space, BARs, INTx, QOM properties.

``PciDevice`` is QEMU's ``pci-device``: a subclass sets its ids in
``init_config`` and registers BARs (``add_bar``); the bus (``PciBus``)
gives it a device/function number, routes its INTx pin and maps its BARs
when the guest enables decoding in the command register. A BAR is sized
the way hardware is: writing all ones reads back the size mask, because
the BAR's low bits are not in the write mask. Guest accesses arrive with
the BQL held (vCPU threads); nothing here blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vmd.hw.bus import IoHandler
from vmd.hw.pci import config as cfg
from vmd.qom.device import Device
from vmd.qom.errors import PropertyValueError, QOMError
from vmd.qom.property import Property
from vmd.qom.types import TYPE_DEVICE, TYPES, TypeInfo

if TYPE_CHECKING:
    from vmd.hw.context import DeviceContext
    from vmd.hw.pci.bus import PciBus
    from vmd.hw.pci.msix import MsiRoutes

TYPE_PCI_DEVICE = "pci-device"
TYPE_PCI_BUS = "PCI"

#: An unmapped BAR's address in ``query-pci`` (QEMU's PCI_BAR_UNMAPPED).
BAR_UNMAPPED = -1
IO_SPACE_LIMIT = 0x10000


def parse_devfn(value: Any) -> int:
    """QEMU's PCI ``addr`` property: ``slot[.fn]`` in hex, or a JSON devfn."""
    if isinstance(value, int) and not isinstance(value, bool):
        if -1 <= value <= 0xFF:
            return value
        raise PropertyValueError(str(value))
    if not isinstance(value, str):
        raise QOMError("Invalid parameter type for 'addr', expected: string")
    slot_text, _, fn_text = value.partition(".")
    try:
        slot = int(slot_text, 16)
        fn = int(fn_text, 16) if fn_text else 0
    except ValueError:
        raise PropertyValueError(value) from None
    if slot_text.lower().startswith(("0x", "-", "+")) or not 0 <= slot <= 0x1F or not 0 <= fn <= 7 \
            or (fn_text == "" and "." in value):
        raise PropertyValueError(value)
    return slot << 3 | fn


@dataclass(frozen=True)
class DevfnProperty(Property):
    """``addr``: printed ``02.0`` by ``info qtree``, ``<unset>`` when free."""

    def parse(self, value: Any) -> Any:
        return parse_devfn(value)

    def format(self, value: Any) -> str:
        if value is None or value < 0:
            return "<unset>"
        return f"{value >> 3:02x}.{value & 7}"


PCI_PROPERTIES = (
    DevfnProperty("addr", "int32", -1, "Slot and optional function number, example: 06.0 or 06"),
    Property("multifunction", "bool", False, "on/off"),
)

#: ``bootindex`` for PCI devices that can boot (added by those types only, as in QEMU).
BOOTINDEX = Property("bootindex", "int32", None, in_qtree=False)

TYPES.register(TypeInfo(TYPE_PCI_BUS, "bus"))
TYPES.register(TypeInfo(TYPE_PCI_DEVICE, TYPE_DEVICE, abstract=True, bus_type=TYPE_PCI_BUS,
                        properties=PCI_PROPERTIES))


@dataclass(eq=False)
class Bar:
    """One base address register and the region it decodes."""

    index: int
    size: int
    io: bool
    handler: IoHandler
    name: str
    mem64: bool = False
    prefetch: bool = False
    max_access: int = 4
    address: int = BAR_UNMAPPED
    #: Called with (old, new) address when the mapping changes.
    moved: list[Callable[[int, int], None]] = field(default_factory=list)

    @property
    def type_bits(self) -> int:
        if self.io:
            return cfg.BAR_SPACE_IO
        return (cfg.BAR_MEM_TYPE_64 if self.mem64 else 0) | (cfg.BAR_MEM_PREFETCH if self.prefetch else 0)


class PciDevice(Device):
    """A PCI function. Subclasses set the ids in ``init_config``."""

    vendor_id = 0
    device_id = 0
    class_id = 0
    revision = 0
    subsystem_vendor_id = cfg.SUBSYSTEM_VENDOR_QEMU
    subsystem_id = cfg.SUBSYSTEM_QEMU
    interrupt_pin = 0  # 1 = INTA#

    def __init__(self, props: dict[str, Any], dev_id: str | None = None) -> None:
        super().__init__(props, dev_id)
        self.config = cfg.ConfigSpace()
        self.bars: dict[int, Bar] = {}
        self.bus: PciBus | None = None
        #: Where MSI-X vectors get their routes (the machine's, set at realize).
        self.msi_routes: MsiRoutes | None = None
        self.devfn = -1
        self._irq_level = 0
        #: (start, end, callback): called after a guest write touching [start, end).
        self.config_watchers: list[tuple[int, int, Callable[[], None]]] = []
        self.init_config()

    def init_config(self) -> None:
        """Write the identity and read-only fields (QEMU's pci_config_set_*)."""
        c = self.config
        c.set_word(cfg.VENDOR_ID, self.vendor_id)
        c.set_word(cfg.DEVICE_ID, self.device_id)
        c.set_byte(cfg.REVISION_ID, self.revision)
        c.set_byte(cfg.CLASS_PROG, self.class_id & 0xFF)
        c.set_word(cfg.CLASS_DEVICE, self.class_id >> 8)
        c.set_word(cfg.SUBSYSTEM_VENDOR_ID, self.subsystem_vendor_id)
        c.set_word(cfg.SUBSYSTEM_ID, self.subsystem_id)
        c.set_byte(cfg.INTERRUPT_PIN, self.interrupt_pin)
        if self.props.get("multifunction"):
            c.set_byte(cfg.HEADER_TYPE, cfg.HEADER_TYPE_MULTI_FUNCTION)

    @property
    def slot(self) -> int:
        return self.devfn >> 3

    @property
    def function(self) -> int:
        return self.devfn & 7

    # -- BARs -----------------------------------------------------------------

    def add_bar(self, bar: Bar) -> Bar:
        """Register a BAR (before realize); its size must be a power of two."""
        assert bar.size & (bar.size - 1) == 0 and bar.size >= (4 if bar.io else 16)
        self.bars[bar.index] = bar
        offset = cfg.BASE_ADDRESS_0 + 4 * bar.index
        mask = ~(bar.size - 1)
        self.config.set_long(offset, bar.type_bits, wmask=mask & 0xFFFFFFFF & ~(3 if bar.io else 0xF))
        if bar.mem64:
            self.config.set_long(offset + 4, 0, wmask=(mask >> 32) & 0xFFFFFFFF)
        return bar

    def bar_address(self, bar: Bar) -> int:
        """Where the BAR decodes now (QEMU's pci_bar_address), or BAR_UNMAPPED."""
        command = self.config.get(cfg.COMMAND, 2)
        offset = cfg.BASE_ADDRESS_0 + 4 * bar.index
        if bar.io:
            if not command & cfg.COMMAND_IO:
                return BAR_UNMAPPED
            base = self.config.get(offset, 4) & ~(bar.size - 1) & 0xFFFFFFFC
            if base == 0 or base + bar.size > IO_SPACE_LIMIT:
                return BAR_UNMAPPED
            return base
        if not command & cfg.COMMAND_MEMORY:
            return BAR_UNMAPPED
        raw = self.config.get(offset, 8 if bar.mem64 else 4)
        base = raw & ~(bar.size - 1) & ~0xF
        limit = 1 << (64 if bar.mem64 else 32)
        if base == 0 or base + bar.size >= limit:
            return BAR_UNMAPPED
        return base

    def update_mappings(self) -> None:
        """Move every BAR whose address or decode enable changed."""
        if self.bus is None:
            return
        for bar in self.bars.values():
            new = self.bar_address(bar)
            if new != bar.address:
                old = bar.address
                self.bus.move_bar(self, bar, new)
                for hook in bar.moved:
                    hook(old, new)

    # -- configuration accesses (BQL held) --------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        old_command = self.config.get(cfg.COMMAND, 2)
        self.config.write(offset, size, value)
        end = offset + size
        if _overlaps(offset, end, cfg.BASE_ADDRESS_0, cfg.BASE_ADDRESS_0 + 24) or \
                _overlaps(offset, end, cfg.COMMAND, cfg.COMMAND + 2):
            self.update_mappings()
        if (old_command ^ self.config.get(cfg.COMMAND, 2)) & cfg.COMMAND_INTX_DISABLE:
            self._drive_intx()
        for start, stop, callback in self.config_watchers:
            if _overlaps(offset, end, start, stop):
                callback()

    # -- INTx ------------------------------------------------------------------

    def set_irq(self, level: int) -> None:
        """Assert (1) or deassert (0) the function's INTx pin (level-triggered)."""
        self._irq_level = 1 if level else 0
        self._drive_intx()

    def _drive_intx(self) -> None:
        status = self.config.data[cfg.STATUS]
        if self._irq_level:
            self.config.data[cfg.STATUS] = status | cfg.STATUS_INTERRUPT
        else:
            self.config.data[cfg.STATUS] = status & ~cfg.STATUS_INTERRUPT
        disabled = self.config.get(cfg.COMMAND, 2) & cfg.COMMAND_INTX_DISABLE
        if self.bus is not None and self.interrupt_pin:
            self.bus.set_intx(self, self._irq_level if not disabled else 0)

    # -- life cycle -------------------------------------------------------------

    def realize(self, ctx: DeviceContext) -> None:
        self.msi_routes = ctx.msi
        super().realize(ctx)

    def reset(self) -> None:
        """PCI reset: decoding off (BARs unmapped), INTx low (QEMU's pci_do_device_reset)."""
        self.config.set_word(cfg.COMMAND, 0)
        status = self.config.get(cfg.STATUS, 2)
        self.config.set_word(cfg.STATUS, status & ~(cfg.STATUS_W1C | cfg.STATUS_INTERRUPT))
        self.config.set_byte(cfg.CACHE_LINE_SIZE, 0)
        self.config.set_byte(cfg.INTERRUPT_LINE, 0)
        for bar in self.bars.values():
            offset = cfg.BASE_ADDRESS_0 + 4 * bar.index
            self.config.set_long(offset, bar.type_bits)
            if bar.mem64:
                self.config.set_long(offset + 4, 0)
        self._irq_level = 0
        self._drive_intx()
        self.update_mappings()

    def qtree_lines(self) -> list[str]:
        class_code = self.config.get(cfg.CLASS_DEVICE, 2)
        from vmd.hw.pci.info import class_description
        desc = class_description(class_code) or f"Class {class_code:04x}"
        lines = [f"class {desc}, addr 00:{self.slot:02x}.{self.function}, "
                 f"pci id {self.vendor_id:04x}:{self.config.get(cfg.DEVICE_ID, 2):04x} "
                 f"(sub {self.config.get(cfg.SUBSYSTEM_VENDOR_ID, 2):04x}:"
                 f"{self.config.get(cfg.SUBSYSTEM_ID, 2):04x})"]
        for bar in sorted(self.bars.values(), key=lambda b: b.index):
            kind = "i/o" if bar.io else "mem"
            lines.append(f"bar {bar.index}: {kind} at 0x{bar.address & 0xFFFFFFFFFFFFFFFF:x} "
                         f"[0x{(bar.address + bar.size - 1) & 0xFFFFFFFFFFFFFFFF:x}]")
        return lines


def _overlaps(start: int, end: int, low: int, high: int) -> bool:
    return start < high and low < end
