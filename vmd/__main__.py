"""``vmd`` / ``python -m vmd``: parse the command line and run the daemon.

Start-up order matters for speed: the early greeter binds the QMP sockets
before anything heavy is imported (see ``vmd.early_greeter``).
"""

from __future__ import annotations

import sys

from vmd.early_greeter import EarlyGreeter, qmp_unix_paths


def main(argv: list[str] | None = None) -> int:
    """Run vmd with QEMU-style arguments; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
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
    from vmd.system.log import setup_logging
    from vmd.system.process import StartupError, daemonize

    setup_logging()
    try:
        main_loop.check_supported(config)
        daemonizer = daemonize() if config.daemonize else None
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main_loop.run(config, daemonizer, early))
    except (StartupError, MonitorError) as error:
        early.abandon()
        print(f"vmd: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
