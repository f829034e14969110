"""device_add/device_del on -M pc (and -M none) against QEMU 7.2, step by step.

Both run paused (``-S``), so no firmware and no guest: the test plays the
guest's part through HMP ``i``/``o`` (port reads and writes) on the ACPI
PCI hotplug registers and the GPE0 block, and compares every reply,
register value and DEVICE_DELETED event. QEMU sends DEVICE_DELETED from
its RCU thread, which a failing ``device_add`` drains; each ``settle``
step sends one and then waits for the event of the device that went last.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guest_harness import QEMU, TIMEOUT, EventQMP, require

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

PC = ("-M", "pc", "-accel", "kvm", "-cpu", "qemu64", "-S",
      "-blockdev", "null-co,node-name=n1", "-drive", "if=none,id=d1,driver=null-co",
      "-device", "virtio-serial-pci,id=cold", "-device", "isa-debug-exit,id=dx", "-chardev", "null,id=c1")
REGISTERS = (0xAE00, 0xAE04, 0xAE0C, 0xAE10, 0xAE14, 0xAFE0)


def start(engine: str, tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], EventQMP]:
    require(engine)
    directory = tmp_path / engine
    directory.mkdir()
    path = directory / "qmp.sock"
    program = [QEMU] if engine == "qemu" else [sys.executable, "-m", "vmd"]
    process = subprocess.Popen([*program, "-nodefaults", "-display", "none", *args,  # type: ignore[list-item]
                                "-qmp", f"unix:{path},server=on,wait=off"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            qmp = EventQMP(path, TIMEOUT)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError(f"{engine}: no QMP socket") from None
            time.sleep(0.05)  # the socket appears while the emulator starts
    qmp.negotiate()
    return process, qmp


class Session:
    """One emulator; each method is a step whose result is compared."""

    def __init__(self, qmp: EventQMP) -> None:
        self.qmp = qmp

    def cmd(self, name: str, **arguments: Any) -> dict[str, Any]:
        return self.qmp.command({"execute": name, "arguments": arguments})

    def add(self, **arguments: Any) -> dict[str, Any]:
        return self.cmd("device_add", **arguments)

    def delete(self, name: str) -> dict[str, Any]:
        return self.cmd("device_del", id=name)

    def hmp(self, line: str) -> str:
        reply = self.cmd("human-monitor-command", **{"command-line": line})
        return str(reply["return"])

    def registers(self) -> list[str]:
        """UP (read clears it), DOWN, RMV, SEL, AIDX and GPE0 status/enable."""
        return [self.hmp(f"i /w 0x{port:x}") for port in REGISTERS]

    def settle(self, path: str) -> list[dict[str, Any]]:
        """The DEVICE_DELETED events up to the one of ``path``."""
        assert "error" in self.add(driver="no-such-driver")
        self.qmp.wait_event_where(lambda e: e["event"] == "DEVICE_DELETED" and e["data"]["path"] == path)
        deleted = [e["data"] for e in self.qmp.events if e["event"] == "DEVICE_DELETED"]
        self.qmp.events.clear()
        return deleted


def pc_steps(s: Session) -> Iterator[Any]:
    yield s.registers()
    for arguments in ({}, {"driver": "no-such"}, {"driver": "pci-device"}, {"driver": "i440FX"},
                      {"driver": "virtio-serial-pci", "id": "9bad"}, {"driver": "isa-serial", "id": "i1"},
                      {"driver": "virtio-serial-pci", "bus": "isa.0"}, {"driver": "virtio-serial-pci", "bus": "nobus"},
                      {"driver": "virtio-serial-pci", "id": "cold"}, {"driver": "virtio-serial-pci", "addr": "2"},
                      {"driver": "virtio-serial-pci", "addr": True}, {"driver": "virtio-serial-pci", "vectors": "x"},
                      {"driver": "virtio-serial-pci", "foo": 1}, {"driver": "virtio-blk-pci", "id": "b1"},
                      {"driver": "virtio-blk-pci", "id": "b1", "drive": "nope"}):
        yield s.add(**arguments)
    yield s.add(driver="virtio-serial-pci", id="s1")                      # slot 3
    yield s.registers()
    yield s.registers()                                                   # UP was read: cleared
    yield s.add(driver="virtio-blk-pci", id="b1", drive="n1")            # slot 4
    yield s.add(driver="virtio-blk-pci", id="b3", drive="d1")            # slot 5
    yield s.add(driver="virtio-blk-pci", id="b4", drive="d1")
    yield s.add(driver="virtconsole", id="vc1", chardev="c1", bus="s1.0")
    yield s.add(driver="virtserialport", bus="s1.0")
    yield s.add(driver="virtio-serial-pci", id="s4", addr="1d.0", multifunction=True)
    yield s.add(driver="virtio-serial-pci", id="s5", addr="1d.1")
    yield s.add(driver="virtio-serial-pci", id="s6", addr="1e.3")
    yield [d["qdev_id"] for d in s.cmd("query-pci")["return"][0]["devices"]]
    for name in ("nope", "dx", "/machine", "", "peripheral/s1", "vc1"):
        yield s.delete(name)
    yield s.settle("/machine/peripheral/vc1")                             # a port goes at once
    yield s.cmd("query-chardev")["return"][0]                             # and lets go of its chardev
    yield s.delete("s1")
    yield s.delete("s1")                                                  # still pending
    yield s.registers()
    yield s.hmp("o /w 0xae08 0x2")                                        # slot 1: the chipset stays
    yield s.hmp("o /w 0xae08 0x18")                                       # slot 3 only
    yield s.settle("/machine/peripheral/s1")
    yield s.delete("/machine/peripheral/b1")
    yield s.delete("b3")
    yield s.cmd("blockdev-del", **{"node-name": "n1"})
    yield s.registers()
    yield s.hmp("o /w 0xae08 0x10")
    yield s.settle("/machine/peripheral/b1")
    yield s.cmd("blockdev-del", **{"node-name": "n1"})                    # released with its device
    yield s.hmp("o /w 0xae08 0x20")
    yield s.settle("/machine/peripheral/b3")
    yield s.cmd("query-block")                                            # the -drive went with it
    yield s.add(driver="virtio-blk-pci", id="b5", drive="d1")
    yield s.registers()
    yield s.add(driver="virtio-serial-pci", id="s7")
    yield s.delete("s7")
    yield s.cmd("system_reset")                                           # a reset carries out the request
    yield s.settle("/machine/peripheral/s7")
    yield s.registers()


def none_steps(s: Session) -> Iterator[Any]:
    for arguments in ({"driver": "virtio-serial-pci", "id": "s1"}, {"driver": "isa-debug-exit"},
                      {"driver": "virtconsole"}, {"driver": "virtio-serial-pci", "bus": "pci.0"},
                      {"driver": "virtio-serial-pci", "bus": "main-system-bus"},
                      {"driver": "virtio-serial-pci", "bus": 5}, {"driver": 5}, {}):
        yield s.add(**arguments)
    for arguments in ({"id": "s1"}, {}, {"id": 1}, {"id": "x", "foo": 1}, {"id": "/machine"}):
        yield s.cmd("device_del", **arguments)


def hmp_steps(s: Session) -> Iterator[Any]:
    for line in ("device_add virtio-serial-pci,id=s1", "device_add virtio-serial-pci,id=s1", "device_add nope",
                 "device_add virtio-serial-pci,id=9x", "device_add", "device_add virtio-serial-pci,foo=1",
                 "device_add virtio-serial-pci,,x", "device_del nope", "device_del s1", "device_del s1",
                 "device_del"):
        yield s.hmp(line)
    yield s.registers()


@pytest.mark.parametrize(("args", "steps"), [(PC, pc_steps), (("-M", "none"), none_steps), (PC, hmp_steps)],
                         ids=["pc", "none", "hmp"])
def test_same_answers_as_qemu(tmp_path: Path, args: tuple[str, ...], steps: Any) -> None:
    results = {}
    for engine in ("qemu", "vmd"):
        process, qmp = start(engine, tmp_path, *args)
        try:
            results[engine] = list(steps(Session(qmp)))
        finally:
            qmp.close()
            process.kill()
            process.wait()
    for index, (theirs, ours) in enumerate(zip(results["qemu"], results["vmd"], strict=True)):
        assert ours == theirs, f"step {index}"


def test_device_appears_in_query_pci_and_qtree_at_once(tmp_path: Path) -> None:
    process, qmp = start("vmd", tmp_path, "-M", "pc", "-accel", "kvm", "-S")
    try:
        s = Session(qmp)
        assert s.add(driver="virtio-serial-pci", id="hot", addr="7") == {"return": {}}
        slots = {(d["slot"], d["qdev_id"]) for d in s.cmd("query-pci")["return"][0]["devices"]}
        assert (7, "hot") in slots
        assert 'dev: virtio-serial-pci, id "hot"' in s.hmp("info qtree")
        assert "id \"hot\"" in s.hmp("info pci")
    finally:
        qmp.close()
        process.kill()
        process.wait()
