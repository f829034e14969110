"""QEMU 7.2's own iotests, run by QEMU's ``check`` with vmd as QEMU_PROG.

The suite is QEMU's GPL code: ``scripts/fetch-qemu-iotests.sh`` (run by
``setup.sh``) unpacks it from Debian's qemu source package into a cache
outside the tree. Each chosen test is one pytest case, run alone through
``check -FMT NNN`` with vmd (a wrapper that execs ``python -m vmd``) as
QEMU_PROG and the installed qemu-img, qemu-io and qemu-nbd as the other
tools, exactly as QEMU's CI runs them against its own binary; check
compares the whole output with the test's reference file. A test that
check does not run (it lacks something, e.g. ``virtio-blk`` in ``-device
help``) is skipped with check's reason, never counted as passed.

check names the program in error messages by the wrapper's file name, so
the wrapper is called ``vmd``, the name vmd prints.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("VMD_QEMU_SRC") or
             Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vmd" / "qemu-src")
SUITE = CACHE / "qemu-7.2.0" / "tests" / "qemu-iotests"
TOOLS = {"QEMU_IMG_PROG": "qemu-img", "QEMU_IO_PROG": "qemu-io", "QEMU_NBD_PROG": "qemu-nbd",
         "QSD_PROG": "qemu-storage-daemon"}
#: One test's run through check (a few take seconds of sleeps; none a minute).
TIMEOUT = 300

#: (test, image format, machine) known to pass. QEMU's tests assume its
#: default machine, a pc; vmd's default is "none", so tests that plug
#: virtio-blk disks (``-drive if=virtio``) get ``-machine pc``, as QEMU's
#: own testenv adds ``-machine virt`` for ARM.
TESTS = [
    ("117", "qcow2", "none"),   # blockdev-add of a node whose file child is added separately
    ("120", "qcow2", "none"),   # -drive driver=raw over file.driver=qcow2 (a format over a format)
    ("141", "qcow2", "none"),   # blockdev-del of nodes in use by jobs (backup, commit, mirror, stream)
    ("130", "qcow2", "none"),   # HMP commit with backing.* options overriding the header's backing file
    ("143", "qcow2", "none"),   # NBD server on a blockdev-add'ed node, client gone before the export
    ("156", "qcow2", "none"),   # drive-mirror of a snapshot, completed onto a copied chain
    ("161", "qcow2", "none"),   # reopen of the backing file after stream and commit
    ("176", "qcow2", "none"),   # qemu-img commit with bitmaps; blockdev-add/-del of the chain in between
    ("247", "qcow2", "none"),   # commit with auto-read-only nodes, over -qmp stdio
    ("249", "qcow2", "none"),   # commit filter names; qemu-io on a read-only drive
    ("229", "qcow2", "none"),   # force cancel of a mirror paused by a target error: "running" before the reply
    ("095", "qcow2", "pc"),     # commit of a virtio disk's chain into a resized base
    ("144", "qcow2", "pc"),     # live snapshots ("Formatting ..." on stdout) and active commit, twice
    # Python tests (QEMU's iotests.py runs them only when "-M none -device
    # help" lists virtio-blk, whether they use it or not).
    ("218", "qcow2", "none"),   # mirror cancel (soft, forced, by quitting) from a throttled node
    ("258", "qcow2", "none"),   # stream and commit through throttle filters in the chain
    ("283", "qcow2", "none"),   # backup's copy-before-write filter: appending it fails on unshared write
    ("132", "qcow2", "pc"),     # drive-mirror with unaligned writes going on
    ("152", "qcow2", "pc"),     # drive-mirror with buf-size
    ("260", "qcow2", "pc"),     # snapshot, then commit with a persistent bitmap
    ("219", "qcow2", "none"),   # job-*/block-job-* verbs per state; backup's x-perf max-chunk as its step
    ("129", "qcow2", "pc"),     # stop with jobs on a throttled drive; commit with top-node a throttle filter
    ("030", "qcow2", "pc"),     # block-stream: parallel jobs on one chain, their blockers, EIO/ENOSPC via blkdebug
    ("304", "qcow2", "pc"),     # drive-backup / blockdev-backup of a small image with bitmaps
    ("136", "raw", "pc"),       # query-blockstats accounting: invalid/failed requests, stats-intervals, qtest clock
    ("124", "qcow2", "pc"),     # incremental backups and transactions; block_resize of a drive; 128k-cluster target
    ("224", "qcow2", "pc"),     # json: file names of nodes; block-commit's top/base given by them
    ("copy-before-write", "qcow2", "none"),          # on-cbw-error and cbw-timeout (a throttled target)
    ("mirror-ready-cancel-error", "qcow2", "none"),  # a ready mirror's failed final flush: stop, resume, cancel
    ("274", "qcow2", "pc"),     # HMP and active commit into a backing file shorter than the top
    ("248", "qcow2", "pc"),     # mirror paused on ENOSPC of a raw size limit, resumed after blockdev-reopen drops it
]
#: Options the wrapper puts before the test's own, per machine.
MACHINE_OPTIONS = {"none": "", "pc": " -machine pc"}


@pytest.fixture(scope="module")
def check_env() -> Iterator[dict[str, str]]:
    """The environment check needs: the programs and short scratch paths
    (socket paths must fit in sun_path); QEMU_PROG is set per test."""
    if not (SUITE / "check").is_file():
        pytest.fail(f"QEMU's iotests are missing from {CACHE}: run scripts/fetch-qemu-iotests.sh")
    base = Path(tempfile.mkdtemp(prefix="vmd-iot-", dir="/tmp"))
    env = dict(os.environ, TEST_DIR=str(base / "scratch"), SOCK_DIR=str(base / "sock"))
    for machine, options in MACHINE_OPTIONS.items():
        wrapper = base / machine / "vmd"
        wrapper.parent.mkdir()
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m vmd{options} \"$@\"\n")
        wrapper.chmod(0o755)
    for variable, tool in TOOLS.items():
        path = shutil.which(tool)
        assert path is not None, f"{tool} is not installed (scripts/setup.sh installs it)"
        env[variable] = path
    yield env
    shutil.rmtree(base, ignore_errors=True)


def run_check(env: dict[str, str], test: str, fmt: str) -> tuple[str, str, str]:
    """Run one test through check: its status, check's reason and whole output.

    check runs in a session of its own: if it hangs, the test's shell and
    the vmd it started are killed with it (they would hold image locks)."""
    with subprocess.Popen([sys.executable, "check", "--color", "off", f"-{fmt}", test], cwd=SUITE, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as check:
        try:
            output, _ = check.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(check.pid, signal.SIGKILL)
            output, _ = check.communicate()
            pytest.fail(f"check {test} did not finish in {TIMEOUT} s:\n{output}")
    found = re.search(rf"^{test}\s+(pass|fail|not run)\b(.*)$", output.replace("\r", "\n"), re.M)
    assert found is not None, f"check reported nothing for {test}:\n{output}"
    # The status line goes on with times, then check's reason.
    reason = re.sub(r"^.*\]\s+\S+\s+(\(last: [^)]*\)\s+)?", "", found.group(2).strip())
    return found.group(1), reason, output


@pytest.mark.parametrize(("test", "fmt", "machine"), TESTS, ids=[f"{test}-{fmt}" for test, fmt, _ in TESTS])
def test_iotest(check_env: dict[str, str], test: str, fmt: str, machine: str) -> None:
    env = dict(check_env, QEMU_PROG=str(Path(check_env["TEST_DIR"]).parent / machine / "vmd"))
    status, reason, output = run_check(env, test, fmt)
    if status == "not run":
        pytest.skip(f"check did not run {test}: {reason}")
    assert status == "pass", output
