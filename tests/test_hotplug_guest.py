"""A running guest sees a hotplug and ejects on request, on QEMU and on vmd alike.

The ``hotplug`` guest polls the ACPI PCI hotplug registers; the test adds
a device with ``device_add`` once the guest waits for it, asks for its
removal with ``device_del`` once the guest waits for that, and collects
the DEVICE_DELETED events that follow the guest's eject. QEMU's transcript
(serial output, exit status, replies, events) is memoized like the other
guest references; vmd's must be the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.guest_harness import GuestVM, engine_skip_reason, memoized_qemu, require

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

ARGS = ("-m", "16", "-blockdev", "null-co,node-name=disk")
DEVICE = {"driver": "virtio-blk-pci", "id": "hot", "drive": "disk", "addr": "6"}


def transcript(engine: str, tmp_path: Path) -> dict[str, Any]:
    with GuestVM(engine, "hotplug", tmp_path, *ARGS) as vm, vm.qmp() as qmp:
        vm.wait_for_output("waiting for a plug\n")
        added = qmp.command({"execute": "device_add", "arguments": DEVICE})
        vm.wait_for_output("waiting for an unplug request\n")
        deleted = qmp.command({"execute": "device_del", "arguments": {"id": "hot"}})
        qmp.wait_event_where(lambda e: e["event"] == "DEVICE_DELETED" and e["data"]["path"].endswith("/hot"))
        events = [e["data"] for e in qmp.events if e["event"] == "DEVICE_DELETED"]
        released = qmp.command({"execute": "blockdev-del", "arguments": {"node-name": "disk"}})
        status = vm.wait()
        return {"output": vm.output, "status": status, "replies": [added, deleted, released], "events": events}


def test_guest_sees_the_plug_and_ejects_the_device(tmp_path: Path) -> None:
    require("vmd")
    ours = transcript("vmd", tmp_path)
    assert ours["replies"] == [{"return": {}}] * 3
    assert ours["events"] == [{"path": "/machine/peripheral/hot/virtio-backend"},
                              {"device": "hot", "path": "/machine/peripheral/hot"}]
    lines = ours["output"].splitlines()
    assert lines[0] == "removable fffffffc"
    assert "06=1af4:" not in lines[1] and "06=1af4:1042" in lines[5]
    assert lines[3:5] == ["up 00000040, again 00000000", "gpe status 02, after ack 00"]
    assert lines[6:9] == ["waiting for an unplug request", "down 00000040", "gpe status 02, after ack 00"]
    assert lines[9] == "ejected, down 00000000" and lines[10] == lines[1].replace("before", "after")
    assert ours["status"] == 0x23 << 1 | 1
    if engine_skip_reason("qemu") is None:
        theirs = memoized_qemu("hotplug", ["hotplug", ARGS, DEVICE],
                               lambda: transcript("qemu", tmp_path / "reference"))
        # vmd's virtio functions are modern-only: device 0x1042 where QEMU's transitional one is 0x1001.
        assert ours == {**theirs, "output": theirs["output"].replace("1af4:1001", "1af4:1042")}
