"""A real Linux kernel boots under vmd to a marker line (slow; hardware KVM only).

Debian's cloud kernel and a busybox initramfs whose /init prints a marker
and powers off through ACPI. A software KVM (no vmx/svm in /proc/cpuinfo)
cannot emulate instructions a stock kernel runs (cmpxchg16b, xrstor,
int3), so the test skips there and says why. The kernel and busybox come
from Debian's packages (``apt-get download``) unless ``VMD_LINUX_KERNEL``
names a bzImage.
"""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import vmd_command

pytestmark = [pytest.mark.slow, pytest.mark.kvm]

MARKER = "vmd-linux-boot-ok"
INIT = f"""#!/bin/busybox sh
/bin/busybox echo {MARKER}
/bin/busybox poweroff -f
"""


def _hardware_kvm() -> bool:
    flags = Path("/proc/cpuinfo").read_text()
    return " vmx" in flags or " svm" in flags


def _cpio(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A newc cpio archive of ``name -> (mode, data)``."""
    out = bytearray()
    for number, (name, (mode, data)) in enumerate([*files.items(), ("TRAILER!!!", (0, b""))], start=1):
        encoded = name.encode() + b"\0"
        fields = [number, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + b"".join(f"{field:08x}".encode() for field in fields) + encoded
        out += bytes(-len(out) % 4) + data + bytes(-(len(out) + len(data)) % 4)
    return bytes(out)


def _debian_file(package: str, member: str, work: Path) -> Path:
    subprocess.run(["apt-get", "download", package], cwd=work, check=True, capture_output=True)
    deb = next(work.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / package)], check=True)
    return next((work / package).glob(member))


def _kernel(work: Path) -> Path:
    if os.environ.get("VMD_LINUX_KERNEL"):
        return Path(os.environ["VMD_LINUX_KERNEL"])
    depends = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True,
                             text=True, check=True).stdout
    package = next(line.split()[-1] for line in depends.splitlines() if "Depends: linux-image-" in line)
    return _debian_file(package, "boot/vmlinuz-*", work)


@pytest.mark.skipif(not _hardware_kvm(), reason="needs hardware virtualization (no vmx/svm in /proc/cpuinfo): "
                    "a software KVM cannot run a stock Linux kernel")
def test_debian_kernel_boots_to_a_marker(tmp_path: Path) -> None:
    kernel = _kernel(tmp_path)
    busybox = _debian_file("busybox-static", "bin/busybox", tmp_path).read_bytes()
    initrd = tmp_path / "initrd.gz"
    initrd.write_bytes(gzip.compress(_cpio({"bin": (0o40755, b""), "bin/busybox": (0o100755, busybox),
                                            "init": (0o100755, INIT.encode())})))
    result = subprocess.run(
        vmd_command("-M", "pc", "-accel", "kvm", "-m", "512", "-smp", "2", "-kernel", str(kernel),
                    "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1 reboot=k", "-serial", "stdio",
                    "-no-reboot", "-display", "none"),
        capture_output=True, text=True, timeout=600, check=False)
    assert MARKER in result.stdout, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0
