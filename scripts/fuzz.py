#!/usr/bin/env python3
"""Long fuzzing runs: the properties of tests/test_fuzz.py with a bigger budget.

    .venv/bin/python scripts/fuzz.py [SCALE]       # default 50x the suite's budget

The suite runs each property with a small fixed, derandomised budget; here
every property runs SCALE times as many examples, randomised, so each run
explores new input. A failure prints hypothesis's minimal falsifying input.
For coverage-guided fuzzing of the parsers see scripts/fuzz_atheris.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    scale = sys.argv[1] if len(sys.argv) > 1 else "50"
    env = dict(os.environ, VMD_FUZZ_SCALE=scale, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
               "tests/test_fuzz.py", "-k", "not valid_arguments"]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
