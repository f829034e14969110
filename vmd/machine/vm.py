"""The running machine: vCPU threads, the BQL, and the life-cycle verbs.

QEMU's main loop acts on requests that vCPU threads and devices raise
(``qemu_system_reset_request``, ``..._shutdown_request``, ...). vmd does
the same: a device or vCPU thread calls ``request_*`` (any thread, BQL
held or not), which schedules the work on the event loop; the loop then
parks the vCPUs, changes state under the BQL and lets them run again.

* reset (i8042 pulse, port 0x92, triple fault, ``system_reset``): with
  ``-no-reboot`` it is a shutdown instead; otherwise the board is reset,
  ``RESET`` is sent, and a VM that was not running goes to ``prelaunch``;
* guest shutdown (ACPI S5): ``SHUTDOWN`` is sent; with ``-no-shutdown`` the
  VM stops in state ``shutdown``, otherwise vmd exits;
* internal error (emulation failure, unknown exit): the registers go to
  the log and stderr, the VM stops in ``internal-error``, QMP goes on;
* ``isa-debug-exit``: vmd exits at once with the device's status.

``press_power_button`` is the service manager's hook for a graceful stop
(``Daemon.guest_power_down``, see ``vmd.system.stop``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import TYPE_CHECKING

from vmd._generated import events
from vmd._generated.types import RunState, ShutdownCause
from vmd.accel import abi
from vmd.accel.cpuid import UnknownModel
from vmd.accel.kvm import Kvm, KvmError, KvmUnavailable
from vmd.machine.boot import BootError
from vmd.machine.pc import PcBoard
from vmd.machine.registers import dump_registers
from vmd.machine.vcpu import VcpuThread, install_kick_handler
from vmd.qom.errors import QOMError
from vmd.system.process import StartupError

if TYPE_CHECKING:
    from vmd.block.graph import BlockGraph
    from vmd.daemon import Daemon

log = logging.getLogger(__name__)


def check_cpu_count(kvm: Kvm, cpus: int) -> None:
    """QEMU's kvm_init check of ``-smp`` against what KVM supports."""
    limit = kvm.check_extension(abi.CAP_MAX_VCPUS) or kvm.check_extension(abi.CAP_NR_VCPUS) or 4
    if cpus > limit:
        raise StartupError(f"Number of SMP cpus requested ({cpus}) exceeds the maximum cpus supported by "
                           f"KVM ({limit})")


class Machine:
    """A ``pc`` machine on KVM and the vCPU threads that run it."""

    def __init__(self, daemon: Daemon, loop: asyncio.AbstractEventLoop) -> None:
        self._daemon = daemon
        self._loop = loop
        self.bql = threading.Lock()
        self.chardevs = daemon.chardevs
        self.events = daemon.events
        self.runstate = daemon.runstate
        try:
            self.kvm = Kvm()
        except KvmUnavailable as error:
            raise StartupError(str(error)) from None
        check_cpu_count(self.kvm, daemon.config.smp.cpus)
        try:
            self.board = PcBoard(daemon.config, self.kvm, self, loop, self.bql)
        except (BootError, QOMError, UnknownModel) as error:
            raise StartupError(str(error)) from None
        except MemoryError as error:
            raise StartupError(str(error)) from None
        except KvmError as error:
            raise StartupError(f"kvm: {error}") from None
        install_kick_handler()
        # Under -accel qtest the test drives the machine: no vCPU runs.
        self.threads = [] if daemon.accel == "qtest" else [
            VcpuThread(vcpu, self.board.pio, self.board.mmio, self.bql, self._vcpu_report)
            for vcpu in self.board.vcpus]

    def start(self, running: bool) -> None:
        """Reset to the power-on state, start the threads; run unless ``-S``."""
        with self.bql:
            self.board.reset()
        for thread in self.threads:
            thread.start()
        if running:
            self.resume()

    # -- vCPU control (loop thread, BQL not held) ----------------------------

    def pause(self) -> None:
        for thread in self.threads:
            thread.request_stop()
        for thread in self.threads:
            thread.wait_parked()

    def resume(self) -> None:
        for thread in self.threads:
            thread.resume()

    def close(self) -> None:
        for thread in self.threads:
            thread.quit()
        self.board.close()
        self.kvm.close()

    # -- requests (any thread) -------------------------------------------------

    def block_graph(self) -> BlockGraph:
        """The daemon's block graph, for guest disks (``drive=``)."""
        return self._daemon.block

    def iothread_ids(self) -> list[str]:
        return [object_id for object_id, obj in self._daemon.objects if obj.type_name == "iothread"]

    def request_guest_reset(self) -> None:
        self._loop.call_soon_threadsafe(self.reset, ShutdownCause.GUEST_RESET)

    def request_guest_shutdown(self, cause: str = ShutdownCause.GUEST_SHUTDOWN) -> None:
        self._loop.call_soon_threadsafe(self._daemon.request_shutdown, ShutdownCause(cause))

    def request_exit(self, status: int) -> None:
        self._loop.call_soon_threadsafe(self._daemon.request_exit, status)

    # -- verbs (loop thread) -----------------------------------------------

    def reset(self, cause: ShutdownCause) -> None:
        """QEMU's reset request: a shutdown under ``-no-reboot``."""
        if self._daemon.config.no_reboot:
            self._daemon.request_shutdown(cause)
            return
        self.pause()
        with self.bql:
            self.board.reset()
        events.qapi_event_send_reset(self._daemon.events, guest=cause.startswith("guest-"), reason=cause)
        runstate = self._daemon.runstate
        if runstate.running:
            self.resume()
        else:
            runstate.status = RunState.PRELAUNCH

    def powerdown(self) -> None:
        """The ACPI power button (``system_powerdown``)."""
        with self.bql:
            self.board.acpi_pm.power_button()

    def press_power_button(self) -> bool:
        """The service manager's hook (``Daemon.guest_power_down``): True if a
        running guest was asked to power off, so waiting for it makes sense."""
        if not self._daemon.runstate.running:
            return False
        events.qapi_event_send_powerdown(self._daemon.events)
        self.powerdown()
        return True

    def _vcpu_report(self, index: int, kind: str, detail: str) -> None:
        self._loop.call_soon_threadsafe(self._on_vcpu_exit, index, kind, detail)

    def _on_vcpu_exit(self, index: int, kind: str, detail: str) -> None:
        if kind == "triple-fault":
            self.reset(ShutdownCause.GUEST_RESET)
        elif kind == "system-event" and detail == "1":
            self._daemon.request_shutdown(ShutdownCause.GUEST_SHUTDOWN)
        elif kind == "system-event" and detail == "2":
            self.reset(ShutdownCause.GUEST_RESET)
        else:
            self._internal_error(index, detail or f"KVM: unexpected {kind} exit")

    def _internal_error(self, index: int, detail: str) -> None:
        self._daemon.runstate.stop(RunState.INTERNAL_ERROR)
        report = f"{detail}\n{dump_registers(self.board.vcpus[index])}"
        log.error("vCPU %d stopped: %s", index, report)
        print(report, file=sys.stderr, flush=True)

    # -- queries ----------------------------------------------------------------

    def cpu_threads(self) -> list[tuple[int, int]]:
        return [(thread.vcpu.index, thread.thread_id) for thread in self.threads]
