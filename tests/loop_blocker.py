"""Run vmd with a test-only way to block its event loop: SIGUSR1 sleeps.

The watchdog test needs a stuck loop while the rest of the process lives
on (worker threads, the kernel's socket buffers). This is not a vmd option:
the test runs ``python tests/loop_blocker.py VMD-ARGS``, which wraps
``main_loop.run`` and then starts vmd as usual. The loop sleeps
``$VMD_TEST_BLOCK_SECONDS`` (default 2).
"""

import asyncio
import os
import signal
import sys
import time

from vmd import main_loop
from vmd.__main__ import main

BLOCK_SECONDS = float(os.environ.get("VMD_TEST_BLOCK_SECONDS", "2"))
_run = main_loop.run


async def _run_with_blocker(*args, **kwargs):  # type: ignore[no-untyped-def]
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, time.sleep, BLOCK_SECONDS)
    return await _run(*args, **kwargs)


main_loop.run = _run_with_blocker  # type: ignore[assignment]
sys.exit(main())
