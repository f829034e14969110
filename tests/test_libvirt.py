"""libvirt drives vmd: the capability probe and a domain's life, seen from
a real libvirtd.

libvirt (Debian 12: 9.0.0) probes an emulator before using it at all: it
starts it as ``EMU -S -no-user-config -nodefaults -nographic -machine
none,accel=kvm:tcg -qmp unix:...,server=on,wait=off -pidfile ...
-daemonize``, sends ~50 QMP commands, then repeats a shorter pass with
``accel=tcg`` when KVM was usable. The probe's result lands in
``/var/cache/libvirt/qemu/capabilities/<hash>.xml`` only when every
required command answered; ``virsh domcapabilities`` then reports what
the emulator offers. A domain start adds the options of a real guest
(``-add-fd`` for the serial file, the monitor as an inherited fd, JSON
``-object``/``-device``, ``-machine pc-i440fx-7.2,...,memory-backend=``)
and the QMP of a running domain. These tests run a private libvirtd
(``tests.libvirt_harness``) against this worktree's installed ``vmd``,
and the domain test against QEMU 7.2 too: both must end in the same states.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.guest_harness import QEMU, engine_skip_reason
from tests.guests.build import build_guest
from tests.harness import wait_until
from tests.libvirt_harness import VMD_BINARY, Libvirtd, private_libvirtd
from vmd.cli.config import MACHINE_CLASSES
from vmd.system.accel import kvm_usable

pytestmark = pytest.mark.libvirt

#: Machine types libvirt can use: it ignores ``none``.
GUEST_MACHINES = [m for m in MACHINE_CLASSES if m.name != "none"]


def probe_cache(daemon: Libvirtd) -> ET.Element:
    """The capabilities libvirt cached for vmd (present only if the probe passed)."""
    files = list((daemon.root / "cache" / "qemu" / "capabilities").glob("*.xml"))
    assert files, f"libvirt cached no capabilities for vmd:\n{daemon.log_tail()}"
    for path in files:
        root = ET.parse(path).getroot()
        if root.findtext("emulator") == str(VMD_BINARY):
            return root
    pytest.fail(f"no cached capabilities name {VMD_BINARY}")


def test_probe_passes_and_is_cached(tmp_path: Path) -> None:
    with private_libvirtd(tmp_path) as daemon:
        result = daemon.virsh("domcapabilities", "--emulatorbin", str(VMD_BINARY), check=False)
        caps = probe_cache(daemon)
    flags = {flag.get("name") for flag in caps.iter("flag")}
    assert ("kvm" in flags) == kvm_usable()
    # What vmd's answers told libvirt, truthfully: no TCG (so libvirt runs
    # no accel=tcg pass and offers no <domain type='qemu'>), no file
    # memory backend, no seccomp sandbox.
    assert not flags & {"tcg", "object-memory-file", "seccomp-sandbox"}
    assert caps.findtext("version") == "7002000"
    machines = {m.get("name") for m in caps.iter("machine") if m.get("type") == "kvm"}
    assert machines == {m.name for m in GUEST_MACHINES}
    assert not [m for m in caps.iter("machine") if m.get("type") == "tcg"]
    if GUEST_MACHINES:
        assert result.returncode == 0, result.stderr
    else:
        # Only 'none', which libvirt ignores: it has no machine to report,
        # though the probe itself passed (the cache above).
        assert "does not support machine type" in result.stderr


@pytest.mark.skipif(not GUEST_MACHINES, reason="vmd has no guest machine type yet")
def test_domcapabilities_lists_what_vmd_has(tmp_path: Path) -> None:
    with private_libvirtd(tmp_path) as daemon:
        xml = daemon.virsh("domcapabilities", "--emulatorbin", str(VMD_BINARY),
                           "--virttype", "kvm").stdout
    root = ET.fromstring(xml)
    default = GUEST_MACHINES[0]
    assert root.findtext("domain") == "kvm"
    assert root.findtext("machine") == default.name
    assert root.findtext("arch") == "x86_64"
    assert int(root.find("vcpu").get("max")) == default.cpu_max  # type: ignore[union-attr]
    # What vmd's answers decide (libvirt 9.0 lists disk buses and host
    # device types from the architecture and the host, whatever the
    # emulator says): iothreads (the ``iothread`` object type exists), but
    # no display, no video model, no TPM, no RNG, none of the features
    # QEMU's other objects would bring.
    assert root.find("iothreads").get("supported") == "yes"  # type: ignore[union-attr]
    devices = root.find("devices")
    assert devices is not None
    assert not devices.findall("graphics/enum[@name='type']/value")
    assert [v.text for v in devices.findall("video/enum[@name='modelType']/value")] == ["none"]
    assert not devices.findall("rng/enum[@name='model']/value")
    for kind in ("tpm", "redirdev"):
        assert devices.find(kind).get("supported") == "no", kind  # type: ignore[union-attr]
    features = root.find("features")
    assert features is not None
    for feature in ("vmcoreinfo", "genid", "backup", "sev", "sgx"):
        assert features.find(feature).get("supported") == "no", feature  # type: ignore[union-attr]

DOMAIN_XML = """\
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vmdtest</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{emulator}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-device'/>
    <qemu:arg value='isa-debug-exit,iobase=0xf4,iosize=4'/>
  </qemu:commandline>
</domain>
"""
#: The guest prints this, then waits for the ACPI power button.
READY = "waiting (acpi yes)"
BOOT_TIMEOUT = 120.0


def domstate(daemon: Libvirtd) -> str:
    return daemon.virsh("domstate", "--reason", "vmdtest").stdout.strip()


@pytest.mark.slow
@pytest.mark.kvm
@pytest.mark.parametrize("engine", ["vmd", "qemu"])
def test_domain_life_is_qemus(tmp_path: Path, engine: str) -> None:
    """define, start, monitor command, shutdown (the guest leaves through
    isa-debug-exit), start again, destroy: the same states as with QEMU."""
    reason = engine_skip_reason(engine)
    if reason is not None:
        pytest.skip(reason)
    emulator = VMD_BINARY if engine == "vmd" else Path(QEMU or "")
    serial = tmp_path / "serial.log"
    xml = tmp_path / "domain.xml"
    xml.write_text(DOMAIN_XML.format(kernel=build_guest("powerdown"), emulator=emulator, serial=serial))

    def output() -> str:
        return serial.read_text() if serial.exists() else ""

    with private_libvirtd(tmp_path) as daemon:
        daemon.virsh("define", str(xml))
        daemon.virsh("start", "vmdtest")
        wait_until(lambda: READY in output(), "the guest's first line", BOOT_TIMEOUT)
        assert domstate(daemon) == "running (booted)"
        reply = daemon.virsh("qemu-monitor-command", "vmdtest", "--pretty",
                             '{"execute":"query-status"}').stdout
        assert json.loads(reply)["return"]["status"] == "running"
        daemon.virsh("shutdown", "vmdtest")
        wait_until(lambda: domstate(daemon).startswith("shut off"), "the domain to stop", BOOT_TIMEOUT)
        # The guest saw the power button and left through isa-debug-exit:
        # the emulator exited without a SHUTDOWN event, as a crash does.
        assert output().endswith("power button\n")
        assert domstate(daemon) == "shut off (crashed)"
        daemon.virsh("start", "vmdtest")
        wait_until(lambda: output().rstrip().endswith(READY), "the guest's second start", BOOT_TIMEOUT)
        daemon.virsh("destroy", "vmdtest")
        assert domstate(daemon) == "shut off (destroyed)"
