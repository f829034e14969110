"""A driver-side split ring in a bytearray, for feeding devices in unit tests."""

from __future__ import annotations

import struct

from vmd.hw.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
DATA = 0x10000


class DriverRing:
    """The driver's half of one queue of ``size`` entries in ``ram``."""

    def __init__(self, ram: bytearray, size: int, base: int = 0) -> None:
        self.ram = ram
        self.size = size
        self.desc, self.avail, self.used = base + DESC, base + AVAIL, base + USED
        self.avail_idx = 0
        self.next_data = base + DATA
        self.last_used = 0

    def put_desc(self, index: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
                 table: int | None = None) -> None:
        struct.pack_into("<QIHH", self.ram, (self.desc if table is None else table) + 16 * index,
                         addr, length, flags, nxt)

    def buffer(self, data: bytes | int) -> tuple[int, int]:
        """Guest memory holding ``data`` (or that many zero bytes): (address, length)."""
        payload = bytes(data) if isinstance(data, int) else data
        addr = self.next_data
        self.ram[addr:addr + len(payload)] = payload
        self.next_data += (len(payload) + 15) & ~15
        return addr, len(payload)

    def chain(self, readable: list[bytes], writable: list[int], head: int = 0) -> int:
        """Descriptors ``head``.. for the buffers, chained; returns the head."""
        parts = [(self.buffer(d), 0) for d in readable] + [(self.buffer(n), DESC_F_WRITE) for n in writable]
        for i, ((addr, length), flags) in enumerate(parts):
            last = i == len(parts) - 1
            self.put_desc(head + i, addr, length, flags | (0 if last else DESC_F_NEXT), head + i + 1)
        return head

    def indirect(self, readable: list[bytes], writable: list[int], head: int = 0) -> int:
        parts = [(self.buffer(d), 0) for d in readable] + [(self.buffer(n), DESC_F_WRITE) for n in writable]
        table, _ = self.buffer(16 * len(parts))
        for i, ((addr, length), flags) in enumerate(parts):
            last = i == len(parts) - 1
            self.put_desc(i, addr, length, flags | (0 if last else DESC_F_NEXT), i + 1, table=table)
        self.put_desc(head, table, 16 * len(parts), DESC_F_INDIRECT)
        return head

    def publish(self, head: int) -> None:
        struct.pack_into("<H", self.ram, self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.ram, self.avail + 2, self.avail_idx)

    def set_avail_idx(self, value: int) -> None:
        struct.pack_into("<H", self.ram, self.avail + 2, value)

    def set_used_event(self, value: int) -> None:
        struct.pack_into("<H", self.ram, self.avail + 4 + 2 * self.size, value)

    def set_avail_flags(self, value: int) -> None:
        struct.pack_into("<H", self.ram, self.avail, value)

    @property
    def used_idx(self) -> int:
        return int(struct.unpack_from("<H", self.ram, self.used + 2)[0])

    @property
    def avail_event(self) -> int:
        return int(struct.unpack_from("<H", self.ram, self.used + 4 + 8 * self.size)[0])

    def take_used(self) -> list[tuple[int, int]]:
        """The (id, len) pairs the device returned since the last call."""
        out = []
        while self.last_used != self.used_idx:
            out.append(struct.unpack_from("<II", self.ram, self.used + 4 + 8 * (self.last_used % self.size)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out
