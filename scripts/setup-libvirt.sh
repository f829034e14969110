#!/bin/sh
# Installs libvirt for the tests that drive vmd through it (tests/test_libvirt.py).
# Idempotent and never reads stdin; the rest of the suite does not need it,
# so scripts/setup.sh leaves it out. Needs root (or sudo) the first time.
#
# Debian 12 ships libvirt 9.0.0 with a monolithic libvirtd (no virqemud).
# No service is started: the tests run their own libvirtd in a private
# mount namespace. Its QEMU driver wants a 'libvirt-qemu' user even when
# qemu.conf says user = "root"; the package creates it, and so does this
# script if a trimmed install left it out.
set -eu
cd "$(dirname "$0")/.."

./scripts/apt-install.sh --no-install-recommends \
    libvirt-daemon-driver-qemu libvirt-clients libvirt-daemon

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
getent group libvirt-qemu >/dev/null || $SUDO groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
    $SUDO useradd --system --no-create-home --home-dir /var/lib/libvirt \
        --gid libvirt-qemu --shell /usr/sbin/nologin libvirt-qemu
