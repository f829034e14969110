"""The split virtqueue against well-behaved and hostile drivers (no KVM)."""

from __future__ import annotations

import struct

import pytest

from tests.virtio_ring import DriverRing
from vmd.hw.virtio.memory import GuestMemory, GuestMemoryError
from vmd.hw.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, VirtioError, VirtQueue

RAM = 1 << 20


def setup(size: int = 8, event_idx: bool = False, indirect: bool = True
          ) -> tuple[bytearray, DriverRing, VirtQueue]:
    ram = bytearray(RAM)
    ring = DriverRing(ram, size)
    queue = VirtQueue(0, 256)
    queue.size = size
    queue.desc_addr, queue.avail_addr, queue.used_addr = ring.desc, ring.avail, ring.used
    queue.enable(GuestMemory([(0, memoryview(ram))]), event_idx, indirect)
    return ram, ring, queue


def test_guest_memory_views_are_zero_copy_and_bounded() -> None:
    ram = bytearray(0x3000)
    memory = GuestMemory([(0x1000, memoryview(ram)[:0x1000]), (0x10000, memoryview(ram)[0x1000:])])
    view = memory.view(0x10010, 4)
    view[:] = b"abcd"
    assert ram[0x1010:0x1014] == b"abcd"
    assert memory.view(0x11FFF, 1).nbytes == 1
    for address, length in ((0x0, 1), (0xFFF, 2), (0x1FFF, 2), (0x12000, 1), (0x11FFF, 2), (-1, 1),
                            (0x1000, -1), (0x1000, 0x1001), (1 << 64, 1)):
        with pytest.raises(GuestMemoryError):
            memory.view(address, length)


def test_chain_and_indirect_requests_round_trip() -> None:
    ram, ring, queue = setup()
    ring.publish(ring.chain([b"hello", b" world"], [3, 5]))
    ring.publish(ring.indirect([b"xy"], [4], head=4))
    assert queue.has_work()
    first = queue.pop()
    assert first is not None and first.read_all() == b"hello world"
    assert [len(b) for b in first.writable] == [3, 5]
    assert first.write(b"ABCDEFG") == 7
    second = queue.pop()
    assert second is not None and second.head == 4 and second.read_all() == b"xy"
    assert queue.pop() is None
    assert queue.push(first, 7) and queue.push(second, 0)
    assert ring.take_used() == [(0, 7), (4, 0)]
    writable = bytes(first.writable[0]) + bytes(first.writable[1])
    assert writable == b"ABCDEFG\0"


def test_indices_wrap_around_u16() -> None:
    ram, ring, queue = setup(size=4)
    queue.last_avail = queue.used_idx = ring.avail_idx = ring.last_used = 0xFFFE
    struct.pack_into("<H", ram, ring.used + 2, 0xFFFE)
    for _ in range(4):
        ring.publish(ring.chain([b"a"], []))
        element = queue.pop()
        assert element is not None
        queue.push(element, 0)
    assert ring.used_idx == 2 and len(ring.take_used()) == 4


@pytest.mark.parametrize("size", [0, 3, 6, 512])
def test_queue_sizes_that_are_not_a_power_of_two_up_to_max_are_refused(size: int) -> None:
    queue = VirtQueue(0, 256)
    queue.size = size
    with pytest.raises(VirtioError, match="power of 2"):
        queue.enable(GuestMemory([(0, memoryview(bytearray(RAM)))]), False, False)


@pytest.mark.parametrize("field, value", [("desc_addr", RAM - 16), ("avail_addr", RAM - 4),
                                          ("used_addr", RAM), ("desc_addr", 8), ("used_addr", 2)])
def test_rings_outside_ram_or_misaligned_are_refused(field: str, value: int) -> None:
    queue = VirtQueue(0, 8)
    queue.desc_addr, queue.avail_addr, queue.used_addr = 0x1000, 0x2000, 0x3000
    setattr(queue, field, value)
    with pytest.raises(VirtioError):
        queue.enable(GuestMemory([(0, memoryview(bytearray(RAM)))]), False, False)


def hostile(ring: DriverRing, case: str) -> None:
    """Write one malformed request into ``ring`` (published at head 0)."""
    addr, _ = ring.buffer(64)
    if case == "loop":
        ring.put_desc(0, addr, 8, DESC_F_NEXT, 1)
        ring.put_desc(1, addr, 8, DESC_F_NEXT, 0)
    elif case == "self-loop":
        ring.put_desc(0, addr, 8, DESC_F_NEXT, 0)
    elif case == "next-out-of-range":
        ring.put_desc(0, addr, 8, DESC_F_NEXT, 8)
    elif case == "address-outside-ram":
        ring.put_desc(0, RAM - 4, 8)
    elif case == "address-wraps":
        ring.put_desc(0, (1 << 64) - 4, 8)
    elif case == "huge-length":
        ring.put_desc(0, 0, 0xFFFFFFFF)
    elif case == "zero-length":
        ring.put_desc(0, addr, 0)
    elif case == "read-after-write":
        ring.put_desc(0, addr, 8, DESC_F_WRITE | DESC_F_NEXT, 1)
        ring.put_desc(1, addr, 8)
    elif case == "indirect-bad-size":
        ring.put_desc(0, addr, 24, DESC_F_INDIRECT)
    elif case == "indirect-zero":
        ring.put_desc(0, addr, 0, DESC_F_INDIRECT)
    elif case == "indirect-outside-ram":
        ring.put_desc(0, RAM - 16, 32, DESC_F_INDIRECT)
    elif case == "nested-indirect":
        ring.put_desc(0, addr, 16, 0, table=addr)
        ring.put_desc(0, addr, 16, DESC_F_INDIRECT, table=addr)
        ring.put_desc(0, addr, 16, DESC_F_INDIRECT)
    elif case == "indirect-loop":
        ring.put_desc(0, addr + 32, 4, DESC_F_NEXT, 1, table=addr)
        ring.put_desc(1, addr + 32, 4, DESC_F_NEXT, 0, table=addr)
        ring.put_desc(0, addr, 32, DESC_F_INDIRECT)
    elif case == "indirect-chain-too-long":
        table, _ = ring.buffer(16 * 1100)
        for i in range(1100):
            ring.put_desc(i, addr, 4, DESC_F_NEXT, i + 1, table=table)
        ring.put_desc(0, table, 16 * 1100, DESC_F_INDIRECT)
    ring.publish(0)


CASES = ["loop", "self-loop", "next-out-of-range", "address-outside-ram", "address-wraps", "huge-length",
         "zero-length", "read-after-write", "indirect-bad-size", "indirect-zero", "indirect-outside-ram",
         "nested-indirect", "indirect-loop", "indirect-chain-too-long"]


@pytest.mark.parametrize("case", CASES)
def test_hostile_descriptors_raise_virtio_error(case: str) -> None:
    ram, ring, queue = setup()
    hostile(ring, case)
    before = bytes(ram)
    with pytest.raises(VirtioError):
        queue.pop()
    assert ram == before                                     # the device wrote nothing


def test_indirect_without_the_feature_is_an_error() -> None:
    ram, ring, queue = setup(indirect=False)
    ring.publish(ring.indirect([b"x"], []))
    with pytest.raises(VirtioError, match="INDIRECT"):
        queue.pop()


def test_avail_index_jumping_and_bad_heads() -> None:
    ram, ring, queue = setup()
    ring.set_avail_idx(9)
    with pytest.raises(VirtioError, match="Guest moved avail index from 0 to 9"):
        queue.pop()
    ram, ring, queue = setup()
    struct.pack_into("<H", ram, ring.avail + 4, 8)
    ring.set_avail_idx(1)
    with pytest.raises(VirtioError, match="index 8 is available"):
        queue.pop()


def test_random_bytes_never_escape() -> None:
    """Rings of random garbage: every pop either works or raises VirtioError."""
    import random
    rng = random.Random(12)
    for _ in range(300):
        ram, ring, queue = setup(size=8, event_idx=rng.random() < 0.5)
        ram[ring.desc:ring.desc + 128] = rng.randbytes(128)
        for i in range(8):   # keep addresses mostly inside RAM so chains get walked
            struct.pack_into("<Q", ram, ring.desc + 16 * i, rng.randrange(RAM + 64))
            struct.pack_into("<I", ram, ring.desc + 16 * i + 8, rng.choice([0, 1, 16, 32, 4096, 1 << 31]))
        ram[ring.avail:ring.avail + 22] = rng.randbytes(22)
        try:
            while queue.pop() is not None:
                pass
        except VirtioError:
            pass


def test_event_index_suppression_both_ways() -> None:
    ram, ring, queue = setup(event_idx=True)
    for _ in range(3):
        ring.publish(ring.chain([b"r"], []))
    elements = [queue.pop() for _ in range(3)]
    assert queue.pop() is None and ring.avail_event == 3   # the device asks for a kick at 3
    ring.set_used_event(0)                                   # driver: interrupt after used 0 -> 1
    assert queue.push(elements[0], 0) and queue.should_notify()
    assert queue.push(elements[1], 0) and not queue.should_notify()
    ring.set_used_event(2)                                   # interrupt when used passes 2
    assert queue.push(elements[2], 0) and queue.should_notify()


def test_no_interrupt_flag_without_event_index() -> None:
    ram, ring, queue = setup()
    for flags, wanted in ((1, False), (0, True)):
        ring.publish(ring.chain([b"r"], []))
        element = queue.pop()
        assert element is not None and queue.push(element, 0)
        ring.set_avail_flags(flags)
        assert queue.should_notify() == wanted
    assert not queue.should_notify()                         # nothing new since the last interrupt


def test_completions_from_before_a_reset_are_dropped() -> None:
    ram, ring, queue = setup()
    ring.publish(ring.chain([b"r"], [4]))
    element = queue.pop()
    assert element is not None
    queue.reset()
    assert not queue.push(element, 4)
    assert ring.used_idx == 0
