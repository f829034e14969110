"""``python -m vmd.machine.demo OUTPUT``: build the demo guest (scripts/demo.sh)."""

import sys
from pathlib import Path

from vmd.machine.demo import build

print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "demo.elf")))
