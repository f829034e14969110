"""``-drive``: QEMU's legacy block option, as blockdev.c's drive_new reads it.

One ``-drive`` names a BlockBackend (``id``, or ``none0``, ``virtio1``, ...
when absent) over a node tree opened from ``file`` and the driver options,
and with ``if=virtio`` also adds a ``virtio-blk-pci`` device for it. This
module only reads the option text (pure, like the rest of the parser); the
tree is opened at start-up by :mod:`vmd.block.drive`.

What happens to the keys, in QEMU's order:

* legacy spellings are renamed (``readonly`` -> ``read-only``, ``bps`` ->
  ``throttling.bps-total``, ...);
* ``cache=MODE`` becomes ``cache.writeback``, ``cache.direct`` and
  ``cache.no-flush``, each unless given on its own;
* the drive keys (``if``, ``bus``, ``unit``, ``index``, ``media``,
  ``file``, ``read-only``, ``copy-on-read``, ``werror``, ``rerror``) and
  the BlockBackend keys (``format``, ``aio``, ``cache.writeback``,
  ``snapshot``, ``detect-zeroes``, ``throttling.*``, ``stats-*``) are taken
  out; ``format=help`` lists the drivers;
* everything else (``node-name``, ``driver``, ``discard``, ``cache.*``,
  ``file.*``, ``backing.*``, ...) goes to the node tree.

vmd has no IDE, SCSI, floppy or flash controllers: ``if=`` takes ``none``
and ``virtio`` only.
"""

from __future__ import annotations

from vmd.cli.config import DriveConfig, HelpRequest
from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import OptsSpec, is_help_option, parse_bool, parse_number, parse_opts

DRIVE_SPEC = OptsSpec("drive")   # any key: QEMU's qemu_drive_opts checks later

#: blockdev.c's if_name[], in QEMU's order.
INTERFACES = ("none", "ide", "scsi", "floppy", "pflash", "mtd", "sd", "virtio", "xen")
#: The interfaces vmd has.
SUPPORTED_INTERFACES = ("none", "virtio")

_RENAMES = (
    ("iops", "throttling.iops-total"), ("iops_rd", "throttling.iops-read"),
    ("iops_wr", "throttling.iops-write"), ("bps", "throttling.bps-total"),
    ("bps_rd", "throttling.bps-read"), ("bps_wr", "throttling.bps-write"),
    ("iops_max", "throttling.iops-total-max"), ("iops_rd_max", "throttling.iops-read-max"),
    ("iops_wr_max", "throttling.iops-write-max"), ("bps_max", "throttling.bps-total-max"),
    ("bps_rd_max", "throttling.bps-read-max"), ("bps_wr_max", "throttling.bps-write-max"),
    ("iops_size", "throttling.iops-size"), ("group", "throttling.group"),
    ("readonly", "read-only"),
)

#: bdrv_parse_cache_mode(): mode -> (writeback, direct, no-flush).
CACHE_MODES = {
    "off": (True, True, False), "none": (True, True, False),
    "writeback": (True, False, False), "writethrough": (False, False, False),
    "directsync": (False, True, False), "unsafe": (True, False, True),
}

#: Keys of the drive itself and of its BlockBackend (not node options).
_DRIVE_KEYS = frozenset({"if", "bus", "unit", "index", "media", "file", "read-only",
                         "copy-on-read", "werror", "rerror", "format", "aio",
                         "cache.writeback", "snapshot", "detect-zeroes"})


def parse_drive(arg: str, warnings: list[str]) -> DriveConfig | HelpRequest:
    """One ``-drive`` argument; raises OptionError with QEMU's texts."""
    opts = parse_opts(DRIVE_SPEC, arg, warnings)
    items = _renamed(opts.items)
    _expand_cache(items)
    values = dict(items)
    fmt = values.get("format")
    if fmt is not None and is_help_option(fmt):
        return HelpRequest(format_help_text())
    if fmt is not None and "driver" in values:
        raise OptionError("Cannot specify both 'driver' and 'format'")
    drive = DriveConfig(id=opts.id, file=values.get("file"))
    drive.interface = _interface(values.get("if"))
    drive.read_only = _bool(values, "read-only")
    drive.copy_on_read = _bool(values, "copy-on-read")
    media = values.get("media")
    if media is not None and media not in ("disk", "cdrom"):
        raise OptionError(f"'{media}' invalid media")
    drive.media = media or "disk"
    drive.read_only = drive.read_only or drive.media == "cdrom"
    if drive.read_only and drive.copy_on_read:
        warnings.append("vmd: warning: disabling copy-on-read on read-only drive")
        drive.copy_on_read = False
    drive.unit = _address(values)
    drive.werror = values.get("werror")
    drive.rerror = values.get("rerror")
    drive.aio = values.get("aio")
    drive.writeback = _bool(values, "cache.writeback", True)
    if _bool(values, "snapshot"):
        raise OptionError("snapshot=on is not supported by vmd")
    drive.detect_zeroes = values.get("detect-zeroes")
    drive.throttling = {key[len("throttling."):]: value for key, value in values.items()
                        if key.startswith("throttling.")}
    drive.stats = {key: value for key, value in values.items() if key.startswith("stats-")}
    drive.options = {key: value for key, value in values.items()
                     if key not in _DRIVE_KEYS and not key.startswith(("throttling.", "stats-"))}
    if fmt is not None:
        drive.options["driver"] = fmt
    return drive


def _renamed(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """qemu_opt_rename() for each legacy spelling."""
    keys = {key for key, _value in items}
    for old, new in _RENAMES:
        if old in keys and new in keys:
            raise OptionError(f"'{new}' and its alias '{old}' can't be used at the same time")
    renames = dict(_RENAMES)
    return [(renames.get(key, key), value) for key, value in items]


def _expand_cache(items: list[tuple[str, str]]) -> None:
    """``cache=MODE``: the three cache keys, unless given on their own."""
    mode = next((value for key, value in reversed(items) if key == "cache"), None)
    if mode is None:
        return
    if mode not in CACHE_MODES:
        raise OptionError("invalid cache option")
    given = {key for key, _value in items}
    items[:] = [(key, value) for key, value in items if key != "cache"]
    for key, on in zip(("cache.writeback", "cache.direct", "cache.no-flush"), CACHE_MODES[mode]):
        if key not in given:
            items.append((key, "on" if on else "off"))


def _bool(values: dict[str, str], key: str, default: bool = False) -> bool:
    value = values.get(key)
    return default if value is None else parse_bool(key, value)


def _interface(name: str | None) -> str | None:
    if name is None:
        return None
    if name not in INTERFACES:
        raise OptionError(f"unsupported bus type '{name}'")
    if name not in SUPPORTED_INTERFACES:
        raise OptionError(f"vmd has no '{name}' interface; use if=none with -device, or if=virtio")
    return name


def _address(values: dict[str, str]) -> int | None:
    """The unit asked for (``unit``, or ``index``: one unit per bus for
    ``none`` and ``virtio``); None lets start-up take the first free one."""
    bus = parse_number("bus", values["bus"]) if "bus" in values else 0
    unit = parse_number("unit", values["unit"]) if "unit" in values else None
    index = parse_number("index", values["index"]) if "index" in values else None
    if index is not None:
        if bus != 0 or unit is not None:
            raise OptionError("index cannot be used with bus and unit")
        return index
    if bus != 0:
        raise OptionError(f"vmd has one bus per interface: bus={bus} is not supported")
    return unit


def format_help_text() -> str:
    """``-drive format=help``: the block drivers, as bdrv_iterate_format lists them."""
    from vmd.block.graph import driver_names
    names = " ".join(driver_names())
    return f"Supported formats: {names}\nSupported formats (read-only): {names}\n"


def assign_ids(drives: list[DriveConfig], default_interface: str | None) -> None:
    """drive_new()'s interface default, unit numbers and implicit ids
    (``none0``, ``virtio1``: interface name and unit)."""
    used: set[tuple[str, int]] = set()
    for drive in drives:
        if drive.interface is None:
            if default_interface is None:
                raise OptionError("vmd has no default drive interface for this machine; "
                                  "use if=none with -device, or if=virtio")
            drive.interface = default_interface
        unit = drive.unit
        if unit is None:
            unit = 0
            while (drive.interface, unit) in used:
                unit += 1
        elif (drive.interface, unit) in used:
            index = drive.unit if drive.unit is not None else -1
            raise OptionError(f"drive with bus=0, unit={unit} (index={index}) exists")
        used.add((drive.interface, unit))
        drive.unit = unit
        if drive.id is None:
            drive.id = f"{drive.interface}{unit}"
