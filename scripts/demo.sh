#!/bin/sh
# vmd's main job: set up, then boot the built-in demo guest (a small
# multiboot program with a banner and a few commands) on KVM, its serial
# console on this terminal and a QMP socket that qmp-shell and qemu.qmp
# connect to. Type "help" at the guest's prompt; stop with the guest's
# "poweroff", the QMP command "quit" or "system_powerdown", or Ctrl-C.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
RUNDIR="${VMD_RUNDIR:-${XDG_RUNTIME_DIR:-/tmp}/vmd-demo}"
mkdir -p "$RUNDIR"
SOCKET="$RUNDIR/qmp.sock"
GUEST="$RUNDIR/demo.elf"
.venv/bin/python -m vmd.machine.demo "$GUEST" >/dev/null
echo "vmd demo: QMP socket at $SOCKET"
echo "  connect with:  .venv/bin/qmp-shell $SOCKET"
echo "  guest console below (Ctrl-C quits)"
exec .venv/bin/vmd -name demo -M pc -accel kvm -m 64 -display none \
    -kernel "$GUEST" -append "demo" -serial stdio \
    -qmp "unix:$SOCKET,server=on,wait=off" "$@"
