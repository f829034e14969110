"""Node file names against QEMU 7.2 (bdrv_refresh_filename, vmd.block.filename).

The same graphs are built in ``qemu-system-x86_64 -M none`` and in vmd, each
over its own copy of the images; ``query-named-block-nodes`` must show the
same ``file``, image ``filename``, ``backing_file`` and
``full-backing-filename`` for every named node: plain names where opening
the name alone gives the node, ``json:{...}`` (QEMU's key order, byte for
byte) where options or an overridden backing file make the node differ.
``block-commit`` finds its ``top`` and ``base`` by such names, as iotest 224
does, and a running commit shows its filter in the names above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import test_block_jobs as jobs
from tests.harness import QEMU
from tests.test_block_jobs import qimg, qio

pytestmark = pytest.mark.qemu
if QEMU is None:  # pragma: no cover - QEMU is installed by scripts/setup.sh
    pytestmark = pytest.mark.skip("qemu-system-x86_64 is not installed")

Step = tuple[str, dict[str, Any]]
NAMES: Step = ("query-named-block-nodes", {})


def _names(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Each named node's names (implicit ``#block`` numbering differs)."""
    return {node["node-name"]: [node["file"], node["image"]["filename"], node.get("backing_file"),
                                node["image"].get("backing-filename"), node["image"].get("full-backing-filename")]
            for node in nodes if not node["node-name"].startswith("#")}


def _clean(result: list[Any], root: Path) -> list[Any]:
    for index, line in enumerate(result):
        if line[0] == "return" and line[1] == "query-named-block-nodes":
            result[index] = ("names", _names(line[2]))
    return jobs.normalise(result, root)


def setup(root: Path) -> None:
    """base <- mid <- top (absolute names in the headers), rel over base
    by a relative name, base <- h2 <- h3 (absolute, then relative), an
    overlay without a backing file, a raw file."""
    qimg("create", "-f", "qcow2", root / "base.qcow2", "4M")
    qimg("create", "-f", "qcow2", "-b", root / "base.qcow2", "-F", "qcow2", root / "mid.qcow2")
    qio(root / "mid.qcow2", "write -P 1 0 1M")
    qimg("create", "-f", "qcow2", "-b", root / "mid.qcow2", "-F", "qcow2", root / "top.qcow2")
    qimg("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", root / "rel.qcow2")
    qimg("create", "-f", "qcow2", "-b", root / "base.qcow2", "-F", "qcow2", root / "h2.qcow2")
    qimg("create", "-f", "qcow2", "-b", "h2.qcow2", "-F", "qcow2", root / "h3.qcow2")
    qimg("create", "-f", "qcow2", root / "ov.qcow2", "1G")
    qimg("create", "-f", "raw", root / "plain.raw", "1M")


def file(root: Path, name: str) -> dict[str, Any]:
    return {"driver": "file", "filename": str(root / name)}


def add(name: str, driver: str, **options: Any) -> Step:
    return ("blockdev-add", {"node-name": name, "driver": driver, **options})


def commit(job: str, top: str, base: str, **extra: Any) -> Step:
    return ("block-commit", {"job-id": job, "device": "top", "top": top, "base": base, "speed": 1, **extra})


def test_names_and_commit_by_json_names_same_as_qemu(tmp_path: Path) -> None:
    """iotest 224's chain (explicit backing options, null-co at the bottom:
    every image's name becomes json:) committed by those names, with and
    without a filter node name; then the other kinds of node."""
    def steps(root: Path) -> list[Any]:
        base_opts = (f'"backing": {{"driver": "null-co"}}, "driver": "qcow2", '
                     f'"file": {{"driver": "file", "filename": "{root}/base.qcow2"}}')
        base = f"json:{{{base_opts}}}"
        mid = (f'json:{{"backing": {{{base_opts}}}, "driver": "qcow2", '
               f'"file": {{"driver": "file", "filename": "{root}/mid.qcow2"}}}}')
        chain = add("top", "qcow2", file=file(root, "top.qcow2"), backing={
            "node-name": "mid", "driver": "qcow2", "file": file(root, "mid.qcow2"), "backing": {
                "node-name": "base", "driver": "qcow2", "file": file(root, "base.qcow2"),
                "backing": {"driver": "null-co"}}})
        running = [jobs.wait("JOB_STATUS_CHANGE", status="running"), NAMES]
        return [
            chain, NAMES,
            commit("c1", "json:{}", base), commit("c1", mid, "json:{}"), commit("c1", mid, mid),
            commit("c1", mid, base, **{"filter-node-name": "cf"}), *running,
            ("job-cancel", {"id": "c1"}), jobs.wait("JOB_STATUS_CHANGE", id="c1", status="null"),
            commit("c2", mid, base), *running,
            ("job-cancel", {"id": "c2"}), jobs.wait("JOB_STATUS_CHANGE", id="c2", status="null"),
            add("rel", "qcow2", file=file(root, "rel.qcow2"), **{"read-only": True}),
            add("h3", "qcow2", file=file(root, "h3.qcow2"), **{"read-only": True}),
            add("nob", "qcow2", file=file(root, "rel.qcow2"), backing=None, **{"read-only": True}),
            add("raw", "raw", file=file(root, "plain.raw"), **{"read-only": True}),
            add("slice", "raw", file=file(root, "plain.raw"), offset=512, size=1024, **{"read-only": True}),
            add("n1", "null-co"), add("n2", "null-co", size=1 << 20), add("n3", "null-co", **{"latency-ns": 5}),
            add("n4", "null-co", **{"read-zeroes": True}),
            add("cor", "copy-on-read", file="raw"),
            add("dbg", "blkdebug", image=file(root, "plain.raw"), **{"read-only": True}),
            add("dbg2", "blkdebug", image=file(root, "plain.raw"), align=4096, **{"read-only": True}),
            add("fmt", "qcow2", file={"driver": "blkdebug", "image": file(root, "base.qcow2")},
                **{"read-only": True}),
            NAMES,
            add("ov", "qcow2", file=file(root, "ov.qcow2")), ("blockdev-snapshot", {"node": "n4", "overlay": "ov"}),
            NAMES,
        ]
    results = jobs.run_both(tmp_path, setup, steps, clean=_clean)
    assert jobs.replies(results["vmd"]) == jobs.replies(results["qemu"])
    names = [line[1] for line in results["vmd"] if line[0] == "names"]
    assert names[0]["mid"][0] == names[0]["mid"][1] and names[0]["mid"][0].startswith("json:")
    assert '"driver": "commit_top"' in names[1]["top"][0] and "commit_top" not in names[2]["top"][0]
    assert names[3]["rel"][0] == "<dir>/rel.qcow2" and names[3]["n1"][0] == "null-co://"
    assert names[3]["h3"][:3] == ["<dir>/h3.qcow2", "<dir>/h3.qcow2", "<dir>/h2.qcow2"]
    assert names[4]["ov"][0].startswith('json:{"backing": {"read-zeroes": true, "driver": "null-co"}')
    assert names[3]["slice"][0].startswith("json:") and names[3]["dbg"][0] == "blkdebug::<dir>/plain.raw"
