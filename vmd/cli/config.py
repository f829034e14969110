"""The configuration the rest of vmd reads, as produced by the CLI parser.

Everything here is plain data: the parser fills it in from argv without
touching files, sockets or the environment. Every vmd start imports this
module before its first reply, so the records are plain classes
(:class:`vmd.record.Record`), not dataclasses.
"""

from __future__ import annotations

from typing import Any

from vmd.record import Record

#: Machine type used when no -machine/-M gives one.  QEMU defaults to 'pc';
#: vmd defaults to 'none' (a storage daemon needs no /dev/kvm).
DEFAULT_MACHINE = "none"


class MachineClass(Record):
    """A machine type vmd can build (QEMU's MachineClass): what ``-machine
    help``, ``query-machines`` and the QOM type list report about it.

    ``qom_parent`` is the QOM parent of ``NAME-machine`` (QEMU's:
    ``generic-pc-machine`` for pc).
    """

    __slots__ = ("name", "desc", "alias", "cpu_max", "default_cpu_type",
                 "default_ram_id", "qom_parent")

    def __init__(self, name: str, desc: str, *, alias: str | None = None, cpu_max: int = 1,
                 default_cpu_type: str | None = None, default_ram_id: str = "ram",
                 qom_parent: str = "machine") -> None:
        self.name = name
        self.desc = desc
        self.alias = alias
        self.cpu_max = cpu_max
        self.default_cpu_type = default_cpu_type
        self.default_ram_id = default_ram_id
        self.qom_parent = qom_parent

    @property
    def is_default(self) -> bool:
        """Whether ``-machine`` may be left out for it (vmd: ``none``)."""
        return self.name == DEFAULT_MACHINE


#: Machine types vmd can build.  'pc' (pc-i440fx-7.2) runs on KVM only.
MACHINE_CLASSES: tuple[MachineClass, ...] = (
    MachineClass("none", "empty machine"),
    MachineClass("pc-i440fx-7.2", "Standard PC (i440FX + PIIX, 1996)", alias="pc", cpu_max=255,
                 default_cpu_type="qemu64-x86_64-cpu", default_ram_id="pc.ram",
                 qom_parent="generic-pc-machine"),
)

#: ``-machine help``: every name and alias, with QEMU's descriptions.
SUPPORTED_MACHINES: dict[str, str] = {
    **{m.name: m.desc for m in MACHINE_CLASSES},
    **{m.alias: f"{m.desc} (alias of {m.name})" for m in MACHINE_CLASSES if m.alias},
}


def machine_class(name: str) -> MachineClass | None:
    """The machine type called ``name`` or aliased so."""
    return next((m for m in MACHINE_CLASSES if name in (m.name, m.alias)), None)


#: RAM size when -m is absent or zero (QEMU's default_ram_size for x86).
DEFAULT_RAM_BYTES = 128 << 20


class ChardevConfig(Record):
    """One character device, from -chardev or a -serial/-monitor/-qmp shorthand.

    ``options`` holds the remaining QemuOpts keys as the user wrote them
    (strings; the last of a repeated key wins); see
    :func:`vmd.cli.chardev.socket_flags` for server/wait with CLI defaults.
    """

    __slots__ = ("id", "backend", "options")

    def __init__(self, id: str, backend: str, options: dict[str, str]) -> None:
        self.id = id
        self.backend = backend
        self.options = options


class MonitorConfig(Record):
    """A monitor on a chardev: 'control' is QMP, 'readline' is HMP."""

    __slots__ = ("chardev", "mode", "pretty")

    def __init__(self, chardev: str, mode: str = "readline", pretty: bool = False) -> None:
        self.chardev = chardev
        self.mode = mode
        self.pretty = pretty


class SmpConfig(Record):
    """CPU topology after QEMU's rules for filling in omitted values."""

    __slots__ = ("cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus")

    def __init__(self, *, cpus: int = 1, sockets: int = 1, dies: int = 1, clusters: int = 1,
                 cores: int = 1, threads: int = 1, maxcpus: int = 1) -> None:
        self.cpus = cpus
        self.sockets = sockets
        self.dies = dies
        self.clusters = clusters
        self.cores = cores
        self.threads = threads
        self.maxcpus = maxcpus


class _OptionTree(Record):
    """An option given as keyval/QemuOpts (string leaves) or as JSON."""

    __slots__ = ("options", "from_json")

    def __init__(self, options: dict[str, Any], from_json: bool = False) -> None:
        self.options = options
        self.from_json = from_json


class BlockdevConfig(_OptionTree):
    """A -blockdev tree.

    With ``from_json`` false every leaf is a string (keyval syntax) and the
    block layer must convert leaves with the QAPI schema, as QEMU's keyval
    input visitor does; with it true the values are already JSON-typed.
    """

    __slots__ = ()


class DriveConfig(Record):
    """A -drive (vmd.cli.drive): a named BlockBackend over a node tree.

    ``options`` holds the node keys as written (flat, dotted, string
    values) for :mod:`vmd.block.drive` to open; the rest are the drive's
    and its BlockBackend's settings, which the parser fills in one by one.
    """

    __slots__ = ("id", "file", "interface", "unit", "media", "read_only", "copy_on_read",
                 "writeback", "aio", "detect_zeroes", "werror", "rerror", "throttling", "stats", "options")

    def __init__(self, id: str | None, file: str | None = None) -> None:
        self.id = id
        self.file = file
        self.interface: str | None = None
        self.unit: int | None = None
        self.media = "disk"
        self.read_only = False
        self.copy_on_read = False
        self.writeback = True
        self.aio: str | None = None
        self.detect_zeroes: str | None = None
        self.werror: str | None = None
        self.rerror: str | None = None
        self.throttling: dict[str, str] = {}
        #: ``stats-account-invalid``, ``stats-account-failed`` and
        #: ``stats-intervals.N``, as written (the BlockBackend's accounting).
        self.stats: dict[str, str] = {}
        self.options: dict[str, str] = {}


class DeviceConfig(_OptionTree):
    """A -device: QemuOpts (string values, ``driver`` and maybe ``id``) or JSON."""

    __slots__ = ()


class ObjectConfig(_OptionTree):
    """An -object: keyval (string leaves, ``qom-type`` implied) or JSON."""

    __slots__ = ()


class FdSetEntry(Record):
    """One ``-add-fd``: ``fd`` (inherited, open) belongs to fd set ``fdset``."""

    __slots__ = ("fdset", "fd", "opaque")

    def __init__(self, fdset: int, fd: int, opaque: str | None = None) -> None:
        self.fdset = fdset
        self.fd = fd
        self.opaque = opaque


class Config:
    """The whole parsed command line.

    A plain class: the parser assigns attributes one option at a time.
    Scalars start as the class attributes below; ``__init__`` gives each
    configuration its own lists and dicts.
    """

    name: str | None = None
    process_name: str | None = None
    debug_threads: bool = False
    start_paused: bool = False
    daemonize: bool = False
    pidfile: str | None = None
    nodefaults: bool = False
    display: str = "none"
    nographic: bool = False
    no_shutdown: bool = False
    no_reboot: bool = False
    memory_bytes: int = DEFAULT_RAM_BYTES
    memory_slots: int | None = None
    memory_maxmem: int | None = None
    smp: SmpConfig = SmpConfig()
    cpu: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    logfile: str | None = None
    stop_grace: float | None = None
    #: ``-qtest``: the chardev spec of the qtest protocol (vmd.qtest).
    qtest: str | None = None
    # Options management tools set (vmd.cli.system_opts).
    uuid: str | None = None
    mem_lock: bool = False
    msg_timestamp: bool = False
    no_new_privs: bool = False

    def __init__(self) -> None:
        self.machine: dict[str, str] = {"type": DEFAULT_MACHINE}
        self.accels: list[dict[str, str]] = []
        self.log_items: list[str] = []       # -d, besides trace:
        # -trace/-d trace: in order: (where, "enable", pattern) or (where, "events", file)
        self.trace: list[tuple[str, str, str]] = []
        self.chardevs: list[ChardevConfig] = []
        self.monitors: list[MonitorConfig] = []
        self.serials: list[str] = []
        self.blockdevs: list[BlockdevConfig] = []
        self.drives: list[DriveConfig] = []
        self.devices: list[DeviceConfig] = []
        self.warnings: list[str] = []
        self.fdsets: list[FdSetEntry] = []
        self.objects: list[ObjectConfig] = []

    @property
    def memory_mib(self) -> int:
        """Guest RAM in MiB, rounded down."""
        return self.memory_bytes >> 20

    @property
    def dump_guest_core(self) -> bool:
        """``-machine dump-guest-core`` (on unless switched off, as in QEMU):
        whether guest RAM goes into vmd's core files."""
        return self.machine.get("dump-guest-core", "on") in ("on", "yes", "true", "y")

    @property
    def accel(self) -> str | None:
        """The first accelerator asked for (QEMU tries them in order)."""
        return self.accels[0].get("accel") if self.accels else None

    def chardev(self, chardev_id: str) -> ChardevConfig | None:
        """Look up a chardev by id."""
        return next((c for c in self.chardevs if c.id == chardev_id), None)


class _TextRequest(Record):
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class HelpRequest(_TextRequest):
    """The command line asked for help; print ``text`` and exit 0."""

    __slots__ = ()


class VersionRequest(_TextRequest):
    """The command line asked for the version; print ``text`` and exit 0."""

    __slots__ = ()
