"""Plain stand-ins for what the machine gives devices, for unit tests.

Devices are tested by feeding them accesses (Firecracker's way): a
manual clock whose timers fire when the test advances time, IRQ lines
that record their level, a chardev port that records output and can be
made full, and a ``DeviceContext`` built from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vmd._generated.types import ShutdownCause
from vmd.hw.bus import IoBus
from vmd.hw.charport import CharHandlers, CharPort
from vmd.hw.context import DeviceContext
from vmd.hw.virtio.memory import GuestMemory


class ManualTimer:
    def __init__(self, clock: ManualClock, callback: Callable[[], None]) -> None:
        self.clock = clock
        self.callback = callback
        self.deadline: int | None = None

    def arm(self, deadline_ns: int) -> None:
        self.deadline = deadline_ns

    def cancel(self) -> None:
        self.deadline = None


class ManualClock:
    """Time moves only when the test calls ``advance``; due timers fire in order."""

    def __init__(self, now_ns: int = 1_700_000_000 * 10**9) -> None:
        self.now = now_ns
        self.timers: list[ManualTimer] = []

    def now_ns(self) -> int:
        return self.now

    def timer(self, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(self, callback)
        self.timers.append(timer)
        return timer

    def advance(self, ns: int) -> None:
        end = self.now + ns
        while True:
            due = [t for t in self.timers if t.deadline is not None and t.deadline <= end]
            if not due:
                break
            timer = min(due, key=lambda t: t.deadline or 0)
            self.now = max(self.now, timer.deadline or 0)
            timer.deadline = None
            timer.callback()
        self.now = end


class RecordingIrq:
    def __init__(self) -> None:
        self.level = 0
        self.edges = 0

    def set_level(self, level: int) -> None:
        if level and not self.level:
            self.edges += 1
        self.level = level


class FakePort:
    """A CharPort double: records output, refuses it while ``full``."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.full = False
        self.accepts = 0
        self.handlers: CharHandlers | None = None

    def connect(self, handlers: CharHandlers) -> None:
        self.handlers = handlers

    def write(self, data: bytes) -> int:
        if self.full:
            return 0
        self.output += data
        return len(data)

    def accept_input(self) -> None:
        self.accepts += 1

    def drain(self) -> None:
        self.full = False
        if self.handlers is not None:
            self.handlers.writable()


class RecordingMsiVector:
    def __init__(self, fired: list[tuple[int, int]]) -> None:
        self.fired = fired
        self.released = False

    def fire(self, address: int, data: int) -> None:
        self.fired.append((address, data))

    def release(self) -> None:
        self.released = True


class RecordingMsiRoutes:
    """MSI delivery recorded as (address, data) in order."""

    def __init__(self) -> None:
        self.fired: list[tuple[int, int]] = []

    def vector(self) -> RecordingMsiVector:
        return RecordingMsiVector(self.fired)


class ImmediateNotifier:
    """An EventNotifier whose ``set`` runs the callback at once (no loop in unit tests)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.fd = -1
        self.callback = callback
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        self.callback()

    def close(self) -> None:
        self.callback = lambda: None


@dataclass
class FakeMachine:
    """Records the requests devices make; builds their context."""

    clock: ManualClock = field(default_factory=ManualClock)
    irqs: dict[int, RecordingIrq] = field(default_factory=dict)
    ports: dict[str, FakePort] = field(default_factory=dict)
    resets: int = 0
    shutdowns: list[ShutdownCause] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    #: Guest RAM (at guest address 0) for DMA-capable devices.
    ram: bytearray = field(default_factory=lambda: bytearray(1 << 20))
    msi: RecordingMsiRoutes = field(default_factory=RecordingMsiRoutes)
    #: (fd, address, length, assign) of each ioeventfd call.
    ioeventfds: list[tuple[int, int, int, bool]] = field(default_factory=list)

    def irq(self, n: int) -> RecordingIrq:
        return self.irqs.setdefault(n, RecordingIrq())

    def context(self, ram_size: int = 128 << 20) -> DeviceContext:
        def chardev(chardev_id: str) -> CharPort | None:
            return self.ports.get(chardev_id)  # type: ignore[return-value]

        def reset() -> None:
            self.resets += 1

        return DeviceContext(
            pio=IoBus("io", unassigned_all_ones=True),
            mmio=IoBus("memory", unassigned_all_ones=False),
            irq=self.irq, chardev=chardev, ram_size=ram_size,
            request_reset=reset, request_shutdown=self.shutdowns.append,
            request_exit=self.exits.append, clock=self.clock,
            memory=GuestMemory([(0, memoryview(self.ram))]), msi=self.msi, notifier=ImmediateNotifier,
            ioeventfd=lambda *args: self.ioeventfds.append(args))
