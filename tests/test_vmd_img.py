"""vmd-img against qemu-img / qemu-io 7.2 as oracles (real files in tmp_path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.qemu_tools import qimg, qio

ROOT = Path(__file__).resolve().parent.parent
HAVE_QEMU = shutil.which("qemu-img") is not None and shutil.which("qemu-io") is not None
needs_qemu = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-img/qemu-io not installed")


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, cwd=cwd)


def vimg(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmd.img", *map(str, args)], capture_output=True, text=True,
                          check=False, cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})




def same_json(a: object, b: object) -> None:
    """Equal, except actual-size (allocation details differ slightly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys()
        for key in a:
            if key == "actual-size":
                assert abs(a[key] - b[key]) <= 1 << 20
            else:
                same_json(a[key], b[key])
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same_json(x, y)
    else:
        assert a == b


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    """base.qcow2 <- top.qcow2 with data, zero and compressed clusters in both."""
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qimg("create", "-q", "-f", "qcow2", base, "8M")
    qio(base, "write -P 0x11 0 192k", "write -c -P 0x22 1M 64k", "write -P 0x33 3M 4k")
    qimg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "12M")
    qio(top, "write -P 0xaa 64k 64k", "write -z 2M 128k", "write -c -P 0x44 4M 64k", "write -P 1 5M 4k",
        "write -z -u 0 64k")
    return top


# -- without QEMU ------------------------------------------------------------------


def test_help_lists_every_subcommand() -> None:
    result = vimg("--help")
    assert result.returncode == 0
    for command in ("create", "info", "check", "map"):
        assert f"  {command} " in result.stdout
        sub = vimg(command, "--help")
        assert sub.returncode == 0 and sub.stdout.startswith(f"usage: vmd-img {command} ")


def test_bad_command_and_option() -> None:
    result = vimg("frob")
    assert result.returncode == 1 and result.stderr.startswith("vmd-img: Command not found: frob")
    result = vimg("info", "--bogus", "x")
    assert result.returncode == 1 and "vmd-img: unrecognized option '--bogus'" in result.stderr


def test_missing_file(tmp_path: Path) -> None:
    for command in ("info", "check", "map"):
        result = vimg(command, tmp_path / "nope.qcow2")
        assert result.returncode == 1
        assert result.stderr == (f"vmd-img: Could not open '{tmp_path}/nope.qcow2': Could not open "
                                 f"'{tmp_path}/nope.qcow2': No such file or directory\n")


def test_not_qcow2_and_truncated(tmp_path: Path) -> None:
    raw = tmp_path / "r.raw"
    assert vimg("create", "-q", raw, "1M").returncode == 0
    result = vimg("info", "-f", "qcow2", raw)
    assert result.returncode == 1
    assert result.stderr == f"vmd-img: Could not open '{raw}': Image is not in qcow2 format\n"
    good = tmp_path / "g.qcow2"
    assert vimg("create", "-q", "-f", "qcow2", good, "1M").returncode == 0
    short = tmp_path / "t.qcow2"
    short.write_bytes(good.read_bytes()[:100])
    result = vimg("check", short)
    assert result.returncode == 1
    assert result.stderr == f"vmd-img: Could not open '{short}': qcow2 header too short\n"
    assert "Traceback" not in result.stderr
    result = vimg("check", "-r", "all", good)
    assert result.returncode == 1 and "not supported" in result.stderr


# -- against qemu-img -----------------------------------------------------------------


@pytest.mark.qemu
@needs_qemu
@pytest.mark.parametrize("args", [
    ["-f", "qcow2", "x", "1G"],
    ["-f", "qcow2", "-o", "cluster_size=4k,lazy_refcounts=on", "x", "10M"],
    ["-f", "qcow2", "-o", "compat=0.10", "x", "1M"],
    ["-f", "raw", "x", "1M"],
    ["-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "x"],
    ["-f", "qcow2", "x", "1000"],
])
def test_create_matches_qemu_img(tmp_path: Path, args: list[str]) -> None:
    for side in ("q", "v"):
        (tmp_path / side).mkdir()
        run("qemu-img", "create", "-q", "-f", "qcow2", tmp_path / side / "b.qcow2", "3M")
    ours = vimg("create", *args, cwd=tmp_path / "v")
    theirs = run("qemu-img", "create", *args, cwd=tmp_path / "q")
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    check = run("qemu-img", "check", "--output=json", "x", cwd=tmp_path / "v")
    assert check.returncode == (63 if "raw" in args else 0), check.stdout + check.stderr
    same_json(json.loads(run("qemu-img", "info", "--output=json", "x", cwd=tmp_path / "v").stdout),
              json.loads(run("qemu-img", "info", "--output=json", "x", cwd=tmp_path / "q").stdout))
    assert (tmp_path / "v" / "x").read_bytes() == (tmp_path / "q" / "x").read_bytes()


@pytest.mark.qemu
@needs_qemu
def test_create_errors_match(tmp_path: Path) -> None:
    for args in (["-f", "qcow2", "x"], ["-f", "qcow2", "-o", "foo=bar", "x", "1M"],
                 ["-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "x", "1M"],
                 ["-f", "qcow2", "-o", "cluster_size=1000", "x", "1M"], ["-f", "qcow2", "x", "abc"]):
        ours = vimg("create", *args, cwd=tmp_path)
        theirs = run("qemu-img", "create", *args, cwd=tmp_path)
        assert ours.returncode == theirs.returncode == 1
        assert ours.stdout == theirs.stdout
        assert ours.stderr == theirs.stderr.replace("qemu-img", "vmd-img")
        assert not (tmp_path / "x").exists()


@pytest.mark.qemu
@needs_qemu
def test_info_check_map_match_qemu_img(chain: Path) -> None:
    images = [chain, chain.parent / "base.qcow2"]
    raw = chain.parent / "r.raw"
    qimg("create", "-q", "-f", "raw", raw, "1M")
    qio(raw, "write -P 7 128k 4k")
    images.append(raw)
    for path in images:
        for args in (["info", "--output=json"], ["info", "--output=json", "--backing-chain"],
                     ["map", "--output=json"], ["check", "--output=json"]):
            ours, theirs = vimg(*args, path), run("qemu-img", *args, path)
            assert ours.returncode == theirs.returncode, ours.stderr
            if theirs.returncode == 0:
                same_json(json.loads(ours.stdout), json.loads(theirs.stdout))
        for args in (["info"], ["check"], ["info", "--backing-chain"]):
            ours, theirs = vimg(*args, path), run("qemu-img", *args, path)
            assert ours.returncode == theirs.returncode
            if "info" in args:
                strip = [line for line in ours.stdout.splitlines() if not line.startswith("disk size")]
                assert strip == [line for line in theirs.stdout.splitlines() if not line.startswith("disk size")]
            else:
                assert ours.stdout == theirs.stdout
        ours, theirs = vimg("map", path), run("qemu-img", "map", path)
        assert ours.returncode == theirs.returncode and ours.stdout == theirs.stdout


def _set_refcount(path: Path, cluster: int, value: int) -> None:
    """Write one 16-bit refcount straight into the first refcount block."""
    data = path.read_bytes()
    cs = 1 << int.from_bytes(data[20:24], "big")
    reftable = int.from_bytes(data[48:56], "big")
    block = int.from_bytes(data[reftable:reftable + 8], "big")
    with path.open("r+b") as handle:
        handle.seek(block + 2 * cluster)
        handle.write(value.to_bytes(2, "big"))
    assert cs


@pytest.mark.qemu
@needs_qemu
def test_check_finds_leaks(tmp_path: Path) -> None:
    img = tmp_path / "leak.qcow2"
    qimg("create", "-q", "-f", "qcow2", img, "64M")
    qio(img, "write -P 1 64k 64k")
    size = img.stat().st_size
    with img.open("ab") as handle:
        handle.write(bytes(2 * 65536))
    _set_refcount(img, size // 65536, 1)
    _set_refcount(img, size // 65536 + 1, 2)
    ours, theirs = vimg("check", img), run("qemu-img", "check", img)
    assert ours.returncode == theirs.returncode == 3
    assert ours.stdout == theirs.stdout
    assert "2 leaked clusters were found on the image." in ours.stdout
    assert ours.stderr == theirs.stderr
    assert f"Leaked cluster {size // 65536} refcount=1 reference=0" in ours.stderr
    ours, theirs = vimg("check", "--output=json", img), run("qemu-img", "check", "--output=json", img)
    assert ours.returncode == 3 and json.loads(ours.stdout) == json.loads(theirs.stdout)


@pytest.mark.qemu
@needs_qemu
def test_check_finds_corruption(tmp_path: Path) -> None:
    img = tmp_path / "bad.qcow2"
    qimg("create", "-q", "-f", "qcow2", img, "64M")
    qio(img, "write -P 1 64k 64k")
    before = img.read_bytes()
    _set_refcount(img, 5, 0)   # the data cluster: header, reftable, refblock, L1, L2, data
    corrupted = img.read_bytes()
    ours, theirs = vimg("check", img), run("qemu-img", "check", img)
    assert ours.returncode == theirs.returncode == 2
    assert ours.stdout == theirs.stdout and ours.stderr == theirs.stderr
    assert "ERROR cluster 5 refcount=0 reference=1" in ours.stderr
    assert img.read_bytes() == corrupted != before   # read-only: nothing written
    ours, theirs = vimg("check", "--output=json", img), run("qemu-img", "check", "--output=json", img)
    assert ours.returncode == 2 and json.loads(ours.stdout) == json.loads(theirs.stdout)


@pytest.mark.qemu
@needs_qemu
def test_check_progress_and_raw(tmp_path: Path) -> None:
    img = tmp_path / "p.qcow2"
    assert vimg("create", "-q", "-f", "qcow2", img, "1G").returncode == 0
    result = vimg("check", "-p", img)
    assert result.returncode == 0 and "(100.00/100%)" in result.stderr
    assert result.stdout.startswith("No errors were found on the image.\n")
    raw = tmp_path / "r.raw"
    assert vimg("create", "-q", "-o", "preallocation=full", raw, "3M").returncode == 0
    assert raw.stat().st_size == 3 << 20
    result = vimg("check", raw)
    assert result.returncode == 63 and result.stderr == "vmd-img: This image format does not support checks\n"
