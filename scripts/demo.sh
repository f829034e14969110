#!/bin/sh
# vmd's main job: set up, then run the daemon in the foreground with a QMP
# socket that qmp-shell and qemu.qmp connect to. Stop it with Ctrl-C or the
# QMP command "quit". (Later issues add a demo guest to this command.)
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
RUNDIR="${VMD_RUNDIR:-${XDG_RUNTIME_DIR:-/tmp}/vmd-demo}"
mkdir -p "$RUNDIR"
SOCKET="$RUNDIR/qmp.sock"
echo "vmd demo: QMP socket at $SOCKET"
echo "  connect with:  .venv/bin/qmp-shell $SOCKET"
exec .venv/bin/vmd -name demo -nodefaults -display none \
    -qmp "unix:$SOCKET,server=on,wait=off" "$@"
