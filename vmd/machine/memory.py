"""Guest memory: QEMU's MemoryRegion tree, its flat view, and dispatch.

A tree of regions (containers, RAM, ROM, I/O and aliases, each placed in its
parent at an offset with a priority) is flattened the way QEMU's
``render_memory_region`` does: higher priority wins, and among equals the
region added last wins; a region only fills what its subregions left. The
flat view of the system address space becomes KVM memory slots (RAM and
ROM; ROM read-only); loaders write guest memory through it, and ``info
mtree`` prints the tree in QEMU's format. Accesses that exit to user space
go to the device buses (``vmd.hw.bus``), whose mappings the board mirrors
into the tree as I/O regions.

Thread use: the tree is built and changed on the loop thread with the BQL
held; vCPU threads read the flat view (replaced as a whole, never mutated).
"""

from __future__ import annotations

import bisect
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vmd.accel.abi import ffi
from vmd.hw.bus import IoHandler


@dataclass(eq=False)
class MemoryRegion:
    """One node of the tree. ``kind`` is 'container', 'ram', 'rom' or 'i/o'."""

    name: str
    size: int
    kind: str = "container"
    ops: IoHandler | None = None
    alias: MemoryRegion | None = None
    alias_offset: int = 0
    children: list[Subregion] = field(default_factory=list)
    #: Host memory backing RAM and ROM regions (a private anonymous mapping).
    backing: mmap.mmap | None = None

    @classmethod
    def ram(cls, name: str, size: int, readonly: bool = False) -> MemoryRegion:
        """RAM (or ROM) backed by anonymous memory, zero until touched."""
        try:
            backing = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as error:  # QEMU's words for a RAM block it cannot map
            raise MemoryError(f"cannot set up guest memory '{name}': {error.strerror}") from None
        return cls(name, size, "rom" if readonly else "ram", backing=backing)

    @classmethod
    def io(cls, name: str, size: int, ops: IoHandler | None) -> MemoryRegion:
        return cls(name, size, "i/o", ops=ops)

    @classmethod
    def alias_of(cls, name: str, target: MemoryRegion, offset: int, size: int) -> MemoryRegion:
        return cls(name, size, target.kind, alias=target, alias_offset=offset)

    def add(self, offset: int, region: MemoryRegion, priority: int = 0) -> None:
        """Place ``region`` at ``offset``; it wins over earlier equals."""
        self.children.insert(0, Subregion(offset, region, priority))
        self.children.sort(key=lambda child: -child.priority)

    def remove(self, region: MemoryRegion) -> None:
        self.children = [child for child in self.children if child.region is not region]

    @property
    def host_address(self) -> int:
        assert self.backing is not None
        return int(ffi.cast("uintptr_t", ffi.from_buffer(self.backing)))


@dataclass(eq=False)
class Subregion:
    offset: int
    region: MemoryRegion
    priority: int


@dataclass(frozen=True)
class FlatRange:
    """``[start, end)`` of an address space is ``region`` from ``offset``."""

    start: int
    end: int
    region: MemoryRegion
    offset: int


def flatten(root: MemoryRegion) -> list[FlatRange]:
    """The flat view of the tree under ``root``, sorted by address."""
    ranges: list[FlatRange] = []
    _render(root, 0, 0, root.size, ranges)
    return sorted(ranges, key=lambda r: r.start)


def _render(region: MemoryRegion, base: int, low: int, high: int, out: list[FlatRange]) -> None:
    low, high = max(low, base), min(high, base + region.size)
    if low >= high:
        return
    if region.alias is not None:
        _render(region.alias, base - region.alias_offset, low, high, out)
        return
    for child in region.children:
        _render(child.region, base + child.offset, low, high, out)
    if region.kind != "container":
        for start, end in _holes(out, low, high):
            out.append(FlatRange(start, end, region, start - base))


def _holes(taken: list[FlatRange], low: int, high: int) -> Iterator[tuple[int, int]]:
    cursor = low
    for used in sorted((r for r in taken if r.end > low and r.start < high), key=lambda r: r.start):
        if used.start > cursor:
            yield cursor, used.start
        cursor = max(cursor, used.end)
    if cursor < high:
        yield cursor, high


class AddressSpace:
    """A root region and its current flat view."""

    def __init__(self, name: str, root: MemoryRegion) -> None:
        self.name = name
        self.root = root
        self.view: list[FlatRange] = []
        self._starts: list[int] = []
        self.listeners: list[Callable[[list[FlatRange]], None]] = []
        self.commit()

    def commit(self) -> None:
        """Recompute the flat view after the tree changed; tell listeners."""
        view = flatten(self.root)
        self.view, self._starts = view, [r.start for r in view]
        for listener in self.listeners:
            listener(view)

    def lookup(self, address: int) -> FlatRange | None:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0 and address < self.view[index].end:
            return self.view[index]
        return None

    def write(self, address: int, data: bytes) -> None:
        """Copy ``data`` into guest RAM/ROM (loaders); raises if unbacked."""
        for flat, start, chunk in self._spans(address, len(data)):
            assert flat.region.backing is not None
            flat.region.backing[start:start + chunk[1]] = data[chunk[0]:chunk[0] + chunk[1]]

    def read(self, address: int, length: int) -> bytes:
        parts = []
        for flat, start, (_, count) in self._spans(address, length):
            assert flat.region.backing is not None
            parts.append(flat.region.backing[start:start + count])
        return b"".join(parts)

    def _spans(self, address: int, length: int) -> Iterator[tuple[FlatRange, int, tuple[int, int]]]:
        done = 0
        while done < length:
            flat = self.lookup(address + done)
            if flat is None or flat.region.backing is None:
                raise ValueError(f"guest address {address + done:#x} is not RAM")
            count = min(length - done, flat.end - (address + done))
            yield flat, address + done - flat.start + flat.offset, (done, count)
            done += count


# -- info mtree -------------------------------------------------------------

def mtree_text(spaces: list[AddressSpace]) -> str:
    """HMP ``info mtree``: each address space, then the aliased regions."""
    lines: list[str] = []
    aliased: dict[int, MemoryRegion] = {}
    for space in spaces:
        lines.append(f"address-space: {space.name}")
        _print_region(space.root, 0, 0, 1, lines, aliased)
        lines.append("")
    seen: set[int] = set()
    while aliased:
        key, region = next(iter(aliased.items()))
        del aliased[key]
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"memory-region: {region.name}")
        _print_region(region, 0, 0, 1, lines, {})
        lines.append("")
    return "\n".join(lines) + "\n"


def _print_region(region: MemoryRegion, base: int, priority: int, level: int, lines: list[str],
                  aliased: dict[int, MemoryRegion]) -> None:
    span = f"{base:016x}-{base + region.size - 1:016x}"
    kind = "i/o" if region.kind == "container" else region.kind  # QEMU's memory_region_type
    head = f"{'  ' * level}{span} (prio {priority}, {kind}): "
    if region.alias is not None:
        target = region.alias
        aliased.setdefault(id(target), target)
        lines.append(f"{head}alias {region.name} @{target.name} "
                     f"{region.alias_offset:016x}-{region.alias_offset + region.size - 1:016x}")
        return
    lines.append(head + region.name)
    for child in sorted(region.children, key=lambda c: (c.offset, -c.priority)):
        _print_region(child.region, base + child.offset, child.priority, level + 1, lines, aliased)
