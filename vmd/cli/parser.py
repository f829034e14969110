"""argv -> Config: the vmd command-line parser.

:func:`parse_args` is a pure function: it reads nothing but its argument,
prints nothing, and reports problems by raising :class:`CliError` with the
text QEMU would print (``vmd: -opt arg: message``).  Deprecation warnings
end up in ``Config.warnings`` for the caller to print.

Defaults: QEMU adds a serial port, a monitor and a parallel port unless
-nodefaults is given.  vmd adds nothing either way for now (there is no
display to put them on); ``Config.nodefaults`` is recorded for later.
"""

from __future__ import annotations

from collections.abc import Callable

from vmd.cli import chardev as chardev_mod
from vmd.cli import drive as drive_mod
from vmd.cli import system_opts
from vmd.cli.config import (
    DEFAULT_MACHINE,
    DEFAULT_RAM_BYTES,
    SUPPORTED_MACHINES,
    BlockdevConfig,
    ChardevConfig,
    Config,
    DeviceConfig,
    HelpRequest,
    MonitorConfig,
    VersionRequest,
    machine_class,
)
from vmd.cli.errors import CliError, OptionError, cli_error, located
from vmd.cli.keyval import keyval_parse, parse_json_object, parse_keyval_or_json
from vmd.cli.options import OptionSpec, find_option, help_text, version_text
from vmd.cli.qemu_opts import (
    OptsSpec,
    is_help_option,
    parse_bool,
    parse_opts,
    parse_size,
)
from vmd.cli.smp import compute_smp, parse_smp_values
from vmd.system.accel import AccelError, accel_help_text, check_accelerators

ParseResult = Config | HelpRequest | VersionRequest

MACHINE_SPEC = OptsSpec("machine", implied_key="type")
MEMORY_SPEC = OptsSpec("memory", implied_key="size",
                       desc={"size": "size", "slots": "number", "maxmem": "size"})
NAME_SPEC = OptsSpec("name", implied_key="guest",
                     desc={"guest": "string", "process": "string", "debug-threads": "bool"})
MON_SPEC = OptsSpec("mon", implied_key="chardev",
                    desc={"mode": "string", "chardev": "string", "pretty": "bool"})
ACCEL_SPEC = OptsSpec("accel", implied_key="accel")
DEVICE_SPEC = OptsSpec("device", implied_key="driver")

#: Displays QEMU knows but vmd does not offer.
_OTHER_DISPLAYS = frozenset({"sdl", "gtk", "vnc", "curses", "egl-headless",
                             "spice-app", "dbus", "cocoa", "default"})
_MONITOR_MODES = ("readline", "control")


class _State:
    """Everything collected while walking argv, plus where things came from."""

    def __init__(self) -> None:
        self.config = Config()
        self.where: dict[str, str] = {}    # chardev id -> location
        self.monitor_index = 0
        self.serial_refs: list[tuple[str, str]] = []
        self.mon_refs: list[tuple[str, str]] = []
        self.machine_where: str | None = None
        self.smp_values: dict[str, int] = {}
        self.smp_given = False
        self.memory: tuple[str, int, int | None, int | None] | None = None


def parse_args(argv: list[str]) -> ParseResult:
    """Parse ``argv`` (without the program name) into a Config.

    Returns HelpRequest/VersionRequest when -help/-version (or
    ``-machine help``) is met; options are handled left to right, so an
    error before ``-help`` is still reported, as in QEMU.
    """
    state = _State()
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if not word.startswith("-"):
            raise CliError(located(word, "disk image arguments are not supported; "
                                         "use -blockdev and -device"))
        spec = find_option(word[2:] if word.startswith("--") else word[1:])
        if spec is None:
            raise CliError(located(word, "invalid option"))
        arg = None
        if spec.arg is not None:
            if index >= len(argv):
                raise CliError(located(word, "requires an argument"))
            arg = argv[index]
            index += 1
        result = _dispatch(state, spec, word, arg)
        if result is not None:
            return result
    _finish(state)
    return state.config


def _dispatch(state: _State, spec: OptionSpec, word: str,
              arg: str | None) -> HelpRequest | VersionRequest | None:
    """Run the handler of one option, turning OptionError into CliError."""
    where = word if arg is None else f"{word} {arg}"
    try:
        return _HANDLERS[spec.name](state, arg or "", where)
    except OptionError as err:
        raise cli_error(where, err) from None


# --- flags ---------------------------------------------------------------

def _set_flag(attr: str, value: object = True) -> Callable[[_State, str, str], None]:
    def handler(state: _State, _arg: str, _where: str) -> None:
        setattr(state.config, attr, value)
    return handler


def _on_config(handler: Callable[[Config, str], None]) -> Callable[[_State, str, str], None]:
    """An option handler that needs only the config (vmd.cli.system_opts)."""
    def run(state: _State, arg: str, _where: str) -> None:
        handler(state.config, arg)
    return run


def _set_string(attr: str) -> Callable[[_State, str, str], None]:
    def handler(state: _State, arg: str, _where: str) -> None:
        setattr(state.config, attr, arg)
    return handler


def _help(_state: _State, _arg: str, _where: str) -> HelpRequest:
    return HelpRequest(help_text())


def _version(_state: _State, _arg: str, _where: str) -> VersionRequest:
    return VersionRequest(version_text())


# --- machine, memory, cpus ----------------------------------------------

def _machine(state: _State, arg: str, where: str) -> HelpRequest | None:
    opts = parse_opts(MACHINE_SPEC, arg, state.config.warnings)
    new = opts.to_dict()
    if is_help_option(new.get("type", "")):
        return HelpRequest(machine_help_text())
    if "type" in new:
        state.machine_where = where
    state.config.machine.update(new)
    return None


def machine_help_text() -> str:
    """The ``-machine help`` listing, in QEMU's layout; the machine used
    without ``-machine`` is marked ``(default)``, as QEMU marks its own
    (QEMU's test suite reads it as QEMU_DEFAULT_MACHINE)."""
    def row(name: str, desc: str) -> str:
        default = " (default)" if name == DEFAULT_MACHINE else ""
        return f"{name:<20} {desc}{default}"
    rows = [row(name, desc) for name, desc in sorted(SUPPORTED_MACHINES.items())]
    return "Supported machines are:\n" + "\n".join(rows) + "\n"


def _memory(state: _State, arg: str, _where: str) -> None:
    """-m [size=]megs[,slots=n,maxmem=size]; a suffix-less size means MiB."""
    opts = parse_opts(MEMORY_SPEC, arg, state.config.warnings)
    size_text = opts.get("size")
    config = state.config
    if size_text is not None:
        config.memory_bytes = _ram_size(size_text)
    if opts.get("slots") is not None:
        config.memory_slots = int(opts.get("slots") or "0", 0)
    if opts.get("maxmem") is not None:
        config.memory_maxmem = parse_size("maxmem", opts.get("maxmem") or "")


def _ram_size(text: str) -> int:
    """QEMU's set_memory_options(): MiB without suffix, 0 = default, 8 KiB aligned."""
    if not text:
        raise OptionError("missing 'size' option value")
    size = parse_size("size", text)
    if text[-1].isdigit():
        size <<= 20
        if size >= 1 << 64:
            raise OptionError("too large 'size' option value")
    if size == 0:
        size = DEFAULT_RAM_BYTES
    return (size + 8191) // 8192 * 8192


def _smp(state: _State, arg: str, _where: str) -> None:
    try:
        parse_smp_values(arg, state.smp_values, state.config.warnings)
    except OptionError as err:
        raise cli_error(None, err) from None  # QEMU reports these unlocated
    state.smp_given = True


def _accel(state: _State, arg: str, _where: str) -> HelpRequest | None:
    """-accel NAME[,...]; ``help`` (or no name) lists them at once, as QEMU."""
    accel = parse_opts(ACCEL_SPEC, arg, state.config.warnings).to_dict()
    if is_help_option(accel.get("accel", "help")):
        return HelpRequest(accel_help_text())
    state.config.accels.append(accel)
    return None


def _enable_kvm(state: _State, _arg: str, _where: str) -> None:
    state.config.accels.append({"accel": "kvm"})


def _name(state: _State, arg: str, _where: str) -> None:
    opts = parse_opts(NAME_SPEC, arg, state.config.warnings)
    config = state.config
    config.name = opts.get("guest", config.name)
    config.process_name = opts.get("process", config.process_name)
    debug = opts.get("debug-threads")
    if debug is not None:
        config.debug_threads = parse_bool("debug-threads", debug)


def _display(state: _State, arg: str, _where: str) -> None:
    """Only 'none': vmd has no graphical output."""
    tree = keyval_parse(arg, "type")
    kind = tree.pop("type", None)
    if kind != "none":
        if kind in _OTHER_DISPLAYS:
            raise OptionError(f"display '{kind}' is not supported by vmd (only 'none')")
        raise OptionError(f"Parameter 'type' does not accept value '{kind or ''}'")
    if tree:
        raise OptionError(f"Parameter '{next(iter(tree))}' is unexpected")
    state.config.display = "none"


# --- devices -------------------------------------------------------------

def _vga(_state: _State, arg: str, _where: str) -> None:
    """Only 'none': vmd has no display adapter."""
    if arg != "none":
        raise OptionError(f"vga type '{arg}' is not supported by vmd (only 'none')")


def _drive(state: _State, arg: str, _where: str) -> HelpRequest | None:
    drive = drive_mod.parse_drive(arg, state.config.warnings)
    if isinstance(drive, HelpRequest):
        return drive
    state.config.drives.append(drive)
    return None


def _qtest(state: _State, arg: str, where: str) -> None:
    """-qtest DEV: the chardev ``qtest``, as QEMU's qtest_server_init names it."""
    _compat_chardev(state, "qtest", arg, where, f'Failed to initialize device for qtest: "{arg}"')
    state.config.qtest = "qtest"


def _blockdev(state: _State, arg: str, _where: str) -> None:
    tree, from_json = parse_keyval_or_json(arg, "driver")
    state.config.blockdevs.append(BlockdevConfig(options=tree, from_json=from_json))


def _device(state: _State, arg: str, _where: str) -> HelpRequest | None:
    if arg.startswith("{"):
        device = DeviceConfig(options=parse_json_object(arg), from_json=True)
    else:
        opts = parse_opts(DEVICE_SPEC, arg, state.config.warnings)
        options: dict[str, object] = dict(opts.to_dict())
        if opts.id is not None:
            options["id"] = opts.id
        help_request = _device_help(options)
        if help_request is not None:
            return help_request
        device = DeviceConfig(options=options)
    state.config.devices.append(device)
    return None


def _device_help(options: dict[str, object]) -> HelpRequest | None:
    """``-device help`` and ``-device TYPE,help`` (the registry's texts)."""
    driver = str(options.get("driver", ""))
    wants_type_help = any(is_help_option(key) for key in options if key != "driver")
    if not is_help_option(driver) and not wants_type_help:
        return None
    from vmd.hw import devices  # noqa: F401  (registers the device types)
    from vmd.qom.errors import QOMError
    from vmd.qom.help import device_help, device_type_help
    if is_help_option(driver):
        return HelpRequest(device_help())
    try:
        return HelpRequest(device_type_help(driver))
    except QOMError as error:
        raise OptionError(str(error)) from None


# --- character devices and monitors --------------------------------------

def _add_chardev(state: _State, chardev: ChardevConfig, where: str) -> None:
    if chardev.id in state.where:
        raise OptionError(f"Duplicate ID '{chardev.id}' for chardev")
    state.where[chardev.id] = where
    state.config.chardevs.append(chardev)


def _chardev(state: _State, arg: str, where: str) -> None:
    chardev = chardev_mod.parse_chardev_option(arg, state.config.warnings)
    _add_chardev(state, chardev, where)


def _compat_chardev(state: _State, label: str, spec: str, where: str,
                    failure: str) -> ChardevConfig:
    """Parse a legacy device string; on failure report both QEMU lines."""
    try:
        chardev = chardev_mod.parse_chardev_compat(label, spec)
    except OptionError as err:
        lines = [located(where, err.message)] if err.message else []
        lines.append(located(where, failure))
        raise CliError("\n".join(lines)) from None
    _add_chardev(state, chardev, where)
    return chardev


def add_monitor(state: _State, spec: str, mode: str, pretty: bool, where: str) -> None:
    """-monitor/-qmp/-qmp-pretty: a chardev ``compat_monitorN`` plus a monitor."""
    if spec.startswith("chardev:"):
        label = spec[len("chardev:"):]
        state.mon_refs.append((label, where))
    else:
        label = f"compat_monitor{state.monitor_index}"
        _compat_chardev(state, label, spec, where, f"parse error: {spec}")
    state.monitor_index += 1
    state.config.monitors.append(MonitorConfig(chardev=label, mode=mode, pretty=pretty))


def _monitor(state: _State, arg: str, where: str) -> None:
    if not arg.startswith("none"):   # QEMU compares only the first 4 chars
        add_monitor(state, arg, "readline", False, where)


def _qmp(state: _State, arg: str, where: str) -> None:
    add_monitor(state, arg, "control", False, where)


def _qmp_pretty(state: _State, arg: str, where: str) -> None:
    add_monitor(state, arg, "control", True, where)


def _mon(state: _State, arg: str, where: str) -> None:
    """-mon [chardev=]name[,mode=readline|control][,pretty=on|off]."""
    opts = parse_opts(MON_SPEC, arg, state.config.warnings)
    mode = opts.get("mode", "readline") or ""
    if mode not in _MONITOR_MODES:
        raise OptionError(f"Parameter 'mode' does not accept value '{mode}'")
    pretty_text = opts.get("pretty")
    pretty = parse_bool("pretty", pretty_text) if pretty_text is not None else False
    if pretty_text is not None and mode == "readline":
        raise OptionError("'pretty' is not compatible with HMP monitors")
    chardev = opts.get("chardev")
    if not chardev:
        raise OptionError("Parameter 'chardev' is missing")
    state.mon_refs.append((chardev, where))
    state.config.monitors.append(MonitorConfig(chardev=chardev, mode=mode, pretty=pretty))


def _serial(state: _State, arg: str, where: str) -> None:
    """-serial DEV: chardev ``serialN``; ``mon:`` adds a readline monitor."""
    if arg == "none":
        return
    if arg.startswith("chardev:"):
        label = arg[len("chardev:"):]
        state.serial_refs.append((label, where))
        state.config.serials.append(label)
        return
    label = f"serial{len(state.config.serials)}"
    failure = f"could not connect serial device to character backend '{arg}'"
    chardev = _compat_chardev(state, label, arg, where, failure)
    state.config.serials.append(label)
    if chardev.options.get("mux") == "on":
        state.config.monitors.append(MonitorConfig(chardev=label, mode="readline"))


# --- logging and tracing -------------------------------------------------

TRACE_SPEC = OptsSpec("trace", implied_key="enable",
                      desc={"enable": "string", "events": "string", "file": "string"})

#: -d items vmd has (QEMU's others are about TCG, which vmd does not have).
LOG_ITEMS = {
    "unimp": "log unimplemented functionality",
    "guest_errors": "log when the guest OS does something invalid (eg accessing a\nnon-existent register)",
}


def _log_items(state: _State, arg: str, where: str) -> HelpRequest | None:
    """-d item,...: log items and ``trace:PATTERN``, as QEMU's qemu_str_to_log_mask."""
    for item in arg.split(","):
        if item.startswith("trace:"):
            if item == "trace:help":
                return HelpRequest(trace_help_text())
            state.config.trace.append((where, "enable", item[len("trace:"):]))
        elif is_help_option(item):
            return HelpRequest(log_items_help_text())
        elif item in LOG_ITEMS:
            state.config.log_items.append(item)
        else:
            raise OptionError(f"unknown log item '{item}' (use -d help for a list)")
    return None


def log_items_help_text() -> str:
    rows = [f"{name:<15} {text}" for name, text in LOG_ITEMS.items()]
    rows.append(f"{'trace:PATTERN':<15} enable trace events")
    return "Log items (comma separated):\n" + "\n".join(rows) + \
        '\n\nUse "-d trace:help" to get a list of trace events.\n'


def _trace(state: _State, arg: str, where: str) -> HelpRequest | None:
    opts = parse_opts(TRACE_SPEC, arg, state.config.warnings)
    pattern = opts.get("enable")
    if pattern is not None and is_help_option(pattern):
        return HelpRequest(trace_help_text())
    if pattern:
        state.config.trace.append((where, "enable", pattern))
    if opts.get("events"):
        state.config.trace.append((where, "events", opts.get("events") or ""))
    if opts.get("file"):
        state.config.logfile = opts.get("file")
    return None


def trace_help_text() -> str:
    """``-trace help``: the event names, one a line, as QEMU lists them."""
    from vmd._generated.commands import COMMANDS
    from vmd.system import trace
    trace.define_commands(COMMANDS)
    return "\n".join(trace.names()) + "\n"


def _stop_grace(state: _State, arg: str, _where: str) -> None:
    try:
        seconds = float(arg)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 1e9:
        raise OptionError("expects a number of seconds (0 or more)")
    state.config.stop_grace = seconds


# --- end of command line -------------------------------------------------

def _finish(state: _State) -> None:
    """Checks that need the whole command line."""
    config = state.config
    machine_type = config.machine.get("type", "")
    if machine_type not in SUPPORTED_MACHINES:
        raise CliError(located(state.machine_where, "unsupported machine type")
                       + "\nUse -machine help to list supported machines")
    _check_accel(config)
    _check_machine_options(config)
    _check_drives(config)
    if state.smp_given:
        try:
            config.smp = compute_smp(state.smp_values)
        except OptionError as err:
            raise cli_error(None, err) from None
    for label, where in state.serial_refs:
        if label not in state.where:
            raise CliError(located(where, "could not connect serial device to "
                                          f"character backend 'chardev:{label}'"))
    for label, where in state.mon_refs:
        if label not in state.where:
            raise CliError(located(where, f'chardev "{label}" not found'))
    _check_stdio(state)


def _check_drives(config: Config) -> None:
    """Interfaces and implicit ids of -drive: QEMU's default interface is
    the machine's (``none`` for ``-M none``, IDE for ``pc``, which vmd lacks)."""
    default = "none" if config.machine.get("type") == "none" else None
    try:
        drive_mod.assign_ids(config.drives, default)
    except OptionError as err:
        raise cli_error(None, err) from None


def _check_accel(config: Config) -> None:
    """``-accel``, ``-enable-kvm`` and ``-machine accel=`` (vmd.system.accel)."""
    try:
        check_accelerators(config)
    except AccelError as error:
        raise CliError(located(None, str(error))) from None


def _check_machine_options(config: Config) -> None:
    """``-machine`` keys are the machine's properties (vmd.qom.objects), with
    QEMU's texts; a feature vmd lacks may only be switched off."""
    if config.machine.keys() <= {"type", "accel"}:
        return  # nothing to check: keep vmd.qom out of start-up
    from vmd.qom.errors import QOMError
    from vmd.qom.objects import ABSENT_FEATURES, MACHINE_PROPERTIES, machine_type_name
    known = {prop.name: prop for prop in MACHINE_PROPERTIES}
    machine = machine_class(config.machine.get("type", "none"))
    for key, value in config.machine.items():
        if key in ("type", "accel"):
            continue
        prop = known.get(key)
        if prop is None or machine is None:
            name = machine_type_name(machine.name if machine else "none")
            raise CliError(located(None, f"Property '{name}.{key}' not found"))
        try:
            enabled = prop.parse(value) if prop.type == "bool" else False
        except QOMError as error:
            raise CliError(located(None, str(error))) from None
        if enabled and key in ABSENT_FEATURES:
            raise CliError(located(None, f"vmd's machine has no {ABSENT_FEATURES[key]}: "
                                         f"{key}=on is not supported"))


def _check_stdio(state: _State) -> None:
    """Only one chardev may own stdio."""
    stdio = [c for c in state.config.chardevs if c.backend == "stdio"]
    if len(stdio) > 1:
        raise CliError(located(state.where[stdio[1].id],
                               "cannot use stdio by multiple character devices"))


_HANDLERS: dict[str, Callable[[_State, str, str], HelpRequest | VersionRequest | None]] = {
    "h": _help,
    "version": _version,
    "machine": _machine,
    "cpu": _set_string("cpu"),
    "accel": _accel,
    "smp": _smp,
    "m": _memory,
    "name": _name,
    "device": _device,
    "blockdev": _blockdev,
    "display": _display,
    "drive": _drive,
    "vga": _vga,
    "qtest": _qtest,
    "nographic": _set_flag("nographic"),
    "chardev": _chardev,
    "kernel": _set_string("kernel"),
    "append": _set_string("append"),
    "initrd": _set_string("initrd"),
    "serial": _serial,
    "monitor": _monitor,
    "qmp": _qmp,
    "qmp-pretty": _qmp_pretty,
    "mon": _mon,
    "pidfile": _set_string("pidfile"),
    "S": _set_flag("start_paused"),
    "D": _set_string("logfile"),
    "d": _log_items,
    "trace": _trace,
    "stop-grace": _stop_grace,
    "enable-kvm": _enable_kvm,
    "no-reboot": _set_flag("no_reboot"),
    "no-shutdown": _set_flag("no_shutdown"),
    "daemonize": _set_flag("daemonize"),
    "nodefaults": _set_flag("nodefaults"),
    "no-user-config": lambda _state, _arg, _where: None,   # vmd reads no config files
    **{name: _on_config(handler) for name, handler in system_opts.HANDLERS.items()},
}
