"""``vmd-img`` / ``python -m vmd.img``: dispatch to a subcommand.

Errors print ``vmd-img: message`` on stderr and exit 1 (or the subcommand's
own status); usage errors add a hint to ``--help``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

import vmd
from vmd.img.common import PROGRAM, ImgError

COMMANDS = ("check", "create", "info", "map")


def _module(name: str) -> ModuleType:
    import importlib
    return importlib.import_module(f"vmd.img.{name}")


def help_text() -> str:
    lines = [
        f"{PROGRAM} version {vmd.__version__} (QEMU-compatible)",
        f"usage: {PROGRAM} [standard options] command [command options]",
        "Disk image utility (qemu-img compatible subset)",
        "",
        "    '-h', '--help'       display this help and exit",
        "    '-V', '--version'    output version information and exit",
        "",
        "Command syntax:",
    ]
    lines += [f"  {_module(name).USAGE}" for name in COMMANDS]
    lines += [
        "",
        "Command parameters:",
        "  'filename' is a disk image filename",
        "  'fmt' is the disk image format (raw or qcow2). It is guessed automatically",
        "    when omitted (qcow2 by its magic, raw otherwise)",
        "  'size' is the disk image size in bytes. Optional suffixes",
        "    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),",
        "    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P) are",
        "    supported. 'b' is ignored.",
        "  'options' is a comma separated list of format specific options in a",
        "    name=value format. Use -o help for an overview of the options supported by",
        "    the used format",
        "  'ofmt' is the output format: 'human' (default) or 'json'",
        "  '-p' show progress of command (check, create with preallocation=full)",
        "  '-q' use Quiet mode - do not print any output (except errors)",
        "  '-U' is accepted for compatibility; images are only read",
        "",
        "Parameters to check subcommand:",
        "  '-r' (repair) is not supported yet: vmd-img check never modifies the image.",
        "  Exit status: 0 no errors, 1 check failed, 2 corruptions, 3 leaks only,",
        "  63 format without checks.",
        "",
        f"Run '{PROGRAM} COMMAND --help' for the options of one command.",
        "",
        "Supported formats: qcow2 raw",
    ]
    return "\n".join(lines) + "\n"


def _report(error: ImgError) -> int:
    # Continuation lines go out as they are (as QEMU's error_report prints them).
    print(f"{PROGRAM}: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"Try '{PROGRAM} --help' for more information", file=sys.stderr)
    return error.status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if not args:
            raise ImgError("Not enough arguments", hint=True)
        first = args[0]
        if first in ("-h", "--help"):
            print(help_text(), end="")
            return 0
        if first in ("-V", "--version"):
            print(f"{PROGRAM} version {vmd.__version__}")
            return 0
        if first.startswith("-"):
            opt = first.lstrip("-")
            if first.startswith("--"):
                raise ImgError(f"unrecognized option '{first}'", hint=True)
            raise ImgError(f"invalid option -- '{opt[:1]}'", hint=True)
        if first not in COMMANDS:
            raise ImgError(f"Command not found: {first}", hint=True)
        command: Callable[[list[str]], int] = _module(first).main
        return command(args[1:])
    except ImgError as error:
        return _report(error)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
