"""Exceptions of the command-line parser.

Two layers: :class:`OptionError` carries QEMU's wording for one malformed
option argument and knows nothing about where it came from; the argv parser
turns it into a :class:`CliError` whose text already has the
``vmd: -opt arg:`` prefix QEMU puts in front of every command-line error.
"""

from __future__ import annotations

PROGRAM = "vmd"


class OptionError(ValueError):
    """A malformed option argument, worded like QEMU.

    ``hint`` holds the extra lines QEMU prints after the message (for example
    the list of size suffixes); it may be empty.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class CliError(Exception):
    """A fatal command-line error; ``str()`` is exactly what to print.

    The caller writes it to stderr and exits with status 1.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def located(location: str | None, message: str) -> str:
    """Format one error line the way QEMU's error_report() does."""
    if location:
        return f"{PROGRAM}: {location}: {message}"
    return f"{PROGRAM}: {message}"


def cli_error(location: str | None, err: OptionError | str) -> CliError:
    """Build a CliError for ``err`` reported at ``location`` (e.g. ``-m foo``)."""
    if isinstance(err, OptionError):
        text = located(location, err.message)
        if err.hint:
            text += "\n" + err.hint.rstrip("\n")
        return CliError(text)
    return CliError(located(location, err))
