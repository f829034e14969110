"""Build the test guests with the system gcc, cached by content.

Each guest is ``NAME.c`` linked with ``boot.S`` and the library (``lib.c``
and the PCI, virtio and virtio-blk drivers) into a 32-bit multiboot ELF
(QEMU's multiboot loader takes 32-bit ELF only). No
libc, libgcc or multilib is needed: ``-m32 -ffreestanding -nostdlib``
with our linker script. Builds land in a cache directory keyed by a hash
of the sources and flags, so the suite compiles each guest once; a build
writes to a temporary name and renames it, so parallel runs never see a
half-written file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMON = ("boot.S", "lib.c", "pci.c", "virtio.c", "vblk.c")
CFLAGS = ("-m32", "-ffreestanding", "-nostdlib", "-fno-pic", "-fno-pie",
          "-fno-stack-protector", "-fno-builtin", "-mno-sse", "-mno-mmx", "-mno-80387",
          "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
          "--param=min-pagesize=0")  # low fixed addresses are not null pointers
LDFLAGS = ("-static", "-Wl,--build-id=none", "-Wl,-z,noexecstack", "-Wl,--no-warn-rwx-segments")


class GuestBuildError(Exception):
    """gcc is missing or failed; the text is its output."""


def cache_dir() -> Path:
    root = os.environ.get("VMD_GUEST_CACHE") or os.path.join(tempfile.gettempdir(), "vmd-guests")
    return Path(root)


def guest_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.c") if p.name not in COMMON)


def build_guest(name: str) -> Path:
    """The path of guest ``name``'s ELF, building it if the sources changed."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise GuestBuildError("gcc is not installed")
    sources = [HERE / s for s in COMMON] + [HERE / f"{name}.c"]
    digest = hashlib.sha256()
    for path in [*sources, *sorted(HERE.glob("*.h")), HERE / "link.ld"]:
        digest.update(path.read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())  # not the checkout's path: caches are shared
    target = cache_dir() / f"{name}-{digest.hexdigest()[:16]}.elf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    result = subprocess.run([gcc, *CFLAGS, *LDFLAGS, f"-Wl,-T,{HERE / 'link.ld'}",
                             "-o", str(partial), *map(str, sources)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise GuestBuildError(result.stderr)
    os.replace(partial, target)
    return target
