"""``@FILE`` on the command line: options read from a file, one a line.

A service keeps each instance's options in a file (``vmd@.service`` passes
``@/etc/vmd/NAME.conf``); quoting them into ``ExecStart=`` or an
environment variable would break arguments with spaces (``-append``). The
format is the command line itself, one option per line::

    # web1: 512 MiB, a kernel, one disk
    -m 512
    -append console=ttyS0 panic=-1
    -blockdev driver=qcow2,node-name=disk0,file.driver=file,file.filename=/var/lib/vmd/web1.qcow2

A line is the option, then (after blanks) its argument: the rest of the
line, verbatim, spaces included. Blank lines and lines starting with ``#``
are skipped. Files do not nest. This module imports only built-ins, since
it runs before the early greeter binds the QMP sockets.
"""


class ArgFileError(Exception):
    """An ``@FILE`` that cannot be read or parsed; the message is QEMU-shaped."""


def expand(argv: list[str]) -> list[str]:
    """``argv`` with every ``@FILE`` word replaced by the file's options."""
    expanded: list[str] = []
    for word in argv:
        if word.startswith("@") and len(word) > 1:
            expanded += read(word[1:])
        else:
            expanded.append(word)
    return expanded


def read(path: str) -> list[str]:
    """The options in ``path``, as argv words."""
    try:
        with open(path, encoding="utf-8") as options_file:
            lines = options_file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ArgFileError(f"vmd: @{path}: {reason}") from None
    words: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not text.startswith("-"):
            raise ArgFileError(f"vmd: {path}:{number}: expected an option, found '{text}'")
        words += text.split(None, 1)  # the option, then its argument verbatim
    return words
