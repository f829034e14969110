#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of vmd's input parsers, in-process.

    .venv/bin/pip install atheris
    .venv/bin/python scripts/fuzz_atheris.py -max_total_time=300 [libFuzzer options]

One input feeds, in turn: the QMP JSON stream parser (cut in two at a point
the input chooses), the marshaller of a command the input chooses (with the
parsed object as its arguments and a stub handler, so nothing runs), the
keyval parser with the -blockdev conversion, and the NBD server's protocol
machine. Anything but the errors those layers are meant to raise is a crash
that libFuzzer reports with the input that caused it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["vmd"]):
    from tests.test_fuzz import run_nbd_machine, unmarshal
    from vmd._generated.commands import COMMANDS
    from vmd.cli.errors import OptionError
    from vmd.cli.keyval import keyval_parse
    from vmd.errors import QMPError
    from vmd.qapi_keyval import command_arguments
    from vmd.qmp.json_stream import JSONStreamParser

NAMES = sorted(COMMANDS)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    name = NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)]
    cut = fdp.ConsumeIntInRange(0, 64)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes() // 2)
    parser = JSONStreamParser()
    messages = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
    for message in messages:
        if isinstance(message.value, dict):
            unmarshal(name, message.value)
    text = fdp.ConsumeUnicodeNoSurrogates(256)
    try:
        command_arguments("blockdev-add", keyval_parse(text, "driver"))
    except (OptionError, QMPError):
        pass
    run_nbd_machine([fdp.ConsumeBytes(fdp.remaining_bytes())])


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
