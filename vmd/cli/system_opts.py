"""Options a management tool puts on every command line (libvirt does).

``-uuid``, ``-rtc``, ``-boot``, ``-overcommit``, ``-msg``, ``-sandbox``,
``-add-fd`` and ``-audiodev`` with QEMU 7.2's keys and error texts. Each
is honoured, or accepted only in the form that describes what vmd does
anyway, and refused otherwise, so a command line never asks for something
vmd silently ignores:

* ``-rtc``: the RTC runs on the host's clock in UTC (``base=utc``,
  ``clock=host``, ``driftfix=none``); other bases and clocks are refused;
* ``-boot``: vmd has no firmware and boots only ``-kernel``, so there is
  no boot order and nothing to fall back to: ``strict`` is accepted (it
  holds trivially), boot orders and menus are refused;
* ``-overcommit``: ``mem-lock=on`` locks vmd's memory (mlockall), off
  leaves it; ``cpu-pm=on`` is refused (no CPU power management passthrough);
* ``-msg timestamp=on``: every log line starts with the UTC time, as QEMU's;
* ``-sandbox``: vmd has no seccomp filter. ``-sandbox on`` is accepted;
  with ``elevateprivileges=deny`` it sets no_new_privs, which vmd can
  honour; the other keys are accepted but not enforced (README "libvirt").
  For the same reason ``query-command-line-options`` does not list
  ``sandbox``: a tool reading it must not believe vmd confines itself;
* ``-add-fd fd=N,set=M``: the fd joins fd set M (``/dev/fdset/M``);
* ``-audiodev``: only ``driver=none`` (vmd has no sound device);
* ``-object``: run as ``object-add`` at start-up (``vmd.qom.user_objects``).

The parser stays pure: fds are checked with fstat only, nothing is opened.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from vmd.cli.config import Config, FdSetEntry, ObjectConfig
from vmd.cli.errors import OptionError
from vmd.cli.keyval import parse_keyval_or_json
from vmd.cli.qemu_opts import OptsSpec, parse_bool, parse_number, parse_opts

RTC_SPEC = OptsSpec("rtc", desc={"base": "string", "clock": "string", "driftfix": "string"})
BOOT_SPEC = OptsSpec("boot-opts", implied_key="order",
                     desc={"order": "string", "once": "string", "menu": "bool",
                           "splash": "string", "splash-time": "number",
                           "reboot-timeout": "number", "strict": "bool"})
OVERCOMMIT_SPEC = OptsSpec("overcommit", desc={"mem-lock": "bool", "cpu-pm": "bool"})
MSG_SPEC = OptsSpec("msg", desc={"timestamp": "bool", "guest-name": "bool"})
SANDBOX_SPEC = OptsSpec("sandbox", implied_key="enable",
                        desc={"enable": "bool", "obsolete": "string",
                              "elevateprivileges": "string", "spawn": "string",
                              "resourcecontrol": "string"})
ADD_FD_SPEC = OptsSpec("add-fd", desc={"fd": "number", "set": "number", "opaque": "string"})

#: The option lists ``query-command-line-options`` reports (not sandbox).
LISTED_SPECS = (RTC_SPEC, BOOT_SPEC, OVERCOMMIT_SPEC, MSG_SPEC, ADD_FD_SPEC)

_UUID_RE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"  # compiled on first use
#: -boot keys that hold trivially without firmware (strict=on: nothing to fall back to).
_BOOT_HARMLESS = ("strict", "splash-time", "reboot-timeout")
_SANDBOX_VALUES = {"obsolete": ("allow", "deny"), "elevateprivileges": ("allow", "deny", "children"),
                   "spawn": ("allow", "deny"), "resourcecontrol": ("allow", "deny")}


def _uuid(config: Config, arg: str) -> None:
    if not re.match(_UUID_RE, arg):
        raise OptionError("failed to parse UUID string: wrong format")
    config.uuid = arg.lower()


def _rtc(config: Config, arg: str) -> None:
    opts = parse_opts(RTC_SPEC, arg)
    for key, wanted in (("base", "utc"), ("clock", "host"), ("driftfix", "none")):
        value = opts.get(key, wanted)
        if value != wanted:
            raise OptionError(f"vmd's RTC runs with {key}={wanted} only; {key}={value} is not supported")


def _boot(config: Config, arg: str) -> None:
    opts = parse_opts(BOOT_SPEC, arg)
    for key, value in opts.items:
        if key in ("strict", "menu") and not parse_bool(key, value) or key in _BOOT_HARMLESS:
            continue
        raise OptionError(f"vmd has no firmware and boots only -kernel: '{key}={value}' "
                          "is not supported")


def _overcommit(config: Config, arg: str) -> None:
    opts = parse_opts(OVERCOMMIT_SPEC, arg)
    if parse_bool("cpu-pm", opts.get("cpu-pm", "off") or ""):
        raise OptionError("cpu-pm=on is not supported by vmd")
    config.mem_lock = parse_bool("mem-lock", opts.get("mem-lock", "off") or "")


def _msg(config: Config, arg: str) -> None:
    opts = parse_opts(MSG_SPEC, arg)
    config.msg_timestamp = parse_bool("timestamp", opts.get("timestamp", "off") or "")
    parse_bool("guest-name", opts.get("guest-name", "off") or "")


def _sandbox(config: Config, arg: str) -> None:
    opts = parse_opts(SANDBOX_SPEC, arg)
    enabled = parse_bool("enable", opts.get("enable", "off") or "")
    for key, allowed in _SANDBOX_VALUES.items():
        value = opts.get(key)
        if value is not None and value not in allowed:
            raise OptionError(f"invalid argument for {key}")
    config.no_new_privs = enabled and opts.get("elevateprivileges") == "deny"


def _add_fd(config: Config, arg: str) -> None:
    """QEMU's parse_add_fd: the fd must be open and not a standard stream."""
    opts = parse_opts(ADD_FD_SPEC, arg)
    fd_text, set_text = opts.get("fd"), opts.get("set")
    if fd_text is None:
        raise OptionError("fd option is required and must be non-negative")
    fd = parse_number("fd", fd_text)
    if fd <= 2:
        raise OptionError("fd cannot be a standard I/O stream")
    if set_text is None:
        raise OptionError("set option is required and must be non-negative")
    try:
        os.fstat(fd)
    except OSError:
        raise OptionError("fd is not valid or already in use") from None
    config.fdsets.append(FdSetEntry(fdset=parse_number("set", set_text), fd=fd,
                                    opaque=opts.get("opaque")))


def _object(config: Config, arg: str) -> None:
    """``-object qom-type=T,id=ID,...`` or JSON; checked by ``object-add``."""
    tree, from_json = parse_keyval_or_json(arg, "qom-type")
    config.objects.append(ObjectConfig(options=tree, from_json=from_json))


def _audiodev(config: Config, arg: str) -> None:
    tree, _from_json = parse_keyval_or_json(arg, "driver")
    driver = tree.get("driver")
    if driver != "none":
        raise OptionError(f"Parameter 'driver' does not accept value '{driver}' "
                          "(vmd has no sound device: only 'none')")
    if "id" not in tree:
        raise OptionError("Parameter 'id' is missing")


#: option name -> handler(config, argument); the parser dispatches to these.
HANDLERS: dict[str, Callable[[Config, str], None]] = {
    "uuid": _uuid, "rtc": _rtc, "boot": _boot, "overcommit": _overcommit,
    "msg": _msg, "sandbox": _sandbox, "add-fd": _add_fd, "audiodev": _audiodev,
    "object": _object,
}
