#!/bin/sh
# Set up, then run the whole test suite. Extra arguments go to pytest.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
