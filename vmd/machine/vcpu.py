"""vCPU threads: one per vCPU, each looping in ``KVM_RUN``.

A vCPU thread spends its life in ``KVM_RUN`` with the GIL released (cffi
drops it around the ioctl). Port and MMIO exits are served by the devices
with the BQL held, so devices never see two callers at once, and the loop
takes the same lock when it touches them. Exits that change the VM's state
(triple fault, internal error, ...) are handed to the loop with
``call_soon_threadsafe``: a vCPU thread never waits for the loop.

Stopping (QEMU's pause_all_vcpus): the loop sets ``stop`` and kicks each
thread: ``immediate_exit`` makes a ``KVM_RUN`` that is about to start return
at once, and a signal interrupts one already running. The thread then
parks until ``resume``. ``pause`` waits until every thread is parked and
must be called without the BQL (a thread finishing an exit needs it).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from vmd.accel import abi
from vmd.accel.abi import ffi
from vmd.accel.kvm import KvmError, Vcpu
from vmd.hw.bus import IoBus

log = logging.getLogger(__name__)

#: The signal that interrupts ``KVM_RUN``; its Python handler does nothing.
KICK_SIGNAL = signal.SIGRTMIN + 2

_PTR = {1: "uint8_t *", 2: "uint16_t *", 4: "uint32_t *", 8: "uint64_t *"}

#: A state-changing exit: (vCPU index, kind, details) -> handled on the loop.
ExitReport = Callable[[int, str, str], None]


def install_kick_handler() -> None:
    """A no-op handler, so the kick signal interrupts without killing us."""
    signal.signal(KICK_SIGNAL, lambda _signum, _frame: None)


class VcpuThread:
    """The thread running one vCPU, and its stop/resume handshake."""

    def __init__(self, vcpu: Vcpu, pio: IoBus, mmio: IoBus, bql: threading.Lock,
                 report: ExitReport) -> None:
        self.vcpu = vcpu
        self._pio = pio
        self._mmio = mmio
        self._bql = bql
        self._report = report
        self._state = threading.Condition()
        self._stop = True
        self._parked = True
        self._quit = False
        self._thread = threading.Thread(target=self._main, name=f"CPU {vcpu.index}/KVM", daemon=True)
        self.thread_id = 0
        self._run = vcpu.run_struct
        self._page = ffi.cast("uint8_t *", self._run)

    def start(self) -> None:
        self._thread.start()
        with self._state:
            self._state.wait_for(lambda: self.thread_id != 0)

    # -- control (loop thread) ---------------------------------------------

    def request_stop(self) -> None:
        """Ask the thread to leave ``KVM_RUN`` and park; does not wait."""
        with self._state:
            self._stop = True
            if self._parked:
                return
        self._run.immediate_exit = 1
        if self._thread.ident is not None:
            signal.pthread_kill(self._thread.ident, KICK_SIGNAL)

    def wait_parked(self) -> None:
        with self._state:
            while not self._parked:
                self._state.wait(0.05)
                if not self._parked and self._thread.ident is not None:
                    self._run.immediate_exit = 1
                    signal.pthread_kill(self._thread.ident, KICK_SIGNAL)

    def resume(self) -> None:
        with self._state:
            self._stop = False
            self._state.notify_all()

    def quit(self) -> None:
        with self._state:
            self._quit = True
            self._state.notify_all()
        self.request_stop()
        self._thread.join(5)

    @property
    def parked(self) -> bool:
        return self._parked

    # -- the thread ----------------------------------------------------------

    def _main(self) -> None:
        with self._state:
            self.thread_id = threading.get_native_id()
            self._state.notify_all()
        while self._wait_until_runnable():
            try:
                self._run_until_stopped()
            except KvmError as error:
                self._halt_with("internal-error", str(error))

    def _wait_until_runnable(self) -> bool:
        with self._state:
            self._parked = True
            self._state.notify_all()
            self._state.wait_for(lambda: self._quit or not self._stop)
            if self._quit:
                return False
            self._parked = False
            self._run.immediate_exit = 0
            return True

    def _halt_with(self, kind: str, detail: str) -> None:
        with self._state:
            self._stop = True
        self._report(self.vcpu.index, kind, detail)

    def _run_until_stopped(self) -> None:
        run = self._run
        vcpu = self.vcpu
        while not self._stop:
            reason = vcpu.run()
            if reason == abi.EXIT_IO:
                self._port_io(run.io)
            elif reason == abi.EXIT_MMIO:
                self._mmio_access(run.mmio)
            elif reason == abi.EXIT_INTR:
                run.immediate_exit = 0
            elif reason == abi.EXIT_HLT:
                self._halt_with("halt", "")
            elif reason == abi.EXIT_SHUTDOWN:
                self._halt_with("triple-fault", "")
            elif reason == abi.EXIT_SYSTEM_EVENT:
                self._halt_with("system-event", str(run.system_event.type))
            else:
                self._halt_with("internal-error", describe_exit(run, reason))

    def _port_io(self, io: Any) -> None:
        size, count, port = io.size, io.count, io.port
        data = ffi.cast(_PTR[size], self._page + io.data_offset)
        with self._bql:
            if io.direction == abi.EXIT_IO_OUT:
                for i in range(count):
                    self._pio.write(port, size, data[i])
            else:
                for i in range(count):
                    data[i] = self._pio.read(port, size)

    def _mmio_access(self, mmio: Any) -> None:
        length = mmio.len
        if length not in _PTR:
            return
        data = ffi.cast(_PTR[length], mmio.data)
        with self._bql:
            if mmio.is_write:
                self._mmio.write(mmio.phys_addr, length, data[0])
            else:
                data[0] = self._mmio.read(mmio.phys_addr, length)


def describe_exit(run: Any, reason: int) -> str:
    """The line QEMU prints for an exit it cannot handle."""
    if reason == abi.EXIT_INTERNAL_ERROR:
        internal = run.internal
        extra = "".join(f"\nextra data[{i}]: 0x{internal.data[i]:016x}"
                        for i in range(min(internal.ndata, 16)))
        text = f"KVM internal error. Suberror: {internal.suberror}{extra}"
        if internal.suberror == abi.INTERNAL_ERROR_EMULATION:
            text += "\nemulation failure"
        return text
    if reason == abi.EXIT_FAIL_ENTRY:
        return (f"KVM: entry failed, hardware error 0x"
                f"{run.fail_entry.hardware_entry_failure_reason:x}")
    return f"KVM: unhandled exit {reason:x}"
