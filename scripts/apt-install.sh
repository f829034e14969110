#!/bin/sh
# Installs those of the Debian packages named as arguments that are missing;
# idempotent, never reads stdin. Options for apt-get (--no-install-recommends)
# may come first. Used by setup.sh and setup-libvirt.sh.
set -eu
options=""
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do
    options="$options $1"
    shift
done
missing=""
for package in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $package"
    fi
done
[ -n "$missing" ] || exit 0
echo "setup: installing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq </dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $options $missing </dev/null >/dev/null
