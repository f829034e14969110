"""The same multiboot guest and command line under QEMU and under vmd.

Each test runs once per engine. The QEMU run checks the guest and the
expectations against the reference; the vmd run must print the same and
exit the same way (where outputs depend on the moment, both are checked
against the host instead). Guests live in ``tests/guests``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.guest_harness import ENGINES, GuestVM, engine_skip_reason, qemu_reference, run_to_exit
from tests.guests.build import build_guest
from tests.hw_fakes import ManualClock, RecordingIrq
from vmd.hw.pc_cmos import pc_cmos_init
from vmd.hw.rtc import Mc146818

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]


def status(code: int) -> int:
    """The exit status isa-debug-exit gives for ``code``."""
    return ((code << 1) | 1) & 0xFF


def result_of(engine: str, guest: str, tmp_path: Path, *args: str, serial: str = "socket") -> tuple[str, int]:
    """QEMU's (memoized) result, or vmd's after checking it equals QEMU's."""
    if engine == "qemu":
        return qemu_reference(guest, tmp_path, *args)
    result = run_to_exit(engine, guest, tmp_path, *args, serial=serial)
    if engine_skip_reason("qemu") is None:
        assert result == qemu_reference(guest, tmp_path, *[a for a in args if a != "-S"])
    return result


# QEMU takes 4-10 s a run here (mostly SeaBIOS): guests that run to their
# exit use QEMU's memoized result; vmd also runs variants whose expected
# result QEMU's already pins (other chardev backends, other reset paths).
on_qemu_and_vmd = pytest.mark.parametrize("engine", ENGINES)
HELLO_ARGS = ("-m", "16", "-append", "one two")


@pytest.mark.parametrize(("engine", "serial"), [
    ("qemu", "socket"), ("vmd", "socket"), ("vmd", "file"), ("vmd", "stdio"), ("vmd", "pipe"), ("vmd", "pty")])
def test_serial_output_and_exit_status(engine: str, serial: str, tmp_path: Path) -> None:
    paused = ("-S",) if serial == "pty" else ()
    output, code = result_of(engine, "hello", tmp_path, *HELLO_ARGS, *paused, serial=serial)
    elf = build_guest("hello")
    assert (output, code) == (f"hello from the guest, magic 2badb002, cmdline '{elf} one two'\n",
                              status(0x10))


@on_qemu_and_vmd
def test_serial_input_typed_before_the_guest_is_ready(engine: str, tmp_path: Path) -> None:
    with GuestVM(engine, "echo", tmp_path, "-m", "16", early_input=b"typed early\n") as vm:
        vm.wait_for_output("line 1: 'typed early'\n")
        vm.send(b"after ready\n")
        assert vm.wait() == status(0x11)
        assert vm.output == "ready\nline 1: 'typed early'\nline 2: 'after ready'\n"


def _parse_time(output: str, label: str) -> float:
    match = re.search(rf"^{label} (\d{{4}})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)$", output, re.M)
    assert match, output
    fields = [int(x) for x in match.groups()]
    return time.mktime((*fields, 0, 0, 0)) - time.timezone  # treat as UTC


@on_qemu_and_vmd
def test_rtc_time_is_the_hosts(engine: str, tmp_path: Path) -> None:
    before = time.time()
    output, code = run_to_exit(engine, "rtc", tmp_path, "-m", "16")
    after = time.time()
    assert code == status(0x12)
    assert output.startswith("regs a=26 b=02 d=80\n")
    for label in ("bcd", "bin"):
        assert before - 1 <= _parse_time(output, label) <= after + 1, (
            f"{output}(QEMU's pc creates mc146818rtc with base_year=2000, which reads as 0)")
    hour12 = int(re.search(r"^hour12 ([0-9a-f]{2})$", output, re.M).group(1), 16)  # type: ignore[union-attr]
    hour24 = time.gmtime(_parse_time(output, "bin")).tm_hour
    hour = ((hour12 & 0x70) >> 4) * 10 + (hour12 & 0x0F)   # bit 7 is PM, not a BCD digit
    assert {hour % 12 + (12 if hour12 & 0x80 else 0)} & {hour24 % 24, (hour24 + 1) % 24}, output
    assert "periodic ok\n" in output


def _pc_cmos(ram_mib: int) -> dict[int, int]:
    rtc = Mc146818(RecordingIrq(), ManualClock())
    pc_cmos_init(rtc, ram_mib << 20, smp_cpus=1)
    return {index: rtc.cmos[index] for index in range(128)}


@on_qemu_and_vmd
@pytest.mark.parametrize("ram_mib", [128, 4096])
def test_memory_size_bytes_and_multiboot_info(engine: str, ram_mib: int, tmp_path: Path) -> None:
    output, code = result_of(engine, "meminfo", tmp_path, "-m", str(ram_mib))
    assert code == status(0x13)
    cmos = dict((int(k, 16), int(v, 16)) for k, v in re.findall(r" ([0-9a-f]{2})=([0-9a-f]{2})", output))
    expected = _pc_cmos(ram_mib)
    assert cmos == {index: expected[index] for index in cmos}
    assert "flags 41\n" in output and "mmap " in output


@pytest.mark.parametrize(("engine", "how", "no_reboot"), [
    ("qemu", "kbd", True), ("vmd", "kbd", True), ("vmd", "kbd", False),
    ("vmd", "port92", True), ("vmd", "port92", False)])
def test_guest_reset(engine: str, how: str, no_reboot: bool, tmp_path: Path) -> None:
    args = ["-m", "16", "-append", how, "-S"] + (["-no-reboot"] if no_reboot else [])
    with GuestVM(engine, "reset", tmp_path, *args) as vm, vm.qmp() as qmp:
        assert qmp.command({"execute": "cont"}) == {"return": {}}
        if no_reboot:
            event = qmp.wait_event("SHUTDOWN")
            assert event["data"] == {"guest": True, "reason": "guest-reset"}
            assert vm.wait() == 0
            assert vm.output == "boot 0\n"
        else:
            event = qmp.wait_event("RESET")
            assert event["data"] == {"guest": True, "reason": "guest-reset"}
            assert vm.wait() == status(0x14)
            assert vm.output == "boot 0\nboot 1\n"


@on_qemu_and_vmd
def test_system_powerdown_reaches_the_guest(engine: str, tmp_path: Path) -> None:
    with GuestVM(engine, "powerdown", tmp_path, "-m", "16") as vm, vm.qmp() as qmp:
        vm.wait_for_output("waiting")
        assert qmp.command({"execute": "system_powerdown"}) == {"return": {}}
        qmp.wait_event("POWERDOWN")
        code = vm.wait()
        if "acpi yes" in vm.output:
            assert (vm.output, code) == ("waiting (acpi yes)\npower button\n", status(0x15))
        else:
            assert engine == "vmd", "QEMU's pc has ACPI"
            assert (vm.output, code) == ("waiting (acpi no)\nctrl-alt-del\n", status(0x16))


def _last_tick(output: str) -> int:
    ticks = re.findall(r"^tick (\d+)$", output, re.M)
    return int(ticks[-1]) if ticks else 0


@on_qemu_and_vmd
def test_stop_and_cont_pause_a_counting_guest(engine: str, tmp_path: Path) -> None:
    with GuestVM(engine, "count", tmp_path, "-m", "16", "-S") as vm, vm.qmp() as qmp:
        qmp.command({"execute": "cont"})
        vm.wait_for_output("tick 2\n")
        assert qmp.command({"execute": "stop"}) == {"return": {}}
        qmp.wait_event("STOP")
        stopped_at = _last_tick(vm.output)
        assert qmp.command({"execute": "query-status"})["return"]["status"] == "paused"
        time.sleep(1.5)  # a running guest prints a tick a second
        assert _last_tick(vm.output) == stopped_at
        assert qmp.command({"execute": "cont"}) == {"return": {}}
        qmp.wait_event("RESUME")
        vm.wait_for_output(f"tick {stopped_at + 1}\n", timeout=30)
        qmp.command({"execute": "quit"})
        vm.wait()


@on_qemu_and_vmd
def test_smp_runs_code_on_both_vcpus(engine: str, tmp_path: Path) -> None:
    result = result_of(engine, "smp", tmp_path, "-m", "16", "-smp", "2")
    assert result == ("bsp apic id 0\nap apic id 1 running\n", status(0x18))


@on_qemu_and_vmd
def test_emulation_failure_stops_in_internal_error(engine: str, tmp_path: Path) -> None:
    with GuestVM(engine, "emufail", tmp_path, "-m", "16") as vm, vm.qmp() as qmp:
        vm.wait_for_output("about to fail\n")
        deadline = time.monotonic() + 30
        while qmp.command({"execute": "query-status"})["return"]["status"] != "internal-error":
            assert time.monotonic() < deadline, "the VM did not stop"
            time.sleep(0.1)
        assert qmp.command({"execute": "query-status"})["return"] == {
            "status": "internal-error", "singlestep": False, "running": False}
        assert "still running" not in vm.output
        qmp.command({"execute": "quit"})
        vm.wait()
