"""Which accelerator vmd runs with, and ``query-kvm``.

QEMU takes a list (``-accel kvm -accel tcg``, ``-machine accel=kvm:tcg``)
and uses the first accelerator that initialises. vmd runs guests on KVM
only, so:

* ``kvm`` is taken when ``/dev/kvm`` can be opened for reading and writing;
* ``tcg`` is taken only with ``-machine none``, where no guest code runs
  and an accelerator is a label. libvirt relies on this: after probing
  with ``accel=kvm:tcg`` it probes the same binary again with
  ``accel=tcg`` for its TCG capabilities, and a refusal fails the whole
  probe. vmd then reports what is true under TCG: KVM disabled, no
  machine type that can run (``query-machines`` lists only ``none``) and
  no CPU model, so libvirt offers no ``<domain type='qemu'>``;
* ``qtest`` (QEMU's accelerator for its test suite, where the test, not
  guest code, drives the machine through the ``-qtest`` socket) is a label
  with ``-machine none``; a ``pc`` is built as usual (on ``/dev/kvm``, for
  its memory and interrupt controllers) and no vCPU ever runs;
* any other name, or TCG for a machine with a guest, is refused with a
  clear error.

``-accel help`` lists what can be asked for, without ``qtest`` (QEMU
leaves it out too: it is for tests only).

With no accelerator given, ``-qtest`` means qtest (as in QEMU), else a
machine with a guest uses KVM and ``none`` uses TCG, as QEMU's default
(``tcg``) does for it.
"""

from __future__ import annotations

import os
from typing import Any

from vmd.cli.config import Config

KVM_DEVICE = "/dev/kvm"
ACCELERATORS = ("kvm", "tcg", "qtest")
#: Accelerators that are only a label: they run no guest code.
NO_GUEST = ("tcg", "qtest")


class AccelError(Exception):
    """No accelerator of the list can run this machine; QEMU-style text."""


def accel_help_text() -> str:
    """``-accel help`` in QEMU's words."""
    names = [name for name in ACCELERATORS if name != "qtest"]
    return "Accelerators supported in QEMU binary:\n" + "".join(f"{name}\n" for name in names)


def wanted_accelerators(config: Config) -> list[str]:
    """The list asked for, in order (``-accel``, then ``-machine accel=``)."""
    wanted = [accel.get("accel", "") for accel in config.accels]
    if "accel" in config.machine:
        wanted.extend(config.machine["accel"].split(":"))
    return wanted


def kvm_open_error() -> str | None:
    """Why ``/dev/kvm`` cannot be opened read-write (QEMU's text), or None."""
    try:
        os.close(os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as error:
        return f"Could not access KVM kernel module: {error.strerror}\nfailed to initialize kvm: {error.strerror}"
    return None


def kvm_usable() -> bool:
    return kvm_open_error() is None


def check_accelerators(config: Config) -> None:
    """What the command line alone shows: known names; KVM first for a guest.

    QEMU would run a guest on TCG (or qtest) when it comes first; vmd cannot.
    """
    wanted = wanted_accelerators(config)
    for name in wanted:
        if name not in ACCELERATORS:
            raise AccelError(f"invalid accelerator {name}")
    machine = config.machine.get("type", "none")
    if machine != "none" and wanted and wanted[0] not in ("kvm", "qtest"):
        raise AccelError(f"invalid accelerator {wanted[0]}: vmd runs guests on KVM only "
                         f"(machine '{machine}')")


def choose_accelerator(config: Config) -> str:
    """The first accelerator of the list that works (``check_accelerators`` passed)."""
    guest = config.machine.get("type", "none") != "none"
    default = "qtest" if config.qtest is not None else "kvm" if guest else "tcg"
    wanted = wanted_accelerators(config) or [default]
    error = None
    for name in wanted:
        if name == "kvm" or (name == "qtest" and guest):
            error = kvm_open_error()
            if error is None:
                return name
        elif name in NO_GUEST and not guest:
            return name
    raise AccelError(error or "no accelerator found")


def qmp_query_kvm(ctx: Any) -> Any:
    """KVM is built in; it is enabled when it is the accelerator in use."""
    from vmd._generated.types import KvmInfo  # loaded with the command, not at start-up
    return KvmInfo(enabled=ctx.daemon.accel == "kvm", present=True)
