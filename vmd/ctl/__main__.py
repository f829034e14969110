"""``vmdctl``: a small CLI over QMP for vmd instances (and QEMU).

    vmdctl list                    instances under the runtime directory
    vmdctl status NAME             run state, pid, version
    vmdctl console NAME            attach to the serial console (Ctrl-] detaches)
    vmdctl stop NAME [-t SECONDS]  power-down, wait, then quit

NAME is an instance under ``--runtime-dir`` (``/run/vmd``, or
``$XDG_RUNTIME_DIR/vmd`` for non-root users: where ``vmd@.service`` puts
them), or the path of a QMP socket. Errors print one line and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmd.ctl import console, instances
from vmd.ctl.client import QMPClient, QMPClientError

DEFAULT_STOP_TIMEOUT = 60.0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (OSError, EOFError, QMPClientError, console.ConsoleError) as error:
        print(f"vmdctl: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmdctl", description="Control running vmd instances over QMP.")
    parser.add_argument("--runtime-dir", type=Path, default=instances.default_runtime_dir(),
                        help="where instances keep their sockets (default: %(default)s)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="list instances and whether they run")
    listing.set_defaults(run=_list)
    status = commands.add_parser("status", help="show an instance's run state")
    status.add_argument("name")
    status.set_defaults(run=_status)
    attach = commands.add_parser("console", help="attach to the serial console (Ctrl-] detaches)")
    attach.add_argument("name")
    attach.add_argument("--chardev", help="the chardev to attach (default: 'console', else 'serial0')")
    attach.set_defaults(run=_console)
    stop = commands.add_parser("stop", help="power the guest down, then quit")
    stop.add_argument("name")
    stop.add_argument("-t", "--timeout", type=float, default=DEFAULT_STOP_TIMEOUT,
                      help="seconds the guest gets to shut down before 'quit' (default: %(default)g)")
    stop.set_defaults(run=_stop)
    return parser


def _list(args: argparse.Namespace) -> int:
    found = instances.scan(args.runtime_dir)
    rows = [("NAME", "PID", "STATUS")]
    for instance in found:
        status = _run_state(instance) if instance.running else "not running"
        rows.append((instance.name, str(instance.pid or "-"), status))
    width = max(len(row[0]) for row in rows)
    for name, pid, status in rows:
        print(f"{name:<{width}}  {pid:>7}  {status}")
    return 0


def _run_state(instance: instances.Instance) -> str:
    try:
        with QMPClient(str(instance.qmp)) as client:
            return str(client.execute("query-status")["status"])
    except (OSError, EOFError, QMPClientError):
        return "unreachable"


def _status(args: argparse.Namespace) -> int:
    instance = instances.find(args.runtime_dir, args.name)
    with QMPClient(str(instance.qmp)) as client:
        status = client.execute("query-status")
        name = client.execute("query-name").get("name")
        version = client.greeting["QMP"]["version"]
    qemu = version["qemu"]
    print(f"name:    {name or instance.name}")
    print(f"status:  {status['status']}")
    print(f"pid:     {instance.pid or '-'}")
    print(f"version: {qemu['major']}.{qemu['minor']}.{qemu['micro']} ({version['package'].strip()})")
    return 0


def _console(args: argparse.Namespace) -> int:
    instance = instances.find(args.runtime_dir, args.name)
    with QMPClient(str(instance.qmp)) as client:
        kind, where = console.console_target(client.execute("query-chardev"), args.chardev)
    if sys.stdin.isatty():
        print(f"Connected to {instance.name} ({where}); Ctrl-] detaches.", file=sys.stderr)
    console.attach(kind, where)
    return 0


def _stop(args: argparse.Namespace) -> int:
    """``system_powerdown``; up to ``--timeout`` s for SHUTDOWN (or the daemon leaving); ``quit``."""
    instance = instances.find(args.runtime_dir, args.name)
    with QMPClient(str(instance.qmp)) as client:
        if client.execute("query-status")["status"] == "running" and args.timeout > 0:
            client.execute("system_powerdown")
            if client.wait_for_event("SHUTDOWN", args.timeout) is None:
                print(f"vmdctl: {instance.name} did not power down within {args.timeout:g} s; quitting",
                      file=sys.stderr)
        try:
            client.execute("quit")
        except (OSError, EOFError):
            pass  # already gone after the guest's shutdown
    return 0


if __name__ == "__main__":
    sys.exit(main())
