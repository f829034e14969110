"""virtio-serial-pci with virtconsole/virtserialport: a guest echoes through a chardev socket.

The ``vconsole`` guest runs the control protocol as Linux's driver does
and prints every control message; the test talks to the console port's
chardev socket and follows ``VSERPORT_CHANGE``. The same command line
runs under QEMU 7.2 (``disable-legacy=on``: vmd has only the modern
transport) and vmd, and both must print the same.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.guest_harness import ENGINES, TIMEOUT, GuestVM, command, require

pytestmark = [pytest.mark.kvm]

EXPECTED = """\
device features 30000006 negotiated 6 ok 0
max_nr_ports 31 queues 64
ctrl port 0 event 1 value 1 len 8
ctrl port 1 event 1 value 1 len 8
ctrl port 0 event 4 value 1 len 8
ctrl port 0 event 7 value 1 name org.vmd.console len 24
ctrl port 0 event 6 value 1 len 8
ctrl port 1 event 7 value 1 name org.vmd.port len 21
ctrl port 1 event 6 value 1 len 8
rx 10 bytes
rx 5 bytes
closed
"""


def read_until(conn: socket.socket, text: bytes) -> bytes:
    data = b""
    while text not in data:
        chunk = conn.recv(4096)
        assert chunk, f"EOF before {text!r} in {data!r}"
        data += chunk
    return data


@pytest.mark.parametrize("engine", ENGINES)
def test_console_echo_and_port_events(engine: str, tmp_path: Path) -> None:
    con, port = tmp_path / f"{engine}-con.sock", tmp_path / f"{engine}-port.sock"
    args = ("-S", "-m", "32", "-device", "virtio-serial-pci,id=vs0,disable-legacy=on",
            "-chardev", f"socket,id=con,path={con},server=on,wait=off",
            "-device", "virtconsole,chardev=con,id=console0,name=org.vmd.console",
            "-chardev", f"socket,id=p1,path={port},server=on,wait=off",
            "-device", "virtserialport,bus=vs0.0,chardev=p1,id=port1,name=org.vmd.port")
    with GuestVM(engine, "vconsole", tmp_path, *args) as vm, vm.qmp() as qmp, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        conn.settimeout(TIMEOUT)
        conn.connect(str(con))
        assert qmp.command({"execute": "cont"}) == {"return": {}}
        assert qmp.wait_event("VSERPORT_CHANGE")["data"] == {"id": "console0", "open": True}
        assert read_until(conn, b"ready\n") == b"Eready\n"
        other.connect(str(port))                   # the serial port's host side opens
        vm.wait_for_output("ctrl port 1 event 6 value 1")
        conn.sendall(b"hello vmd\n")
        assert read_until(conn, b"\n") == b"HELLO VMD\n"
        conn.sendall(b"quit\n")
        assert qmp.wait_event("VSERPORT_CHANGE")["data"] == {"id": "console0", "open": False}
        vm.send(b"x")
        assert vm.wait() == 0x33 << 1 | 1
        assert vm.output.replace("\r\n", "\n") == EXPECTED


@pytest.mark.parametrize("engine", ENGINES)
def test_descriptor_loop_breaks_only_the_device(engine: str, tmp_path: Path) -> None:
    args = ("-m", "32", "-append", "hostile", "-device", "virtio-serial-pci,disable-legacy=on",
            "-device", "virtconsole")
    with GuestVM(engine, "vconsole", tmp_path, *args) as vm, vm.qmp() as qmp:
        vm.wait_for_output("device needs reset: status 4f")
        assert qmp.command({"execute": "query-status"})["return"]["status"] == "running"
        assert [d["slot"] for d in qmp.command({"execute": "query-pci"})["return"][0]["devices"]][-1] == 2
        vm.send(b"x")
        assert vm.wait() == 0x34 << 1 | 1


BAD_COMMAND_LINES = [
    ("-device", "virtio-serial-pci", "-device", "virtserialport,nr=0"),
    ("-device", "virtio-serial-pci", "-device", "virtconsole", "-device", "virtconsole,nr=0"),
    ("-device", "virtio-serial-pci", "-device", "virtconsole,name=a", "-device", "virtserialport,name=a"),
    ("-device", "virtio-serial-pci,max_ports=2", "-device", "virtserialport,nr=2"),
    ("-device", "virtio-serial-pci,max_ports=2", "-device", "virtserialport", "-device", "virtserialport"),
    ("-device", "virtconsole",),
    ("-device", "virtio-serial-pci", "-device", "virtconsole,chardev=nope"),
    ("-device", "virtio-serial-pci,id=vs", "-device", "virtconsole,bus=vs.1"),
    ("-device", "virtio-serial-pci,max_ports=0"),
    ("-device", "virtio-serial-pci,addr=1"),
    ("-device", "virtio-serial-pci,addr=2", "-device", "virtio-serial-pci,id=x,addr=2"),
    ("-device", "virtio-serial-pci,addr=32"),
    ("-device", "virtio-serial-pci,bus=pci.1"),
    ("-device", "virtio-serial-pci,bus=isa.0"),
    ("-device", "isa-debugcon,bus=pci.0"),
    ("-device", "virtio-serial-pci,bootindex=1"),
]


@pytest.mark.qemu
@pytest.mark.parametrize("args", BAD_COMMAND_LINES, ids=lambda a: " ".join(a[1::2]))
def test_placement_and_port_errors_are_qemus(args: tuple[str, ...]) -> None:
    """The same bad -device lines fail with the same message (after QEMU's "prog: option: ")."""
    texts = []
    for engine in ENGINES:
        require(engine)
        result = subprocess.run([*command(engine), "-S", *args], capture_output=True, text=True,
                                timeout=TIMEOUT, check=False)
        assert result.returncode == 1
        last = [line for line in result.stderr.splitlines() if "warning" not in line][-1]
        texts.append(last.rsplit(": ", 1)[-1] if "Property" not in last else last.split(": ", 2)[-1])
    assert texts[0] == texts[1]
