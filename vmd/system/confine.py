"""What ``-overcommit mem-lock=on`` and ``-sandbox ...,elevateprivileges=deny``
ask of the process, done once at start-up (after ``-daemonize``).

* mem-lock: ``mlockall(MCL_CURRENT | MCL_FUTURE)``, so neither vmd nor
  guest RAM is ever swapped out (QEMU's os_mlock). Failing is fatal, with
  QEMU's text, as in QEMU.
* elevateprivileges=deny: ``PR_SET_NO_NEW_PRIVS``, so nothing vmd could
  ever exec gains privileges (the part of QEMU's seccomp sandbox a Python
  process can honour without a seccomp filter).
"""

from __future__ import annotations

import os

from vmd.cli.config import Config
from vmd.system.process import StartupError

_MCL_CURRENT, _MCL_FUTURE = 1, 2
_PR_SET_NO_NEW_PRIVS = 38


def apply(config: Config) -> None:
    """Raise StartupError when the kernel refuses what was asked."""
    if not (config.mem_lock or config.no_new_privs):
        return
    import ctypes  # only when asked for: not on every start's path
    libc = ctypes.CDLL(None, use_errno=True)
    if config.mem_lock and libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) != 0:
        raise StartupError(f"locking memory failed: {os.strerror(ctypes.get_errno())}")
    if config.no_new_privs and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise StartupError(f"failed to set no_new_privs: {os.strerror(ctypes.get_errno())}")
