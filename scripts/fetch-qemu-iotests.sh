#!/bin/sh
# Fetch QEMU 7.2's own test suite (tests/qemu-iotests and the python/qemu
# package it imports) from Debian's qemu source package, into a cache
# outside the tree: it is QEMU's GPL code and is never copied into vmd.
# tests/test_iotests.py runs chosen tests of it with vmd as QEMU_PROG.
#
# Idempotent: once the suite is unpacked nothing is downloaded again.
# Prints the suite's directory. Needs curl (or wget), xz and tar.
set -eu

CACHE="${VMD_QEMU_SRC:-${XDG_CACHE_HOME:-$HOME/.cache}/vmd/qemu-src}"
TARBALL="qemu_7.2+dfsg.orig.tar.xz"
SHA256="91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f"
URL="${DEBIAN_MIRROR:-http://deb.debian.org/debian}/pool/main/q/qemu/$TARBALL"
SUITE="$CACHE/qemu-7.2.0/tests/qemu-iotests"

if [ -f "$SUITE/check" ] && [ -f "$CACHE/qemu-7.2.0/python/qemu/machine/machine.py" ]; then
    echo "$SUITE"
    exit 0
fi

mkdir -p "$CACHE"
partial="$CACHE/$TARBALL.part"
if [ ! -f "$CACHE/$TARBALL" ]; then
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 3 -o "$partial" "$URL"
    else
        wget -q -O "$partial" "$URL"
    fi
    if [ "$(sha256sum "$partial" | cut -d' ' -f1)" != "$SHA256" ]; then
        rm -f "$partial"
        echo "fetch-qemu-iotests: $URL: checksum mismatch" >&2
        exit 1
    fi
    mv "$partial" "$CACHE/$TARBALL"
fi
# Only the suite and the Python package it imports.
tar -xJf "$CACHE/$TARBALL" -C "$CACHE" qemu-7.2.0/tests/qemu-iotests qemu-7.2.0/python
rm -f "$CACHE/$TARBALL"
echo "$SUITE"
