"""``-chardev`` options to QAPI ``ChardevBackend``: QEMU's qemu_chr_parse_*.

The command line and ``chardev-add`` must build the same backends, so the
command line's QemuOpts are translated to the QMP shape here and then go
through the generated visitor like any ``chardev-add``. Defaults differ as
in QEMU: on the command line a socket is a client unless ``server=on``, and
a server waits for its first client unless ``wait=off``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmd._generated.types import ChardevBackend, visit_ChardevBackend
from vmd.cli.config import ChardevConfig
from vmd.cli.errors import OptionError
from vmd.cli.qemu_opts import parse_bool, parse_number, parse_size

Options = dict[str, str]


def _bool(options: Options, key: str, data: dict[str, Any],
          member: str | None = None) -> None:
    if key in options:
        data[member or key] = parse_bool(key, options[key])


def _common(options: Options) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if "logfile" in options:
        data["logfile"] = options["logfile"]
    _bool(options, "logappend", data)
    return data


def _file(options: Options) -> dict[str, Any]:
    if "path" not in options:
        raise OptionError("chardev: file: no filename given")
    data = {**_common(options), "out": options["path"]}
    if "input-path" in options:
        data["in"] = options["input-path"]
    _bool(options, "append", data)
    return data


def _pipe(options: Options) -> dict[str, Any]:
    if "path" not in options:
        raise OptionError("chardev: pipe: no device path given")
    return {**_common(options), "device": options["path"]}


def _socket(options: Options) -> dict[str, Any]:
    data = _common(options)
    server = parse_bool("server", options.get("server", "off"))
    data["server"] = server
    if server:
        data["wait"] = parse_bool("wait", options.get("wait", "on"))
    elif "wait" in options:
        raise OptionError(
            "'wait' option is incompatible with socket in client connect mode")
    for key in ("nodelay", "telnet", "tn3270", "websocket"):
        _bool(options, key, data)
    if "reconnect" in options:
        data["reconnect"] = parse_number("reconnect", options["reconnect"])
    data["addr"] = _socket_address(options)
    return data


def _socket_address(options: Options) -> dict[str, Any]:
    path, host, port, fd = (options.get(k) for k in ("path", "host", "port", "fd"))
    if sum(value is not None for value in (path, host, fd)) > 1:
        raise OptionError("None or one of 'path', 'fd' or 'host' option required.")
    if fd is not None:
        return {"type": "fd", "data": {"str": fd}}
    if path is not None:
        unix: dict[str, Any] = {"path": path}
        _bool(options, "abstract", unix)
        _bool(options, "tight", unix)
        return {"type": "unix", "data": unix}
    if host is None:
        raise OptionError("chardev: socket: no host given")
    if port is None:
        raise OptionError("chardev: socket: no port given")
    inet: dict[str, Any] = {"host": host, "port": port}
    if "to" in options:
        inet["to"] = parse_number("to", options["to"])
    for key in ("ipv4", "ipv6"):
        _bool(options, key, inet)
    return {"type": "inet", "data": inet}


def _stdio(options: Options) -> dict[str, Any]:
    data = _common(options)
    _bool(options, "signal", data)
    return data


def _ringbuf(options: Options) -> dict[str, Any]:
    data = _common(options)
    size = parse_size("size", options["size"]) if "size" in options else 0
    if size:
        data["size"] = size
    return data


def _mux(options: Options) -> dict[str, Any]:
    if "chardev" not in options:
        raise OptionError("chardev: mux: no chardev given")
    return {**_common(options), "chardev": options["chardev"]}


_PARSERS: dict[str, Callable[[Options], dict[str, Any]]] = {
    "mux": _mux,
    "file": _file, "pipe": _pipe, "socket": _socket, "stdio": _stdio,
    "ringbuf": _ringbuf, "memory": _ringbuf,
}


def backend_spec(chardev: ChardevConfig) -> tuple[ChardevBackend,
                                                   ChardevBackend | None]:
    """The chardev's QAPI backend, and for ``mux=on`` the mux on top.

    With ``mux=on`` QEMU creates the real backend as ``ID-base`` and a mux
    chardev ``ID`` over it; the second value is that mux (else None).
    """
    options = dict(chardev.options)
    mux = parse_bool("mux", options.pop("mux", "off"))
    parse = _PARSERS.get(chardev.backend, _common)
    wire = {"type": chardev.backend, "data": parse(options)}
    spec = visit_ChardevBackend(wire, None, "")
    if not mux:
        return spec, None
    mux_wire = {"type": "mux", "data": {"chardev": f"{chardev.id}-base"}}
    return spec, visit_ChardevBackend(mux_wire, None, "")
