"""A real Linux kernel finds its disk on virtio-blk-pci (slow; hardware KVM only).

Debian's cloud kernel boots with a busybox initramfs that loads the virtio
modules from the same kernel package, waits for ``/dev/vda``, reads the
first 64 KiB with ``dd`` (the host compares the checksum), copies sector
0 to sector 100 with ``conv=fsync`` (the host checks it with qemu-io
afterwards) and powers off. A software KVM cannot run a stock kernel
(see ``tests/test_machine_linux.py``), so the test skips there, saying why.
``VMD_LINUX_KERNEL`` and ``VMD_LINUX_MODULES`` (a ``lib/modules/VERSION``
directory) replace the downloaded kernel package.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.harness import vmd_command
from tests.qemu_tools import qimg, qio
from tests.test_machine_linux import _cpio, _debian_file, _hardware_kvm, _kernel

pytestmark = [pytest.mark.slow, pytest.mark.kvm]

#: Load order: each module needs the ones before it (those built in are missing, which is fine).
MODULES = ("virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk")
INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in {modules}; do [ -f /lib/$m.ko ] && /bin/busybox insmod /lib/$m.ko; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 200 ]; do /bin/busybox usleep 50000; n=$((n + 1)); done
echo "vda-read $(/bin/busybox dd if=/dev/vda bs=4096 count=16 2>/dev/null | /bin/busybox md5sum)"
/bin/busybox dd if=/dev/vda of=/dev/vda bs=512 count=1 seek=100 conv=fsync 2>/dev/null && echo vda-written
/bin/busybox poweroff -f
"""


def _modules(work: Path) -> dict[str, bytes]:
    """The virtio modules of the kernel under test, uncompressed, by name."""
    root = Path(os.environ["VMD_LINUX_MODULES"]) if os.environ.get("VMD_LINUX_MODULES") else \
        next(work.glob("linux-image-*/lib/modules/*"))
    found: dict[str, bytes] = {}
    for path in root.rglob("*.ko*"):
        name = re.sub(r"\.ko(\.xz)?$", "", path.name)
        if name in MODULES:
            data = path.read_bytes()
            found[name] = lzma.decompress(data) if path.name.endswith(".xz") else data
    return found


@pytest.mark.skipif(not _hardware_kvm(), reason="needs hardware virtualization (no vmx/svm in /proc/cpuinfo): "
                    "a software KVM cannot run a stock Linux kernel")
def test_linux_reads_and_writes_its_virtio_disk(tmp_path: Path) -> None:
    kernel = _kernel(tmp_path)
    busybox = _debian_file("busybox-static", "bin/busybox", tmp_path).read_bytes()
    modules = _modules(tmp_path)
    assert "virtio_blk" in modules, "the kernel package has no virtio_blk module"
    files = {"bin": (0o40755, b""), "bin/busybox": (0o100755, busybox), "lib": (0o40755, b""),
             "init": (0o100755, INIT.format(modules=" ".join(MODULES)).encode())}
    files.update({f"lib/{name}.ko": (0o100644, data) for name, data in modules.items()})
    initrd = tmp_path / "initrd.gz"
    initrd.write_bytes(gzip.compress(_cpio(files)))
    image = tmp_path / "disk.raw"
    qimg("create", "-f", "raw", image, "16M")
    qio(image, "write -P 0xa5 0 64k")
    result = subprocess.run(
        vmd_command("-M", "pc", "-accel", "kvm", "-m", "512", "-smp", "2", "-kernel", str(kernel),
                    "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1 reboot=k", "-serial", "stdio",
                    "-no-reboot", "-display", "none",
                    "-blockdev", f"driver=raw,node-name=disk0,file.driver=file,file.filename={image}",
                    "-device", "virtio-blk-pci,drive=disk0"),
        capture_output=True, text=True, timeout=600, check=False)
    log = result.stdout[-4000:] + result.stderr[-2000:]
    expected = hashlib.md5(bytes([0xA5]) * 65536).hexdigest()
    assert f"vda-read {expected}" in result.stdout, log
    assert "vda-written" in result.stdout, log
    assert result.returncode == 0, log
    qio(image, "read -P 0xa5 51200 512")
