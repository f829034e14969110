"""``vmd`` / ``python -m vmd``: parse the command line and run the daemon.

Start-up order matters for speed: the early greeter binds the QMP sockets
before anything heavy is imported (see ``vmd.early_greeter``).
"""

from __future__ import annotations

import sys

from vmd.early_greeter import EarlyGreeter, qmp_unix_paths
from vmd.system import argfile


def main(argv: list[str] | None = None) -> int:
    """Run vmd with QEMU-style arguments; return the exit status."""
    try:
        args = argfile.expand(sys.argv[1:] if argv is None else argv)
    except argfile.ArgFileError as error:
        print(error, file=sys.stderr)
        return 1
    early = EarlyGreeter(qmp_unix_paths(args))
    from vmd.cli import CliError, HelpRequest, VersionRequest, parse_args
    try:
        config = parse_args(args)
    except CliError as error:
        early.abandon()
        print(error, file=sys.stderr)
        return 1
    if isinstance(config, (HelpRequest, VersionRequest)):
        early.abandon()
        print(config.text, end="" if config.text.endswith("\n") else "\n")
        return 0
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    return _serve(config, early)


def _serve(config, early: EarlyGreeter) -> int:  # type: ignore[no-untyped-def]
    import asyncio

    import uvloop

    from vmd import main_loop
    from vmd.qmp.server import MonitorError
    from vmd.system import confine, fdsets, listen_fds
    from vmd.system.log import LogFileError, setup_logging, shutdown_logging
    from vmd.system.process import StartupError, daemonize
    from vmd.system.sd_notify import Notifier
    from vmd.system.stop import DEFAULT_GRACE
    from vmd.system.trace import TraceError

    # What systemd passed is read before -daemonize forks (the pids in it).
    notifier = Notifier.from_environ()
    listen_fds.collect_from_environ()
    grace = DEFAULT_GRACE if config.stop_grace is None else config.stop_grace
    try:
        main_loop.check_supported(config)
        for warning in _apply_trace(config):
            print(warning, file=sys.stderr)
        daemonizer = daemonize(notifier) if config.daemonize else None
        confine.apply(config)
        fdsets.install(config.fdsets)
        setup_logging(config.logfile, config.log_items, timestamp=config.msg_timestamp)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main_loop.run(config, daemonizer, early, notifier, grace))
    except (StartupError, MonitorError, LogFileError, TraceError) as error:
        early.abandon()
        print(f"vmd: {error}", file=sys.stderr)
        return 1
    finally:
        shutdown_logging()


def _apply_trace(config) -> list[str]:  # type: ignore[no-untyped-def]
    """Switch on the -trace/-d trace: events; return warnings to print."""
    if not config.trace:
        return []  # the per-command events exist for -trace patterns to match
    from vmd._generated.commands import COMMANDS
    from vmd.system import trace

    trace.define_commands(COMMANDS)
    warnings = []
    for where, kind, value in config.trace:
        try:
            found = trace.enable(value) if kind == "enable" else trace.enable_from_file(value)
        except trace.TraceError as error:
            raise trace.TraceError(f"{where}: {error}") from None
        warnings += [f"vmd: {where}: warning: {text}" for text in found]
    return warnings


if __name__ == "__main__":
    sys.exit(main())
