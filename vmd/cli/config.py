"""The configuration the rest of vmd reads, as produced by the CLI parser.

Everything here is plain data: the parser fills it in from argv without
touching files, sockets or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Machine type used when no -machine/-M gives one.  QEMU defaults to 'pc';
#: vmd defaults to 'none' (a storage daemon needs no /dev/kvm).
DEFAULT_MACHINE = "none"


@dataclass(frozen=True)
class MachineClass:
    """A machine type vmd can build (QEMU's MachineClass): what ``-machine
    help``, ``query-machines`` and the QOM type list report about it."""

    name: str
    desc: str
    alias: str | None = None
    cpu_max: int = 1
    default_cpu_type: str | None = None
    default_ram_id: str = "ram"
    #: QOM parent of ``NAME-machine`` (QEMU's: ``generic-pc-machine`` for pc).
    qom_parent: str = "machine"

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


@dataclass
class ChardevConfig:
    """One character device, from -chardev or a -serial/-monitor/-qmp shorthand.

    ``options`` holds the remaining QemuOpts keys as the user wrote them
    (strings; the last of a repeated key wins); see
    :func:`vmd.cli.chardev.socket_flags` for server/wait with CLI defaults.
    """

    id: str
    backend: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class MonitorConfig:
    """A monitor on a chardev: 'control' is QMP, 'readline' is HMP."""

    chardev: str
    mode: str = "readline"
    pretty: bool = False


@dataclass
class SmpConfig:
    """CPU topology after QEMU's rules for filling in omitted values."""

    cpus: int = 1
    sockets: int = 1
    dies: int = 1
    clusters: int = 1
    cores: int = 1
    threads: int = 1
    maxcpus: int = 1


@dataclass
class BlockdevConfig:
    """A -blockdev tree.

    With ``from_json`` false every leaf is a string (keyval syntax) and the
    block layer must convert leaves with the QAPI schema, as QEMU's keyval
    input visitor does; with it true the values are already JSON-typed.
    """

    options: dict[str, Any]
    from_json: bool = False


@dataclass
class DriveConfig:
    """A -drive (vmd.cli.drive): a named BlockBackend over a node tree.

    ``options`` holds the node keys as written (flat, dotted, string
    values) for :mod:`vmd.block.drive` to open; the rest are the drive's
    and its BlockBackend's settings.
    """

    id: str | None
    file: str | None = None
    interface: str | None = None
    unit: int | None = None
    media: str = "disk"
    read_only: bool = False
    copy_on_read: bool = False
    writeback: bool = True
    aio: str | None = None
    detect_zeroes: str | None = None
    werror: str | None = None
    rerror: str | None = None
    throttling: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class DeviceConfig:
    """A -device: QemuOpts (string values, ``driver`` and maybe ``id``) or JSON."""

    options: dict[str, Any]
    from_json: bool = False


@dataclass
class ObjectConfig:
    """An -object: keyval (string leaves, ``qom-type`` implied) or JSON."""

    options: dict[str, Any]
    from_json: bool = False


@dataclass
class FdSetEntry:
    """One ``-add-fd``: ``fd`` (inherited, open) belongs to fd set ``fdset``."""

    fdset: int
    fd: int
    opaque: str | None = None


@dataclass
class Config:
    """The whole parsed command line."""

    name: str | None = None
    process_name: str | None = None
    debug_threads: bool = False
    start_paused: bool = False
    daemonize: bool = False
    pidfile: str | None = None
    machine: dict[str, str] = field(default_factory=lambda: {"type": DEFAULT_MACHINE})
    nodefaults: bool = False
    display: str = "none"
    nographic: bool = False
    no_shutdown: bool = False
    no_reboot: bool = False
    memory_bytes: int = DEFAULT_RAM_BYTES
    memory_slots: int | None = None
    memory_maxmem: int | None = None
    smp: SmpConfig = field(default_factory=SmpConfig)
    cpu: str | None = None
    accels: list[dict[str, str]] = field(default_factory=list)
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    logfile: str | None = None
    log_items: list[str] = field(default_factory=list)      # -d, besides trace:
    # -trace/-d trace: in order: (where, "enable", pattern) or (where, "events", file)
    trace: list[tuple[str, str, str]] = field(default_factory=list)
    stop_grace: float | None = None
    chardevs: list[ChardevConfig] = field(default_factory=list)
    monitors: list[MonitorConfig] = field(default_factory=list)
    serials: list[str] = field(default_factory=list)
    blockdevs: list[BlockdevConfig] = field(default_factory=list)
    drives: list[DriveConfig] = field(default_factory=list)
    #: ``-qtest``: the chardev spec of the qtest protocol (vmd.qtest).
    qtest: str | None = None
    devices: list[DeviceConfig] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Options management tools set (vmd.cli.system_opts).
    uuid: str | None = None
    mem_lock: bool = False
    msg_timestamp: bool = False
    no_new_privs: bool = False
    fdsets: list[FdSetEntry] = field(default_factory=list)
    objects: list[ObjectConfig] = field(default_factory=list)

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


@dataclass
class HelpRequest:
    """The command line asked for help; print ``text`` and exit 0."""

    text: str


@dataclass
class VersionRequest:
    """The command line asked for the version; print ``text`` and exit 0."""

    text: str
