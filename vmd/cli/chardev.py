"""Character device options: -chardev and the legacy device strings.

The legacy strings are what -serial, -monitor and -qmp take (``stdio``,
``unix:/path,server=on``, ``tcp:host:port``, ``file:/x``, ...);
:func:`parse_chardev_compat` turns one into a :class:`ChardevConfig` the way
QEMU's qemu_chr_parse_compat() does.
"""

from __future__ import annotations

import re

from vmd.cli.config import ChardevConfig
from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import OptsSpec, OptType, QemuOpts, parse_bool, parse_opts

_BOOL_KEYS = ("wait", "server", "delay", "nodelay", "telnet", "tn3270", "websocket",
              "ipv4", "ipv6", "mux", "signal", "append", "logappend", "abstract",
              "tight", "clipboard", "mouse",
              "x-allow-remote")  # vmd's: a monitor may listen beyond loopback
_STRING_KEYS = ("backend", "path", "host", "port", "fd", "local", "localaddr",
                "localport", "tls-creds", "tls-authz", "name", "chardev",
                "logfile")
_NUMBER_KEYS = ("to", "reconnect", "width", "height", "cols", "rows", "debug")

_CHARDEV_DESC: dict[str, OptType] = {
    **{key: "bool" for key in _BOOL_KEYS},
    **{key: "string" for key in _STRING_KEYS},
    **{key: "number" for key in _NUMBER_KEYS},
    "size": "size",
}

#: The -chardev option list: implied key 'backend', QEMU 7.2's keys.
CHARDEV_SPEC = OptsSpec("chardev", implied_key="backend", desc=_CHARDEV_DESC)

#: Backend names QEMU 7.2 knows; whether vmd implements one is the chardev
#: layer's business, not the parser's.
CHARDEV_BACKENDS = frozenset({
    "null", "mux", "socket", "udp", "msmouse", "wctablet", "vc", "ringbuf", "memory",
    "file", "pipe", "pty", "stdio", "braille", "serial", "tty", "parallel",
    "parport", "spicevmc", "spiceport", "qemu-vdagent", "dbus", "testdev",
})

_SIMPLE_BACKENDS = ("null", "pty", "msmouse", "wctablet", "braille", "testdev", "stdio")
_PATH_PREFIXES = (("file:", "file"), ("pipe:", "pipe"), ("pty:", "pty"))
_SOCKET_PREFIXES = ("tcp:", "telnet:", "tn3270:", "websocket:")
_HOST_PORT_RE = r"([^:]{1,64}):([^,]{1,32})|:([^,]{1,32})"  # compiled on first use


class CompatParseError(OptionError):
    """A legacy device string QEMU cannot parse.

    ``message`` may be empty: for some malformed strings QEMU reports
    nothing beyond the caller's own "parse error" line.
    """


def chardev_from_opts(opts: QemuOpts) -> ChardevConfig:
    """Check a parsed -chardev and turn it into a ChardevConfig."""
    backend = opts.get("backend")
    if opts.id is None:
        raise OptionError("chardev: no id specified")
    if backend is None:
        raise OptionError(f'chardev: "{opts.id}" missing backend')
    if backend not in CHARDEV_BACKENDS:
        raise OptionError(f"'{backend}' is not a valid char driver name")
    options = opts.to_dict()
    options.pop("backend", None)
    return ChardevConfig(id=opts.id, backend=backend, options=options)


def parse_chardev_option(arg: str, warnings: list[str] | None = None) -> ChardevConfig:
    """Parse the argument of one -chardev."""
    return chardev_from_opts(parse_opts(CHARDEV_SPEC, arg, warnings))


def parse_chardev_compat(label: str, spec: str, permit_mux_mon: bool = True) -> ChardevConfig:
    """Parse a legacy device string into a chardev with id ``label``.

    ``mon:`` muxes the device (and for ``mon:stdio`` lets Ctrl-C reach the
    guest); the caller adds the monitor it implies.  ``chardev:ID`` and
    ``none`` are not device strings: callers handle them first.
    """
    options: dict[str, str] = {}
    if spec.startswith("mon:"):
        if not permit_mux_mon:
            raise CompatParseError("mon: isn't supported in this context")
        spec = spec[len("mon:"):]
        options["mux"] = "on"
        if spec == "stdio":
            options["signal"] = "off"
    backend = _parse_compat_backend(spec, options)
    return ChardevConfig(id=label, backend=backend, options=options)


def _parse_compat_backend(spec: str, options: dict[str, str]) -> str:
    """Fill ``options`` from ``spec`` and return the backend name."""
    if spec in _SIMPLE_BACKENDS:
        return spec
    if spec.startswith("vc"):
        _parse_vc_size(spec[2:], options)
        return "vc"
    if spec == "con:":
        return "console"
    if spec.startswith(("COM", "/dev/")):
        options["path"] = spec
        parallel = spec.startswith(("/dev/parport", "/dev/ppi"))
        return "parallel" if parallel else "serial"
    for prefix, backend in _PATH_PREFIXES:
        if spec.startswith(prefix):
            options["path"] = spec[len(prefix):]
            return backend
    for prefix in _SOCKET_PREFIXES:
        if spec.startswith(prefix):
            _parse_inet(spec[len(prefix):], prefix[:-1], options)
            return "socket"
    if spec.startswith("udp:"):
        _parse_udp(spec[len("udp:"):], options)
        return "udp"
    if spec.startswith("unix:"):
        extra = parse_opts(_COMPAT_UNIX_SPEC, spec[len("unix:"):])
        options.update(extra.to_dict())
        return "socket"
    raise CompatParseError(f"'{spec}' is not a valid char driver")


_COMPAT_UNIX_SPEC = OptsSpec("chardev", implied_key="path", desc=_CHARDEV_DESC)
_COMPAT_EXTRA_SPEC = OptsSpec("chardev", implied_key=None, desc=_CHARDEV_DESC)


def _parse_vc_size(rest: str, options: dict[str, str]) -> None:
    """``vc:800x600`` (pixels) or ``vc:80Cx24C`` (characters)."""
    if not rest:
        return
    pixels = re.match(r":([0-9]{1,7})x([0-9]{1,7})", rest)
    chars = re.match(r":([0-9]{1,7})Cx([0-9]{1,7})C", rest)
    if pixels:
        options["width"], options["height"] = pixels.groups()
    elif chars:
        options["cols"], options["rows"] = chars.groups()
    elif rest.startswith(":"):
        raise CompatParseError("")


def _parse_inet(rest: str, kind: str, options: dict[str, str]) -> None:
    """``[HOST]:PORT[,opts]`` for tcp:, telnet:, tn3270: and websocket:."""
    host, port, end = _host_port(rest)
    options["host"], options["port"] = host, port
    if rest[end:end + 1] == ",":
        extra = parse_opts(_COMPAT_EXTRA_SPEC, rest[end + 1:])
        options.update(extra.to_dict())
    if kind != "tcp":
        options[kind] = "on"


def _parse_udp(rest: str, options: dict[str, str]) -> None:
    """``[HOST]:PORT[@[LOCALADDR]:LOCALPORT]``."""
    at = rest.find("@")
    remote = rest if at < 0 else rest[:at]
    options["host"], options["port"], _ = _host_port(remote.split(",")[0])
    if at >= 0:
        local = rest[at + 1:]
        options["localaddr"], options["localport"], _ = _host_port(local)


def _host_port(text: str) -> tuple[str, str, int]:
    """Split ``HOST:PORT`` or ``:PORT``; return host, port, end index."""
    match = re.match(_HOST_PORT_RE, text)
    if not match:
        raise CompatParseError("")
    if match.group(3) is not None:
        return "", match.group(3), match.end()
    return match.group(1), match.group(2), match.end()


def socket_flags(chardev: ChardevConfig) -> tuple[bool, bool]:
    """Effective ``(server, wait)`` of a socket chardev with CLI defaults.

    On the command line a socket is a client unless ``server=on``, and a
    server waits for its first client unless ``wait=off``.  Giving ``wait``
    to a client is an error, as in QEMU.
    """
    server = parse_bool("server", chardev.options.get("server", "off"))
    wait_text = chardev.options.get("wait")
    if not server:
        if wait_text is not None:
            raise OptionError("'wait' option is incompatible with socket in client connect mode")
        return False, False
    return True, parse_bool("wait", wait_text if wait_text is not None else "on")
