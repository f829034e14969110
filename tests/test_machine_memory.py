"""The memory region tree: flattening by priority and aliases, ``info mtree``."""

from __future__ import annotations

from vmd.machine.memory import AddressSpace, MemoryRegion, flatten


class Ops:
    def read(self, offset: int, size: int) -> int:
        return offset

    def write(self, offset: int, size: int, value: int) -> None:
        pass


def _board() -> tuple[MemoryRegion, MemoryRegion, MemoryRegion]:
    system = MemoryRegion("system", 1 << 64)
    ram = MemoryRegion.ram("pc.ram", 0x200000)
    system.add(0, MemoryRegion.alias_of("ram-below-4g", ram, 0, 0x200000))
    rom = MemoryRegion.ram("pc.rom", 0x20000, readonly=True)
    system.add(0xC0000, rom, priority=1)
    system.add(0xA0000, MemoryRegion.io("vga", 0x20000, Ops()), priority=1)
    return system, ram, rom


def test_higher_priority_wins_and_aliases_resolve() -> None:
    system, ram, rom = _board()
    view = [(r.start, r.end, r.region.name, r.offset) for r in flatten(system)]
    assert view == [(0, 0xA0000, "pc.ram", 0), (0xA0000, 0xC0000, "vga", 0), (0xC0000, 0xE0000, "pc.rom", 0),
                    (0xE0000, 0x200000, "pc.ram", 0xE0000)]


def test_equal_priority_last_added_wins() -> None:
    root = MemoryRegion("io", 0x10000)
    root.add(0x10, MemoryRegion.io("first", 8, Ops()))
    root.add(0x14, MemoryRegion.io("second", 8, Ops()))
    assert [(r.start, r.end, r.region.name) for r in flatten(root)] == [
        (0x10, 0x14, "first"), (0x14, 0x1C, "second")]


def test_guest_memory_writes_through_aliases() -> None:
    system, ram, rom = _board()
    space = AddressSpace("memory", system)
    space.write(0xDFFFE, b"abcd")             # spans ROM and RAM
    assert space.read(0xDFFFE, 4) == b"abcd"
    assert rom.backing is not None and ram.backing is not None
    assert rom.backing[0x1FFFE:0x20000] == b"ab" and ram.backing[0xE0000:0xE0002] == b"cd"


def test_mtree_text_is_qemus_format() -> None:
    system, _, _ = _board()
    text = AddressSpace("memory", system)
    from vmd.machine.memory import mtree_text
    assert mtree_text([text]) == """\
address-space: memory
  0000000000000000-ffffffffffffffff (prio 0, i/o): system
    0000000000000000-00000000001fffff (prio 0, ram): alias ram-below-4g @pc.ram 0000000000000000-00000000001fffff
    00000000000a0000-00000000000bffff (prio 1, i/o): vga
    00000000000c0000-00000000000dffff (prio 1, rom): pc.rom

memory-region: pc.ram
  0000000000000000-00000000001fffff (prio 0, ram): pc.ram

"""
