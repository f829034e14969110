"""QOM introspection and the probe commands libvirt sends, against QEMU 7.2.

Two checks:

* differential: one vmd and one QEMU (``-M none -nodefaults``, a QMP
  socket each) get the same requests. Errors must match exactly (class
  and text); answers must have QEMU's shape, and what vmd lists must be
  what QEMU lists for the same thing (vmd lists less: only what it has);
* truthfulness: every type, machine, CPU model, property and option vmd
  lists is backed by its real registries (the QOM type table, the device
  models, the chardev backends, the command-line parser), and nothing is
  listed that vmd cannot create or parse.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import QEMU, RawQMP, running_qemu, running_vmd
from vmd.accel.cpuid import model_name
from vmd.cli.parser import parse_args
from vmd.qom.device import create_device
from vmd.qom.objects import TYPE_CPU, ensure_registered
from vmd.qom.types import TYPE_DEVICE, TYPES
from vmd.system.accel import kvm_usable

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RawQMP, RawQMP]]:
    """Negotiated connections to (vmd, QEMU), both ``-M none -nodefaults``;
    vmd as libvirt starts it (``accel=kvm:tcg``), so KVM's machines show."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with running_vmd(tmp_path_factory.mktemp("vmd"), "-nodefaults", "-machine", "none,accel=kvm:tcg") as vmd, \
            running_qemu(tmp_path_factory.mktemp("qemu")) as qemu_path, \
            RawQMP(vmd.qmp_path) as vmd_qmp, RawQMP(qemu_path) as qemu_qmp:
        vmd_qmp.negotiate()
        qemu_qmp.negotiate()
        yield vmd_qmp, qemu_qmp


def ask(qmp: RawQMP, command: str, **arguments: Any) -> dict[str, Any]:
    return qmp.command({"execute": command, "arguments": arguments})


def both(daemons: tuple[RawQMP, RawQMP], command: str, **arguments: Any
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    vmd, qemu = daemons
    return ask(vmd, command, **arguments), ask(qemu, command, **arguments)


@pytest.mark.parametrize("command, arguments", [
    ("qom-list-properties", {"typename": "no-such-type"}),
    ("qom-list", {"path": "/no/such/path"}),
    ("qom-list", {"path": "no-such-object"}),
    ("qom-get", {"path": "/machine", "property": "no-such-property"}),
    ("qom-get", {"path": "", "property": "type"}),
    ("device-list-properties", {"typename": "virtio-net-ccw"}),
    ("device-list-properties", {"typename": "device"}),
    ("device-list-properties", {"typename": "isa-device"}),
    ("device-list-properties", {"typename": "chardev-socket"}),
    ("query-command-line-options", {"option": "no-such-option"}),
])
def test_errors_are_qemus(daemons: tuple[RawQMP, RawQMP], command: str,
                          arguments: dict[str, Any]) -> None:
    ours, theirs = both(daemons, command, **arguments)
    assert "error" in theirs
    assert ours == theirs


@pytest.mark.parametrize("command, arguments", [
    ("qom-list", {"path": "/"}),
    ("qom-list", {"path": "/chardevs"}),
    ("qom-list", {"path": "chardevs"}),
    ("qom-list", {"path": "/machine/peripheral"}),
    ("qom-list", {"path": "peripheral-anon"}),
    ("qom-get", {"path": "/machine", "property": "type"}),
    ("qom-get", {"path": "/", "property": "chardevs"}),
    ("qom-get", {"path": "/chardevs/compat_monitor0", "property": "type"}),
    ("qom-get", {"path": "compat_monitor0", "property": "type"}),
    ("qom-get", {"path": "/machine", "property": "usb"}),
    ("query-target", {}),
])
def test_answers_are_qemus(daemons: tuple[RawQMP, RawQMP], command: str,
                           arguments: dict[str, Any]) -> None:
    ours, theirs = both(daemons, command, **arguments)
    assert "return" in theirs
    assert ours == theirs


def _by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in entries}


@pytest.mark.parametrize("typename", ["isa-serial", "i8042", "mc146818rtc", "isa-debugcon",
                                      "isa-debug-exit", "port92"])
def test_device_properties_are_qemus(daemons: tuple[RawQMP, RawQMP], typename: str) -> None:
    """Each property vmd lists is QEMU's: same type, same default."""
    ours, theirs = both(daemons, "device-list-properties", typename=typename)
    qemu_props = _by_name(theirs["return"])
    for name, prop in _by_name(ours["return"]).items():
        assert name in qemu_props, f"{typename}.{name} is not a QEMU property"
        assert prop["type"] == qemu_props[name]["type"]
        assert prop.get("default-value") == qemu_props[name].get("default-value")


def test_qom_type_list_is_a_subset_of_qemus(daemons: tuple[RawQMP, RawQMP]) -> None:
    """Types vmd lists exist in QEMU with the same parent and abstractness."""
    ours, theirs = both(daemons, "qom-list-types", abstract=True)
    qemu_types = _by_name(theirs["return"])
    for name, entry in _by_name(ours["return"]).items():
        assert name in qemu_types, f"{name} is not a QEMU type"
        assert entry == qemu_types[name]


@pytest.mark.parametrize("implements", ["device", "isa-device", "chardev", "machine", "accel"])
def test_implements_filters_as_qemu(daemons: tuple[RawQMP, RawQMP], implements: str) -> None:
    ours, theirs = both(daemons, "qom-list-types", implements=implements)
    qemu_names = {entry["name"] for entry in theirs["return"]}
    our_names = {entry["name"] for entry in ours["return"]}
    assert our_names and our_names <= qemu_names


def test_command_line_options_are_qemus(daemons: tuple[RawQMP, RawQMP]) -> None:
    """Every option and parameter vmd lists, QEMU lists with the same type."""
    ours, theirs = both(daemons, "query-command-line-options")
    qemu_options = {o["option"]: _by_name(o["parameters"]) for o in theirs["return"]}
    for option in ours["return"]:
        assert option["option"] in qemu_options, option["option"]
        qemu_params = qemu_options[option["option"]]
        for param in option["parameters"]:
            assert param["name"] in qemu_params or option["option"] == "chardev", param
            if param["name"] in qemu_params:
                assert param["type"] == qemu_params[param["name"]]["type"], param


def test_probe_answers_without_a_guest(daemons: tuple[RawQMP, RawQMP]) -> None:
    """No migration (only the events capability libvirt sets), and no CPU
    model without a machine that runs one."""
    vmd, _qemu = daemons
    assert ask(vmd, "query-migrate-capabilities") == {"return": [{"capability": "events", "state": False}]}
    machines = [info["name"] for info in ask(vmd, "query-machines")["return"]]
    cpus = ask(vmd, "query-cpu-definitions")["return"]
    if machines == ["none"]:
        assert cpus == []


# -- nothing listed that vmd cannot do ----------------------------------------

def test_every_listed_device_can_be_created(daemons: tuple[RawQMP, RawQMP]) -> None:
    """qom-list-types' devices are the registry's, and each one builds."""
    vmd, _qemu = daemons
    listed = {entry["name"] for entry in ask(vmd, "qom-list-types", implements=TYPE_DEVICE)["return"]}
    ensure_registered()
    assert listed == {info.name for info in TYPES.list_types(TYPE_DEVICE)}
    for name in listed:
        if TYPES.is_a(name, TYPE_CPU):  # made by -cpu; checked below
            continue
        device = create_device({"driver": name}, user=False)
        assert device.type_name == name
        props = ask(vmd, "device-list-properties", typename=name)["return"]
        assert {p["name"] for p in props} == {p.name for p in TYPES.properties(name)}


def test_every_listed_cpu_model_is_accepted(daemons: tuple[RawQMP, RawQMP]) -> None:
    """query-cpu-definitions names the models -cpu takes, as QOM types."""
    vmd, _qemu = daemons
    models = ask(vmd, "query-cpu-definitions")["return"]
    cpu_types = {e["name"] for e in ask(vmd, "qom-list-types", implements=TYPE_CPU)["return"]}
    assert {m["typename"] for m in models} <= cpu_types
    for model in models:
        parse_args(["-M", "pc", "-cpu", model["name"]])
        assert model_name(model["name"])


def test_every_listed_machine_and_chardev_is_accepted(daemons: tuple[RawQMP, RawQMP]) -> None:
    """query-machines and the chardev types name what the parser and the
    chardev registry accept."""
    vmd, _qemu = daemons
    machines = ask(vmd, "query-machines")["return"]
    machine_types = {e["name"] for e in ask(vmd, "qom-list-types", implements="machine")["return"]}
    assert {f"{m['name']}-machine" for m in machines} <= machine_types
    if kvm_usable():
        assert {f"{m['name']}-machine" for m in machines} == machine_types
    for machine in machines:
        for name in filter(None, (machine["name"], machine.get("alias"))):
            parse_args(["-machine", name])
    from vmd.chardev.registry import backend_names
    chardevs = {e["name"] for e in ask(vmd, "qom-list-types", implements="chardev")["return"]}
    assert chardevs == {f"chardev-{kind}" for kind in backend_names()}


def test_qom_tree_lists_chardevs(tmp_path: Path) -> None:
    with running_vmd(tmp_path, "-chardev", "null,id=n0", "-chardev", "file,id=f0,path=/dev/null") as vmd, \
            RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        children = {e["name"]: e["type"] for e in ask(qmp, "qom-list", path="/chardevs")["return"]}
    assert children["n0"] == "child<chardev-null>"
    assert children["f0"] == "child<chardev-file>"


def test_user_objects_behave_as_qemus(daemons: tuple[RawQMP, RawQMP], tmp_path: Path) -> None:
    """object-add/object-del of secrets and RAM backends: the same errors,
    the same tree."""
    key = tmp_path / "key"
    key.write_text("secret")
    steps: list[tuple[str, dict[str, Any]]] = [
        ("object-add", {"qom-type": "secret", "id": "k0", "format": "raw", "file": str(key)}),
        ("qom-get", {"path": "/objects/k0", "property": "type"}),
        ("object-add", {"qom-type": "secret", "id": "k0", "data": "x"}),
        ("object-add", {"qom-type": "secret", "id": "k1"}),
        ("object-add", {"qom-type": "secret", "id": "k2", "data": "x", "file": str(key)}),
        ("object-add", {"qom-type": "secret", "id": "k3", "file": str(tmp_path / "missing")}),
        ("object-add", {"qom-type": "secret", "id": "k4", "data": "!!", "format": "base64"}),
        ("object-add", {"qom-type": "no-such-type", "id": "k5"}),
        ("object-del", {"id": "no-such-object"}),
        ("object-del", {"id": "k0"}),
        ("object-add", {"qom-type": "memory-backend-ram", "id": "m0", "size": 0}),
        ("object-add", {"qom-type": "memory-backend-ram", "id": "m1", "size": 1 << 20}),
        ("qom-get", {"path": "/objects/m1", "property": "type"}),
        ("object-del", {"id": "m1"}),
        ("qom-list", {"path": "/objects"}),
    ]
    for command, arguments in steps:
        ours, theirs = both(daemons, command, **arguments)
        assert ours == theirs, (command, arguments)


def test_only_the_events_migration_capability_can_be_set(tmp_path: Path) -> None:
    with running_vmd(tmp_path) as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        events_on = [{"capability": "events", "state": True}]
        assert ask(qmp, "migrate-set-capabilities", capabilities=events_on) == {"return": {}}
        refused = ask(qmp, "migrate-set-capabilities",
                      capabilities=[{"capability": "xbzrle", "state": True}, {"capability": "events", "state": False}])
        assert refused["error"]["desc"] == "Migration capability 'xbzrle' is not supported by vmd"
        assert ask(qmp, "query-migrate-capabilities") == {"return": events_on}
