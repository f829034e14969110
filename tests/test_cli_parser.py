"""parse_args: options, shorthand expansion, error messages, --help."""

import shutil
import subprocess

import pytest

from vmd.cli import (
    ChardevConfig,
    CliError,
    Config,
    HelpRequest,
    MonitorConfig,
    VersionRequest,
    parse_args,
)
from vmd.cli.chardev import parse_chardev_compat, socket_flags
from vmd.cli.config import DEFAULT_MACHINE
from vmd.cli.errors import OptionError
from vmd.cli.options import OPTIONS


def cfg(*argv: str) -> Config:
    result = parse_args(list(argv))
    assert isinstance(result, Config)
    return result


def error(*argv: str) -> str:
    with pytest.raises(CliError) as info:
        parse_args(list(argv))
    return str(info.value)


def test_defaults():
    config = cfg()
    assert config.machine == {"type": DEFAULT_MACHINE}
    assert config.memory_mib == 128
    assert config.chardevs == [] and config.monitors == [] and config.serials == []
    assert config.display == "none" and not config.start_paused


def test_flags():
    config = cfg("-S", "-daemonize", "-nodefaults", "-nographic", "-no-shutdown",
                 "-no-reboot", "-pidfile", "/run/x.pid", "-D", "/tmp/log")
    assert config.start_paused and config.daemonize and config.nodefaults
    assert config.nographic and config.no_shutdown and config.no_reboot
    assert config.pidfile == "/run/x.pid" and config.logfile == "/tmp/log"


def test_two_dashes():
    assert cfg("--S", "--name", "vm").name == "vm"


def test_help_and_version():
    assert isinstance(parse_args(["--help"]), HelpRequest)
    assert isinstance(parse_args(["-help"]), HelpRequest)
    assert isinstance(parse_args(["-h", "-foo"]), HelpRequest)
    version = parse_args(["-version"])
    assert isinstance(version, VersionRequest)
    assert version.text.startswith("vmd version ") and "QEMU-compatible QMP" in version.text


def test_help_lists_every_option():
    text = parse_args(["-h"]).text
    for spec in OPTIONS:
        assert f"-{spec.name}" in text and spec.help in text


def test_machine_help():
    result = parse_args(["-M", "help"])
    assert isinstance(result, HelpRequest) and "none" in result.text


def test_name():
    config = cfg("-name", "myvm,debug-threads=on,process=p")
    assert (config.name, config.debug_threads, config.process_name) == ("myvm", True, "p")


def test_machine_merges():
    assert cfg("-M", "none", "-machine", "dump-guest-core=off").machine == {
        "type": "none", "dump-guest-core": "off"}


@pytest.mark.parametrize(("arg", "mib"), [("512", 512), ("1G", 1024), ("size=2G", 2048),
                                          ("0", 128), ("1G,size=2G", 2048)])
def test_memory(arg, mib):
    assert cfg("-m", arg).memory_mib == mib


def test_memory_slots_maxmem():
    config = cfg("-m", "1G,slots=2,maxmem=4G")
    assert (config.memory_slots, config.memory_maxmem) == (2, 4 << 30)


@pytest.mark.parametrize(("argv", "expected"), [
    (["-smp", "4"], (4, 1, 4, 1, 4)),
    (["-smp", "cpus=2,maxcpus=8"], (2, 1, 8, 1, 8)),
    (["-smp", "sockets=2,cores=2,threads=2"], (8, 2, 2, 2, 8)),
    (["-smp", "4", "-smp", "sockets=2"], (4, 2, 2, 1, 4)),
])
def test_smp(argv, expected):
    smp = cfg(*argv).smp
    assert (smp.cpus, smp.sockets, smp.cores, smp.threads, smp.maxcpus) == expected


def test_accel_and_cpu():
    config = cfg("-accel", "kvm,thread=single", "-enable-kvm", "-cpu", "host,+x2apic")
    assert config.accels == [{"accel": "kvm", "thread": "single"}, {"accel": "kvm"}]
    assert config.accel == "kvm" and config.cpu == "host,+x2apic"


def test_kernel_options():
    config = cfg("-kernel", "/k", "-initrd", "/i", "-append", "console=ttyS0 a,b")
    assert (config.kernel, config.initrd, config.append) == ("/k", "/i", "console=ttyS0 a,b")


def test_chardev():
    config = cfg("-chardev", "socket,id=x,path=/tmp/s,server=on,wait=off")
    assert config.chardevs == [ChardevConfig("x", "socket",
                                             {"path": "/tmp/s", "server": "on", "wait": "off"})]


def test_short_form_bool_warns_but_works():
    config = cfg("-chardev", "socket,id=x,path=/s,server,nowait")
    assert config.chardevs[0].options == {"path": "/s", "server": "on", "wait": "off"}
    assert len(config.warnings) == 2


def test_qmp_unix_shorthand():
    config = cfg("-qmp", "unix:/tmp/q.sock,server=on,wait=off")
    assert config.chardevs == [ChardevConfig(
        "compat_monitor0", "socket", {"path": "/tmp/q.sock", "server": "on", "wait": "off"})]
    assert config.monitors == [MonitorConfig("compat_monitor0", "control", False)]


def test_qmp_tcp_and_numbering_shared_with_monitor():
    config = cfg("-monitor", "stdio", "-qmp", "tcp:127.0.0.1:4444,server=on,wait=off",
                 "-qmp-pretty", "unix:/p,server=on")
    assert [c.id for c in config.chardevs] == [
        "compat_monitor0", "compat_monitor1", "compat_monitor2"]
    assert config.chardevs[1].options == {"host": "127.0.0.1", "port": "4444",
                                          "server": "on", "wait": "off"}
    assert config.monitors == [MonitorConfig("compat_monitor0", "readline", False),
                               MonitorConfig("compat_monitor1", "control", False),
                               MonitorConfig("compat_monitor2", "control", True)]


def test_monitor_none():
    assert cfg("-monitor", "none").monitors == []


def test_mon_on_chardev():
    config = cfg("-mon", "chardev=c,mode=control,pretty=on", "-chardev", "null,id=c")
    assert config.monitors == [MonitorConfig("c", "control", True)]
    assert cfg("-chardev", "null,id=c", "-mon", "c").monitors == [MonitorConfig("c")]


def test_serials():
    config = cfg("-serial", "null", "-serial", "none", "-serial", "file:/tmp/f",
                 "-chardev", "pty,id=p", "-serial", "chardev:p")
    assert config.serials == ["serial0", "serial1", "p"]
    assert config.chardev("serial1") == ChardevConfig("serial1", "file", {"path": "/tmp/f"})


def test_serial_mon_stdio_adds_monitor():
    config = cfg("-serial", "mon:stdio")
    assert config.chardevs == [ChardevConfig("serial0", "stdio", {"mux": "on", "signal": "off"})]
    assert config.monitors == [MonitorConfig("serial0", "readline")]


def test_blockdev_and_device():
    config = cfg("-blockdev", "qcow2,node-name=d,file.driver=file,file.filename=/a",
                 "-blockdev", '{"driver": "null-co", "node-name": "n", "size": 512}',
                 "-device", "virtio-blk-pci,drive=d,id=vd0",
                 "-device", '{"driver": "virtio-rng-pci"}')
    assert config.blockdevs[0].options["file"] == {"driver": "file", "filename": "/a"}
    assert not config.blockdevs[0].from_json
    assert config.blockdevs[1].from_json and config.blockdevs[1].options["size"] == 512
    assert config.devices[0].options == {"driver": "virtio-blk-pci", "drive": "d", "id": "vd0"}
    assert config.devices[1].from_json


@pytest.mark.parametrize(("spec", "backend", "options"), [
    ("stdio", "stdio", {}),
    ("null", "null", {}),
    ("pty", "pty", {}),
    ("unix:/p", "socket", {"path": "/p"}),
    ("unix:/a,,b,server=on", "socket", {"path": "/a,b", "server": "on"}),
    ("tcp::4444,server=on", "socket", {"host": "", "port": "4444", "server": "on"}),
    ("telnet:localhost:23", "socket", {"host": "localhost", "port": "23", "telnet": "on"}),
    ("udp:1.2.3.4:5@:6", "udp", {"host": "1.2.3.4", "port": "5",
                                  "localaddr": "", "localport": "6"}),
    ("file:/x", "file", {"path": "/x"}),
    ("pipe:/x", "pipe", {"path": "/x"}),
    ("/dev/ttyS0", "serial", {"path": "/dev/ttyS0"}),
    ("mon:tcp::1", "socket", {"mux": "on", "host": "", "port": "1"}),
])
def test_compat_strings(spec, backend, options):
    assert parse_chardev_compat("l", spec) == ChardevConfig("l", backend, options)


@pytest.mark.parametrize(("options", "flags"), [
    ({}, (False, False)),
    ({"server": "on"}, (True, True)),
    ({"server": "on", "wait": "off"}, (True, False)),
    ({"server": "yes", "wait": "no"}, (True, False)),
])
def test_socket_flags(options, flags):
    assert socket_flags(ChardevConfig("s", "socket", options)) == flags


def test_socket_flags_errors():
    with pytest.raises(OptionError, match="Parameter 'server' expects 'on' or 'off'"):
        socket_flags(ChardevConfig("s", "socket", {"server": "maybe"}))
    with pytest.raises(OptionError, match="incompatible with socket in client connect mode"):
        socket_flags(ChardevConfig("s", "socket", {"wait": "off"}))


SIZE_HINT = ("\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-"
             "\nand exabytes, respectively.")

# (argv, message); messages identical to QEMU 7.2 after the program name
QEMU_ERRORS = [
    (["-foo"], "vmd: -foo: invalid option"),
    (["--foo"], "vmd: --foo: invalid option"),
    (["-qmp"], "vmd: -qmp: requires an argument"),
    (["--qmp"], "vmd: --qmp: requires an argument"),
    (["-m", "foo"], "vmd: -m foo: Parameter 'size' expects a non-negative number below 2^64"
     + SIZE_HINT),
    (["-m", "16E"], "vmd: -m 16E: Value '16E' is out of range for parameter 'size'"),
    (["-m", "size=1G,foo=2"], "vmd: -m size=1G,foo=2: Invalid parameter 'foo'"),
    (["-m", "1G,slots=x"], "vmd: -m 1G,slots=x: Parameter 'slots' expects a number"),
    (["-chardev", "null,id=a", "-chardev", "null,id=a"],
     "vmd: -chardev null,id=a: Duplicate ID 'a' for chardev"),
    (["-chardev", "null"], "vmd: -chardev null: chardev: no id specified"),
    (["-chardev", "foo,id=x"], "vmd: -chardev foo,id=x: 'foo' is not a valid char driver name"),
    (["-chardev", "null,id=x,=3"], "vmd: -chardev null,id=x,=3: Invalid parameter ''"),
    (["-chardev", "null,id=1x"], ("vmd: -chardev null,id=1x: Parameter 'id' expects an "
     "identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.")),
    (["-chardev", "null,id=x,logappend=maybe"],
     "vmd: -chardev null,id=x,logappend=maybe: Parameter 'logappend' expects 'on' or 'off'"),
    (["-chardev", "null,id=x,width=abc"],
     "vmd: -chardev null,id=x,width=abc: Parameter 'width' expects a number"),
    (["-name", "foo,debug-threads=maybe"],
     "vmd: -name foo,debug-threads=maybe: Parameter 'debug-threads' expects 'on' or 'off'"),
    (["-name", "foo,bar=1"], "vmd: -name foo,bar=1: Invalid parameter 'bar'"),
    (["-blockdev", "driver=qcow2,x"],
     "vmd: -blockdev driver=qcow2,x: Expected '=' after parameter 'x'"),
    (["-blockdev", ",driver=x"], "vmd: -blockdev ,driver=x: Invalid parameter ''"),
    (["-blockdev", "driver=qcow2,file.driver=file,file=x"],
     ("vmd: -blockdev driver=qcow2,file.driver=file,file=x: "
     "Parameters 'file.*' used inconsistently")),
    (["-blockdev", "a.1=x"], "vmd: -blockdev a.1=x: Parameter 'a.0' missing"),
    (["-qmp", "foo"], ("vmd: -qmp foo: 'foo' is not a valid char driver\n"
     "vmd: -qmp foo: parse error: foo")),
    (["-qmp", "tcp:localhost"], "vmd: -qmp tcp:localhost: parse error: tcp:localhost"),
    (["-serial", "foo:bar"], ("vmd: -serial foo:bar: 'foo:bar' is not a valid char driver\n"
     "vmd: -serial foo:bar: could not connect serial device to character backend 'foo:bar'")),
    (["-serial", "chardev:nope"], ("vmd: -serial chardev:nope: could not connect serial "
     "device to character backend 'chardev:nope'")),
    (["-mon", "chardev=nope"], 'vmd: -mon chardev=nope: chardev "nope" not found'),
    (["-mon", "chardev=x,mode=bad"],
     "vmd: -mon chardev=x,mode=bad: Parameter 'mode' does not accept value 'bad'"),
    (["-mon", "chardev=x,foo=1"], "vmd: -mon chardev=x,foo=1: Invalid parameter 'foo'"),
    (["-chardev", "null,id=x", "-mon", "chardev=x,pretty=on,mode=readline"],
     ("vmd: -mon chardev=x,pretty=on,mode=readline: "
     "'pretty' is not compatible with HMP monitors")),
    (["-qmp", "stdio", "-qmp", "stdio"],
     "vmd: -qmp stdio: cannot use stdio by multiple character devices"),
    (["-display", "foo"], "vmd: -display foo: Parameter 'type' does not accept value 'foo'"),
    (["-display", "none,foo=1"], "vmd: -display none,foo=1: Parameter 'foo' is unexpected"),
    (["-smp", "foo"], "vmd: Parameter 'smp.cpus' expects integer"),
    (["-smp", "2,foo=1"], "vmd: Parameter 'smp.foo' is unexpected"),
    (["-smp", "2,sockets=3"], ("vmd: Invalid CPU topology: product of the hierarchy must "
     "match maxcpus: sockets (3) * cores (0) * threads (1) != maxcpus (2)")),
    (["-smp", "4,maxcpus=2"], ("vmd: Invalid CPU topology: maxcpus must be equal to or "
     "greater than smp: sockets (1) * cores (2) * threads (1) == maxcpus (2) < smp_cpus (4)")),
]


@pytest.mark.parametrize(("argv", "message"), QEMU_ERRORS)
def test_errors(argv, message):
    assert error(*argv) == message


def test_vmd_specific_errors():
    assert error("-M", "foo") == ("vmd: -M foo: unsupported machine type\n"
                                  "Use -machine help to list supported machines")
    assert error("-M", "foo", "-M", "q35") == ("vmd: -M q35: unsupported machine type\n"
                                               "Use -machine help to list supported machines")
    only_kvm = "vmd: invalid accelerator tcg: vmd runs guests on KVM only (machine 'pc')"
    assert error("-M", "pc", "-accel", "tcg") == only_kvm
    assert error("-machine", "pc,accel=tcg:kvm") == only_kvm
    assert error("-machine", "none,accel=foo") == "vmd: invalid accelerator foo"
    assert cfg("-machine", "pc,accel=kvm:tcg").machine == {"type": "pc", "accel": "kvm:tcg"}
    assert "not supported by vmd" in error("-display", "gtk")
    assert error("disk.img").startswith("vmd: disk.img: disk image arguments")
    assert error("-smp", "0").startswith("vmd: Invalid CPU topology")


def test_machine_type_can_be_fixed_later():
    assert cfg("-M", "foo", "-M", "none").machine["type"] == "none"


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize(("argv", "message"), QEMU_ERRORS)
def test_same_message_as_qemu(argv, message):
    base = [QEMU, "-nodefaults", "-display", "none", "-M", "none"]
    proc = subprocess.run(base + argv, capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode != 0
    qemu_lines = [line.removeprefix("qemu-system-x86_64: ") for line in
                  proc.stderr.splitlines() if "warning:" not in line]
    vmd_lines = [line.removeprefix("vmd: ") for line in message.splitlines()]
    assert qemu_lines == vmd_lines
