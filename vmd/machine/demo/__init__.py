"""The built-in demo guest: a multiboot program with a serial console.

``demo.c``/``start.S`` are freestanding 32-bit code; ``build`` compiles them
with the system gcc into a multiboot ELF that ``-kernel`` boots under vmd
and QEMU alike. It prints a banner and serves a few commands on COM1
(``help``, ``mem``, ``count``, ``exits``, ``reboot``, ``poweroff``) and
powers off when the ACPI power button is pressed (``system_powerdown``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent
CFLAGS = ("-m32", "-march=i686", "-ffreestanding", "-fno-pic", "-fno-stack-protector",
          "-fno-asynchronous-unwind-tables", "-Os", "-nostdlib", "-static", "-Wl,--build-id=none",
          "-Wl,--no-warn-rwx-segments")


def build(output: Path) -> Path:
    """Compile the demo guest to ``output`` (an ELF file); returns it."""
    subprocess.run(["gcc", *CFLAGS, "-Wl,-T," + str(SOURCE / "demo.ld"), "-o", str(output),
                    str(SOURCE / "start.S"), str(SOURCE / "demo.c")], check=True)
    return output

