"""vmd's version, the QEMU version whose QMP it speaks, and the greeting.

Kept free of imports so that the early greeter can send the QMP greeting
before the rest of vmd has loaded.
"""

from vmd import __version__

# Clients read this from the greeting and ``query-version``.
QEMU_VERSION = (7, 2, 0)
PACKAGE = f"vmd-{__version__}"


def version_info() -> dict:
    """``query-version``'s reply, also the greeting's ``version`` member."""
    major, minor, micro = QEMU_VERSION
    return {"qemu": {"major": major, "minor": minor, "micro": micro},
            "package": PACKAGE}


def greeting_line() -> bytes:
    """The greeting of a monitor that offers OOB, encoded as vmd sends it.

    Written out by hand because the early greeter must not import ``json``;
    a test checks it against the encoder's output.
    """
    major, minor, micro = QEMU_VERSION
    return (f'{{"QMP": {{"version": {{"qemu": {{"micro": {micro}, '
            f'"minor": {minor}, "major": {major}}}, "package": "{PACKAGE}"}}, '
            f'"capabilities": ["oob"]}}}}\r\n').encode()
