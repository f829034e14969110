"""The table of command-line options vmd accepts, and the --help text.

Names, argument spellings and grouping follow ``qemu-system-x86_64 -h``.
The parser dispatches on :attr:`OptionSpec.name`; aliases map onto it.
"""

from __future__ import annotations

import vmd
from vmd.record import Record


class OptionSpec(Record):
    """One option: canonical name, aliases, argument (None: a flag), help."""

    __slots__ = ("name", "arg", "help", "group", "aliases")

    def __init__(self, name: str, arg: str | None, help: str, group: str,
                 aliases: tuple[str, ...] = ()) -> None:
        self.name = name
        self.arg = arg
        self.help = help
        self.group = group
        self.aliases = aliases

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


STANDARD = "Standard options"
BLOCK = "Block device options"
DISPLAY = "Display options"
CHARDEV = "Character device options"
BOOT = "Boot Image or Kernel specific"
DEBUG = "Debug/Expert options"

OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("h", None, "display this help and exit", STANDARD, ("help",)),
    OptionSpec("version", None, "display version information and exit", STANDARD),
    OptionSpec("machine", "[type=]name[,prop[=value][,...]]",
               "selects emulated machine ('-machine help' for list)", STANDARD, ("M",)),
    OptionSpec("cpu", "cpu", "select CPU model", STANDARD),
    OptionSpec("accel", "[accel=]accelerator[,prop[=value][,...]]",
               "select accelerator (kvm, tcg, ...)", STANDARD),
    OptionSpec("smp", "[[cpus=]n][,maxcpus=maxcpus][,sockets=sockets][,dies=dies]"
               "[,clusters=clusters][,cores=cores][,threads=threads]",
               "set the number of CPUs to 'n' and their topology", STANDARD),
    OptionSpec("m", "[size=]megs[,slots=n,maxmem=size]",
               "configure guest RAM (bare number: MiB; suffixes k, M, G, T, P, E)",
               STANDARD),
    OptionSpec("name", "string1[,process=string2][,debug-threads=on|off]",
               "set the name of the guest", STANDARD),
    OptionSpec("device", "driver[,prop[=value][,...]]",
               "add device (based on driver) with properties; also JSON", STANDARD),
    OptionSpec("blockdev", "[driver=]driver[,node-name=N][,prop=value...]",
               "configure a block backend node (dotted keys or JSON)", BLOCK),
    OptionSpec("drive", "[file=file][,if=none|virtio][,format=f][,id=name][,node-name=n][,...]",
               "use 'file' as a drive image (a BlockBackend named 'id')", BLOCK),
    OptionSpec("display", "none", "select display backend type (vmd: only 'none')", DISPLAY),
    OptionSpec("nographic", None, "disable graphical output", DISPLAY),
    OptionSpec("vga", "none", "select video card type (vmd: only 'none')", DISPLAY),
    OptionSpec("chardev", "backend,id=id[,prop=value...]",
               "create a character device (null, socket, file, pty, stdio, ...)", CHARDEV),
    OptionSpec("kernel", "bzImage", "use 'bzImage' as kernel image", BOOT),
    OptionSpec("append", "cmdline", "use 'cmdline' as kernel command line", BOOT),
    OptionSpec("initrd", "file", "use 'file' as initial ram disk", BOOT),
    OptionSpec("serial", "dev", "redirect the serial port to char device 'dev'", DEBUG),
    OptionSpec("monitor", "dev", "redirect the monitor to char device 'dev'", DEBUG),
    OptionSpec("qmp", "dev", "like -monitor but opens in 'control' mode", DEBUG),
    OptionSpec("qmp-pretty", "dev", "like -qmp but uses pretty JSON formatting", DEBUG),
    OptionSpec("mon", "[chardev=]name[,mode=readline|control][,pretty[=on|off]]",
               "attach a monitor to an existing chardev", DEBUG),
    OptionSpec("pidfile", "file", "write PID to 'file'", DEBUG),
    OptionSpec("S", None, "freeze CPU at startup (use 'cont' to start execution)", DEBUG),
    OptionSpec("D", "logfile", "output log to logfile (default stderr)", DEBUG),
    OptionSpec("d", "item1,...", "enable logging of specified items (use '-d help' for a list of log items)",
               DEBUG),
    OptionSpec("trace", "[[enable=]<pattern>][,events=<file>][,file=<file>]",
               "specify tracing options ('-trace help' lists the events)", DEBUG),
    OptionSpec("stop-grace", "seconds",
               "on SIGTERM/SIGINT give a running guest this long to power down (default 60)", DEBUG),
    OptionSpec("qtest", "dev", "serve QEMU's qtest protocol on char device 'dev' (with -accel qtest)",
               DEBUG),
    OptionSpec("enable-kvm", None, "enable KVM full virtualization support", DEBUG),
    OptionSpec("no-reboot", None, "exit instead of rebooting", DEBUG),
    OptionSpec("no-shutdown", None, "stop before shutdown", DEBUG),
    OptionSpec("daemonize", None, "daemonize vmd after initializing", DEBUG),
    OptionSpec("nodefaults", None, "don't create default devices", DEBUG),
    OptionSpec("uuid", "%08x-%04x-%04x-%04x-%012x", "specify machine UUID", STANDARD),
    OptionSpec("rtc", "[base=utc][,clock=host][,driftfix=none]",
               "set the RTC base and clock (vmd: UTC on the host clock only)", STANDARD),
    OptionSpec("boot", "[strict=on|off]",
               "boot options (vmd boots only -kernel: no order or menu)", STANDARD),
    OptionSpec("overcommit", "[mem-lock=on|off]", "lock guest and vmd memory (mlockall)", STANDARD),
    OptionSpec("add-fd", "fd=fd,set=set[,opaque=opaque]",
               "add 'fd' to fd 'set' (opened later as /dev/fdset/set)", STANDARD),
    OptionSpec("object", "TYPENAME[,PROP1=VALUE1,...]",
               "create a new object of type TYPENAME (vmd: secret); also JSON", STANDARD),
    OptionSpec("audiodev", "driver=none,id=id", "accepted for compatibility: vmd has no sound",
               STANDARD),
    OptionSpec("msg", "[timestamp=on|off][,guest-name=on|off]",
               "control error message format (timestamp=on: UTC time on each line)", DEBUG),
    OptionSpec("sandbox", "on|off[,elevateprivileges=deny][,...]",
               "accepted; vmd has no seccomp filter, only elevateprivileges=deny is honoured "
               "(no_new_privs)", DEBUG),
    OptionSpec("no-user-config", None,
               "do not load default user-provided config files at startup "
               "(vmd reads none)", DEBUG),
)

GROUPS = (STANDARD, BLOCK, DISPLAY, CHARDEV, BOOT, DEBUG)

_BY_NAME = {alias: spec for spec in OPTIONS for alias in spec.names}


def find_option(name: str) -> OptionSpec | None:
    """Look an option up by any of its names, without leading dashes."""
    return _BY_NAME.get(name)


def usage_line(spec: OptionSpec) -> str:
    """``-name arg`` for one option (first spelling only)."""
    return f"-{spec.name}" + (f" {spec.arg}" if spec.arg else "")


def _format_entry(spec: OptionSpec) -> str:
    """One help entry, laid out like QEMU's: column 17, or a new line."""
    if spec.name == "h":
        head = "-h or -help"
    elif spec.aliases:
        head = f"-{spec.name}|-{'|-'.join(spec.aliases)}" + (f" {spec.arg}" if spec.arg else "")
    else:
        head = usage_line(spec)
    if len(head) < 16:
        return f"{head:<16}{spec.help}"
    return f"{head}\n{'':16}{spec.help}"


def help_text() -> str:
    """The full --help output."""
    lines = [version_text().rstrip("\n"), "usage: vmd [options]", ""]
    for group in GROUPS:
        lines.append(f"{group}:")
        lines.extend(_format_entry(spec) for spec in OPTIONS if spec.group == group)
        lines.append("")
    lines.append("Options may also be written with two dashes (--qmp).")
    return "\n".join(lines) + "\n"


def version_text() -> str:
    """The -version output."""
    return f"vmd version {vmd.__version__} (QEMU-compatible QMP)\n"
