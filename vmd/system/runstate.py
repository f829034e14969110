"""The VM run state (QEMU's RunState) and its transitions.

The run state belongs to the event loop thread. ``stop`` and ``cont`` emit
``STOP`` and ``RESUME`` before they return, so the event reaches clients
before the command's reply, as in QEMU. Every change of ``status`` goes to
the listeners (the service manager's ``STATUS=``) and to the
``runstate_set`` trace event.
With a guest (``vcpus`` set), the vCPUs are parked before ``STOP`` and
released after ``RESUME``, as QEMU's ``vm_stop``/``vm_start`` do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from vmd._generated import events
from vmd._generated.types import RunState
from vmd.qmp.errors import QMPError
from vmd.qmp.events import EventBroadcaster
from vmd.system import trace

# States from which ``cont`` needs a system_reset first.
_NEEDS_RESET = frozenset({RunState.INTERNAL_ERROR, RunState.SHUTDOWN,
                          RunState.GUEST_PANICKED})


class Vcpus(Protocol):
    """What the run state drives: park and release every vCPU."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class RunStateMachine:
    """The current run state and the verbs that change it."""

    def __init__(self, emitter: EventBroadcaster, start_paused: bool) -> None:
        self._emitter = emitter
        self._status = RunState.PRELAUNCH if start_paused else RunState.RUNNING
        self._listeners: list[Callable[[RunState], object]] = []
        self.vcpus: Vcpus | None = None

    @property
    def status(self) -> RunState:
        return self._status

    @status.setter
    def status(self, new: RunState) -> None:
        if new == self._status:
            return
        if trace.is_enabled("runstate_set"):
            states = list(RunState)
            trace.event("runstate_set", f"current_run_state {states.index(self._status)} ({self._status})",
                        f"new_state {states.index(new)} ({new})")
        self._status = new
        for listener in list(self._listeners):
            listener(new)

    def add_listener(self, listener: Callable[[RunState], object]) -> None:
        """Call ``listener(new_status)`` after each change, on the loop thread."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[RunState], object]) -> None:
        self._listeners.remove(listener)

    @property
    def running(self) -> bool:
        return self.status == RunState.RUNNING

    def stop(self, state: RunState = RunState.PAUSED) -> None:
        """QEMU's vm_stop: a no-op (and no event) unless it is running."""
        if self.status == RunState.RUNNING:
            if self.vcpus is not None:
                self.vcpus.pause()
            self.status = state
            events.qapi_event_send_stop(self._emitter)

    def cont(self) -> None:
        """Resume the VM; refuses states that need a reset first."""
        if self.status in _NEEDS_RESET:
            raise QMPError("Resetting the Virtual Machine is required")
        if self.status != RunState.RUNNING:
            self.status = RunState.RUNNING
            events.qapi_event_send_resume(self._emitter)
            if self.vcpus is not None:
                self.vcpus.resume()

    def describe(self) -> str:
        """HMP's ``info status`` text."""
        if self.status == RunState.RUNNING:
            return "VM status: running"
        if self.status == RunState.PAUSED:
            return "VM status: paused"
        return f"VM status: paused ({self.status})"
