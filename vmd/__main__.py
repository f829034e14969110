"""``vmd`` / ``python -m vmd``: parse the command line and run the daemon."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run vmd with QEMU-style arguments; return the exit status."""
    from vmd.cli import CliError, HelpRequest, VersionRequest, parse_args
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except CliError as error:
        print(error, file=sys.stderr)
        return 1
    if isinstance(config, (HelpRequest, VersionRequest)):
        print(config.text, end="" if config.text.endswith("\n") else "\n")
        return 0
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    return _serve(config)


def _serve(config) -> int:  # type: ignore[no-untyped-def]
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
            return runner.run(main_loop.run(config, daemonizer))
    except (StartupError, MonitorError) as error:
        print(f"vmd: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
