"""The type registry, ``-device help`` texts, creation errors and ``info qtree``,
compared with what QEMU 7.2 prints for the same types and arguments."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from vmd.hw import devices  # noqa: F401
from vmd.qom.device import Device, create_device
from vmd.qom.errors import QOMError
from vmd.qom.help import device_help, device_type_help
from vmd.qom.property import Property
from vmd.qom.qtree import Bus, qtree
from vmd.qom.types import TYPE_DEVICE, TYPES, TypeInfo, TypeRegistry

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
OUR_DEVICES = ("isa-serial", "i8042", "mc146818rtc", "isa-debugcon", "isa-debug-exit", "virtconsole",
               "virtserialport", "virtio-serial-pci")


def qemu(*args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU is not None
    return subprocess.run([QEMU, "-M", "pc", "-accel", "tcg", "-nodefaults", "-display", "none",
                           "-S", "-monitor", "none", *args],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
                          check=False)


def categories(text: str) -> dict[str, str]:
    """device line -> the category header above it."""
    result, header = {}, ""
    for line in text.splitlines():
        if line.endswith("devices:"):
            header = line
        elif line:
            result[line] = header
    return result


@needs_qemu
def test_device_help_lines_and_categories_are_qemus() -> None:
    ours = categories(device_help())
    theirs = categories(qemu("-device", "help").stdout)
    assert set(ours) == {f'name "{n}", bus ISA' for n in ("i8042", "isa-serial", "isa-debug-exit",
                                                          "isa-debugcon", "mc146818rtc")} | {
        'name "virtio-blk-pci", bus PCI, alias "virtio-blk"',
        'name "virtconsole", bus virtio-serial-bus', 'name "virtserialport", bus virtio-serial-bus',
        'name "virtio-serial-pci", bus PCI, alias "virtio-serial"'}
    for line, header in ours.items():
        assert theirs.get(line) == header


@needs_qemu
@pytest.mark.parametrize("name", OUR_DEVICES)
def test_device_type_help_lines_are_qemus(name: str) -> None:
    ours = device_type_help(name).splitlines()
    theirs = qemu("-device", f"{name},help").stdout.splitlines()
    assert ours[0] == theirs[0] == f"{name} options:"
    assert set(ours[1:]) <= set(theirs[1:])
    assert ours[1:] == sorted(ours[1:])


@needs_qemu
@pytest.mark.parametrize("arg", [
    "isa-debug-exit,iobase=abc", "isa-debug-exit,foo=1", "isa-debug-exit,iobase=0x1ffffffff",
    "isa-debug-exit,iobase=-1", "mc146818rtc,iobase=70000", "isa-serial,wakeup=maybe",
    "nosuch", "isa-device", "port92", "mc146818rtc,lost_tick_policy=never",
])
def test_creation_errors_are_qemus(arg: str) -> None:
    driver, _, rest = arg.partition(",")
    options: dict[str, str] = {"driver": driver}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = value
    with pytest.raises(QOMError) as error:
        create_device(options)
    expected = qemu("-device", arg).stderr.strip().splitlines()[-1]
    assert expected == f"qemu-system-x86_64: -device {arg}: {error.value}"


@needs_qemu
@pytest.mark.parametrize("arg", ["nosuch,help", "isa-device,help"])
def test_help_errors_are_qemus(arg: str) -> None:
    with pytest.raises(QOMError) as error:
        device_type_help(arg.split(",")[0])
    expected = qemu("-device", arg).stderr.strip().splitlines()[-1]
    assert expected == f"qemu-system-x86_64: -device {arg}: {error.value}"


def test_values_parse_as_c_integers() -> None:
    device = create_device({"driver": "isa-debug-exit", "iobase": "0xf4", "iosize": "010"})
    assert (device.props["iobase"], device.props["iosize"]) == (0xF4, 8)
    json_device = create_device({"driver": "isa-debug-exit", "iobase": 244})
    assert json_device.props["iobase"] == 244
    with pytest.raises(QOMError, match="Invalid parameter type for 'iobase', expected: integer"):
        create_device({"driver": "isa-debug-exit", "iobase": True})


def test_registry_answers_qom_list_types_questions() -> None:
    names = {info.name for info in TYPES.list_types(TYPE_DEVICE)}
    assert set(OUR_DEVICES) | {"port92"} <= names and "isa-device" not in names
    assert "isa-device" in {info.name for info in TYPES.list_types(TYPE_DEVICE, abstract=True)}
    registry = TypeRegistry()
    registry.register(TypeInfo("object", None))
    registry.register(TypeInfo("iface", None, abstract=True))
    registry.register(TypeInfo("thing", "object", interfaces=("iface",),
                               properties=(Property("p", "bool", False),)))
    registry.register(TypeInfo("sub", "thing", properties=(Property("q", "str"),)))
    assert [info.name for info in registry.list_types("iface")] == ["thing", "sub"]
    assert [p.name for p in registry.properties("sub")] == ["q", "p"]
    with pytest.raises(ValueError, match="unknown parent"):
        registry.register(TypeInfo("orphan", "nothing"))


def test_qtree_layout_is_qemus() -> None:
    root = Bus("main-system-bus", "System")
    isa_owner = Device({}, None)
    isa_owner.type_info = TypeInfo("x-isa-bridge", "device")  # type: ignore[misc]
    isa = Bus("isa.0", "ISA")
    isa_owner.child_buses.append(isa)
    root.plug(isa_owner)
    isa.plug(create_device({"driver": "mc146818rtc", "base_year": "0"}, user=False))
    isa.plug(create_device({"driver": "isa-serial", "index": "0", "iobase": "0x3f8", "irq": "4"}))
    isa.plug(create_device({"driver": "isa-debug-exit", "iobase": "0xf4", "iosize": "4"}))
    assert qtree(root) == """\
bus: main-system-bus
  type System
  dev: x-isa-bridge, id ""
    bus: isa.0
      type ISA
      dev: isa-debug-exit, id ""
        iobase = 244 (0xf4)
        iosize = 4 (0x4)
      dev: isa-serial, id ""
        index = 0 (0x0)
        iobase = 1016 (0x3f8)
        irq = 4 (0x4)
      dev: mc146818rtc, id ""
        gpio-out "" 1
        base_year = 0 (0x0)
        iobase = 112 (0x70)
        irq = 8 (0x8)
        lost_tick_policy = "discard"
"""
