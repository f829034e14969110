"""A UART on a real chardev through ``CharPort``, with a vCPU-like thread."""

from __future__ import annotations

import asyncio
import threading

from vmd.chardev.registry import ChardevRegistry
from vmd.chardev.ringbuf import RingbufChardev
from vmd.hw import charport
from vmd.hw.charport import CharPort
from vmd.hw.clock import LoopClock
from vmd.hw.irq import NoIrq
from vmd.hw.serial import Uart


async def ringbuf_port(name: str, bql: threading.RLock) -> tuple[RingbufChardev, CharPort]:
    """A ringbuf chardev in a registry, and a port to it."""
    registry = ChardevRegistry()
    chardev = RingbufChardev(name)
    await chardev.open()
    registry.insert(chardev)
    return chardev, CharPort(registry, name, asyncio.get_running_loop(), bql)


async def wait_until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


def test_output_from_a_thread_and_input_flow_control() -> None:
    async def scenario() -> None:
        bql = threading.RLock()
        chardev, port = await ringbuf_port("serial0", bql)
        uart = Uart(NoIrq(), port, LoopClock(asyncio.get_running_loop(), bql))
        port.connect(uart)
        await wait_until(lambda: chardev.frontend is port)

        def vcpu() -> None:
            for byte in b"hello\n":
                with bql:
                    uart.write(0, 1, byte)
        thread = threading.Thread(target=vcpu)
        thread.start()
        await asyncio.to_thread(thread.join)
        await wait_until(lambda: len(chardev._data) >= 6)
        assert chardev.read_data(100) == b"hello\n"

        chardev.deliver(b"typed early")  # before the guest reads anything
        with bql:
            assert uart.read(5, 1) & 0x01
            first = uart.read(0, 1)
        assert first == ord("t") and chardev._pending_input == b"yped early"
        received = [first]
        for _ in range(10):
            await wait_until(lambda: bool(uart.lsr & 0x01))
            with bql:
                received.append(uart.read(0, 1))
        assert bytes(received) == b"typed early"
    asyncio.run(scenario())


def test_a_peer_that_does_not_read_stops_the_uart() -> None:
    async def scenario() -> None:
        bql = threading.RLock()
        chardev, port = await ringbuf_port("s", bql)
        blocked = [True]
        chardev._write = lambda data: 0 if blocked[0] else len(data)  # type: ignore[method-assign]
        uart = Uart(NoIrq(), port, None)
        port.connect(uart)
        sent = 0
        while uart.lsr & 0x20:
            with bql:
                uart.write(0, 1, 0x41)
            sent += 1
            await asyncio.sleep(0)
        assert sent == charport.OUTPUT_LIMIT + 1
        blocked[0] = False
        chardev.writable()
        await wait_until(lambda: bool(uart.lsr & 0x20))
    asyncio.run(scenario())


def test_loop_clock_timer_fires_under_the_bql() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        bql = threading.RLock()
        clock = LoopClock(loop, bql)
        fired: list[bool] = []
        timer = clock.timer(lambda: fired.append(bql._is_owned()))  # type: ignore[attr-defined]
        cancelled = clock.timer(lambda: fired.append(False))
        cancelled.arm(clock.now_ns() + 1_000_000)
        cancelled.cancel()
        timer.arm(clock.now_ns() + 1_000_000)
        await wait_until(lambda: bool(fired))
        await asyncio.sleep(0.01)
        assert fired == [True]
    asyncio.run(scenario())


def test_input_before_the_device_attaches_waits_for_it() -> None:
    async def scenario() -> None:
        bql = threading.RLock()
        chardev, port = await ringbuf_port("early", bql)
        chardev.deliver(b"ab")  # the peer typed before the machine started
        uart = Uart(NoIrq(), port, None)
        port.connect(uart)
        await wait_until(lambda: bool(uart.lsr & 0x01))
        with bql:
            assert uart.read(0, 1) == ord("a")
        await wait_until(lambda: bool(uart.lsr & 0x01))
        with bql:
            assert uart.read(0, 1) == ord("b")
    asyncio.run(scenario())


def test_rearming_for_the_same_deadline_schedules_nothing() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        clock = LoopClock(loop, threading.RLock())
        fired: list[int] = []
        timer = clock.timer(lambda: fired.append(1))
        deadline = clock.now_ns() + 1_000_000
        scheduled = len(loop._ready)  # type: ignore[attr-defined]
        for _ in range(100):
            timer.arm(deadline)
            clock.timer(lambda: None).cancel()
        assert len(loop._ready) == scheduled + 1  # type: ignore[attr-defined]
        await wait_until(lambda: bool(fired))
        timer.arm(deadline)  # after firing, the same deadline arms again
        await wait_until(lambda: len(fired) == 2)
    asyncio.run(scenario())
