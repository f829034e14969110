#!/bin/sh
# Idempotent set-up on a fresh Debian machine: the Debian packages the tests
# use, and a virtual environment in .venv with vmd and its test dependencies.
# Safe to run again; it only does what is missing. Needs root (or sudo) for
# apt-get the first time.
set -eu
cd "$(dirname "$0")/.."

PACKAGES="python3 python3-venv qemu-system-x86 qemu-utils libnbd-bin tmux gcc linux-libc-dev curl xz-utils liburing-dev"

./scripts/apt-install.sh $PACKAGES

# QEMU's own iotests (tests/test_iotests.py), into a cache outside the tree.
./scripts/fetch-qemu-iotests.sh >/dev/null ||
    echo "setup: warning: QEMU's iotests were not fetched; tests/test_iotests.py will fail" >&2

PYTHON="${PYTHON:-python3}"
stamp=".venv/.vmd-setup-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: creating .venv"
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    # "compat" editable mode adds the source tree to sys.path with a .pth
    # file; the default import hook costs ~10 ms at every vmd start.
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e '.[test]' \
               --config-settings editable_mode=compat; } >.venv/setup.log 2>&1; then
        cat .venv/setup.log
        echo "setup: pip install failed (log above, also in .venv/setup.log)" >&2
        exit 1
    fi
    rm -f .venv/.vmd-setup-*
    touch "$stamp"
fi

# Byte-compile vmd: an editable install leaves it to the first import, and
# where PYTHONDONTWRITEBYTECODE is set (or the tree is read-only) every start
# would compile vmd again, some 40 ms. Up-to-date files are skipped.
.venv/bin/python -m compileall -q vmd >/dev/null
