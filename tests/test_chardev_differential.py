"""Chardev commands, differentially: the same QMP to QEMU 7.2 and to vmd.

Each test runs one sequence of commands on a fresh connection to both
daemons and compares every reply: errors exactly, returns as values after
replacing the per-daemon temporary directory by ``TMP``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import QEMU, RawQMP, running_qemu, running_vmd

pytestmark = pytest.mark.qemu


class Daemon:
    """One side of the comparison: its QMP socket and scratch directory."""

    def __init__(self, qmp_path: Path, scratch: Path) -> None:
        self.qmp_path = qmp_path
        self.scratch = scratch


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon]]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    vmd_dir = tmp_path_factory.mktemp("vmd")
    qemu_dir = tmp_path_factory.mktemp("qemu")
    with running_vmd(vmd_dir) as vmd, running_qemu(qemu_dir) as qemu:
        yield Daemon(vmd.qmp_path, vmd_dir), Daemon(qemu, qemu_dir)


def run(daemon: Daemon, requests: list[dict[str, Any]]) -> list[Any]:
    """Send each request (``TMP`` in strings means the scratch dir)."""
    replies = []
    with RawQMP(daemon.qmp_path) as qmp:
        qmp.negotiate()
        for request in requests:
            text = json.dumps(request).replace("TMP", str(daemon.scratch))
            reply = qmp.command(text)
            replies.append(json.loads(json.dumps(reply).replace(str(daemon.scratch), "TMP")))
    return replies


def compare(daemons: tuple[Daemon, Daemon], requests: list[dict[str, Any]]) -> list[Any]:
    vmd, qemu = daemons
    ours, theirs = run(vmd, requests), run(qemu, requests)
    for request, mine, reference in zip(requests, ours, theirs, strict=True):
        assert mine == reference, f"{request}: vmd {mine} != qemu {reference}"
    return ours


def add(chardev_id: str, kind: str, **data: Any) -> dict[str, Any]:
    return {"execute": "chardev-add",
            "arguments": {"id": chardev_id, "backend": {"type": kind, "data": data}}}


def remove(chardev_id: str) -> dict[str, Any]:
    return {"execute": "chardev-remove", "arguments": {"id": chardev_id}}


def query() -> dict[str, Any]:
    return {"execute": "query-chardev"}


def test_add_query_remove_null_and_ringbuf(daemons: tuple[Daemon, Daemon]) -> None:
    replies = compare(daemons, [
        add("n0", "null"), add("rb0", "ringbuf", size=1024), add("m0", "memory"),
        {"execute": "ringbuf-write", "arguments": {"device": "rb0", "data": "hello"}},
        {"execute": "ringbuf-read", "arguments": {"device": "rb0", "size": 3}},
        {"execute": "ringbuf-read", "arguments": {"device": "rb0", "size": 10, "format": "base64"}},
        remove("n0"), remove("rb0"), remove("m0"),
    ])
    assert replies[4] == {"return": "hel"}


def test_query_chardev_lists_what_was_added(daemons: tuple[Daemon, Daemon]) -> None:
    vmd, qemu = daemons
    requests = [add("q0", "null"), add("q1", "ringbuf"), query(), remove("q0"), remove("q1")]
    ours, theirs = run(vmd, requests), run(qemu, requests)
    def added(reply: dict[str, Any]) -> list[dict[str, Any]]:
        return sorted((i for i in reply["return"] if i["label"] in ("q0", "q1")),
                      key=lambda info: info["label"])
    assert added(ours[2]) == added(theirs[2])
    assert ours[3:] == theirs[3:]


def test_file_chardev(daemons: tuple[Daemon, Daemon]) -> None:
    compare(daemons, [
        add("f0", "file", out="TMP/out.log"),
        add("f1", "file", out="TMP/no/such/dir/out.log"),
        remove("f0"),
    ])


@pytest.mark.parametrize("requests", [
    [add("dup", "null"), add("dup", "null"), remove("dup")],
    [add("bad", "nosuch")],
    [add("rb3", "ringbuf", size=3)],
    [add("sock", "socket", server=False, addr={"type": "unix", "data": {"path": "TMP/missing.sock"}})],
    [remove("nosuch")],
    [remove("compat_monitor0")],
    [{"execute": "chardev-send-break", "arguments": {"id": "nosuch"}}],
    [{"execute": "chardev-change", "arguments": {"id": "nosuch", "backend": {"type": "null", "data": {}}}}],
    [{"execute": "ringbuf-read", "arguments": {"device": "nosuch", "size": 1}}],
    [add("nr", "null"), {"execute": "ringbuf-read", "arguments": {"device": "nr", "size": 1}}, remove("nr")],
    [add("zr", "ringbuf"), {"execute": "ringbuf-read", "arguments": {"device": "zr", "size": 0}}, remove("zr")],
    [add("br", "ringbuf"),
     {"execute": "ringbuf-write", "arguments": {"device": "br", "data": "%%%", "format": "base64"}},
     remove("br")],
], ids=["duplicate-id", "unknown-backend", "ringbuf-size", "socket-missing-path", "remove-unknown",
        "remove-in-use", "send-break-unknown", "change-unknown", "read-unknown", "read-not-ringbuf",
        "read-size-zero", "bad-base64"])
def test_errors_match(daemons: tuple[Daemon, Daemon], requests: list[dict[str, Any]]) -> None:
    compare(daemons, requests)


def test_change_ringbuf_to_null(daemons: tuple[Daemon, Daemon]) -> None:
    compare(daemons, [add("c0", "ringbuf"),
                      {"execute": "chardev-change",
                       "arguments": {"id": "c0", "backend": {"type": "null", "data": {}}}},
                      remove("c0")])


def test_monitor_chardev_in_query(daemons: tuple[Daemon, Daemon]) -> None:
    vmd, qemu = daemons
    ours, theirs = run(vmd, [query()]), run(qemu, [query()])
    def monitor(reply: dict[str, Any]) -> dict[str, Any]:
        info = next(i for i in reply["return"] if i["label"] == "compat_monitor0")
        return {**info, "filename": info["filename"].rsplit("/", 1)[-1]}
    assert monitor(ours[0]) == {**monitor(theirs[0]),
                                "filename": "vmd-qmp.sock,server=on"}
    assert monitor(theirs[0])["filename"] == "qemu-qmp.sock,server=on"


def test_backend_names_are_qemus(daemons: tuple[Daemon, Daemon]) -> None:
    vmd, qemu = daemons
    ours = {b["name"] for b in run(vmd, [{"execute": "query-chardev-backends"}])[0]["return"]}
    theirs = {b["name"] for b in run(qemu, [{"execute": "query-chardev-backends"}])[0]["return"]}
    assert ours <= theirs
    assert {"socket", "file", "pipe", "pty", "null", "ringbuf", "stdio", "mux"} <= ours
