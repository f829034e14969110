"""The block graph against QEMU 7.2: edges, permissions, users, error texts.

Each scenario runs the same QMP on ``qemu-system-x86_64 -M none`` and on
vmd, each over its own copy of the images (the two would lock each other
out of shared ones), and compares ``x-debug-query-block-graph`` (edges
with perm and shared-perm; ids mapped to names, QEMU's random implicit
``#blockNNN`` names mapped to ``parent.edge``), ``query-block-exports``,
the nodes' ``ro`` flags and every reply, errors included.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from tests.harness import QEMU, RawQMP, running_qemu, running_vmd
from vmd._generated.types import BlockPermission
from vmd.block.drivers.qcow2.node import close_image, open_image
from vmd.block.edge import Transaction, chain_edges, freeze_chain, replace_node, unfreeze
from vmd.errors import QMPError
from vmd.qapi_runtime import to_wire
from vmd.qmp.json_writer import dumps

pytestmark = pytest.mark.qemu

Scenario = Callable[[Path], list[dict[str, Any]]]


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def make_images(root: Path) -> None:
    qemu_img("create", "-f", "qcow2", str(root / "base.qcow2"), "1M")
    qemu_img("create", "-f", "qcow2", "-b", str(root / "base.qcow2"), "-F", "qcow2", str(root / "top.qcow2"))
    for name in ("a", "b", "c", "ov"):
        qemu_img("create", "-f", "qcow2", str(root / f"{name}.qcow2"), "1M")
    qemu_img("create", "-f", "raw", str(root / "plain.raw"), "1M")


def cmd(command: str, /, **arguments: Any) -> dict[str, Any]:
    return {"execute": command, "arguments": arguments}


def add(**options: Any) -> dict[str, Any]:
    return cmd("blockdev-add", **{key.replace("_", "-"): value for key, value in options.items()})


def file(root: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {"driver": "file", "filename": str(root / name), **extra}


def export(export_id: str, node: str, writable: bool = False, **extra: Any) -> dict[str, Any]:
    return cmd("block-export-add", type="nbd", id=export_id, **{"node-name": node}, writable=writable, **extra)


def nbd_start(root: Path) -> dict[str, Any]:
    return cmd("nbd-server-start", addr={"type": "unix", "data": {"path": str(root / "nbd.sock")}})


GRAPH = cmd("x-debug-query-block-graph")
EXPORTS = cmd("query-block-exports")
NODES = cmd("query-named-block-nodes", flat=True)
DEPTHS = cmd("query-named-block-nodes")


def normal_graph(graph: dict[str, Any]) -> list[tuple[str, str, str, list[str], list[str]]]:
    """Edges as (parent, edge, child, perm, shared), names stable across daemons."""
    names = {node["id"]: node["name"] for node in graph["nodes"]}
    kinds = {node["id"]: node["type"] for node in graph["nodes"]}
    edges = graph["edges"]
    # Implicit nodes get named after the first named parent that holds them.
    for _ in range(len(edges)):
        for edge in edges:
            child = edge["child"]
            if names[child].startswith("#block") and not names[edge["parent"]].startswith("#block"):
                names[child] = f"{names[edge['parent']]}.{edge['name']}"
    for node_id, kind in kinds.items():
        if kind == "block-backend":
            names[node_id] = "user:" + ",".join(sorted(names[e["child"]] for e in edges if e["parent"] == node_id))
    return sorted((names[e["parent"]], e["name"], names[e["child"]], sorted(e["perm"]), sorted(e["shared-perm"]))
                  for e in edges)


def normal(request: dict[str, Any], reply: dict[str, Any]) -> Any:
    if "return" not in reply:
        return reply
    if request is GRAPH:
        return normal_graph(reply["return"])
    if request is DEPTHS:
        return sorted((n["node-name"], n["backing_file_depth"], n["image"]["format"])
                      for n in reply["return"] if not n["node-name"].startswith("#block"))
    if request is NODES:
        return sorted((n["node-name"] if not n["node-name"].startswith("#block") else "#", n["ro"], n["drv"])
                      for n in reply["return"])
    return reply


@contextmanager
def daemons(tmp_path: Path) -> Iterator[tuple[tuple[Path, Path], tuple[Path, Path]]]:
    """(vmd QMP socket, image dir) and (QEMU QMP socket, image dir)."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with ExitStack() as stack:
        pairs = []
        for name in ("vmd", "qemu"):
            root = tmp_path / f"{name}-images"
            root.mkdir()
            make_images(root)
            where = tmp_path / name
            where.mkdir()
            if name == "vmd":
                sock = stack.enter_context(running_vmd(where)).qmp_path
            else:
                sock = stack.enter_context(running_qemu(where))
            pairs.append((sock, root))
        yield pairs[0], pairs[1]


def run(sock: Path, requests: list[dict[str, Any]]) -> list[Any]:
    with RawQMP(sock) as qmp:
        qmp.negotiate()
        return [normal(request, qmp.command(json.dumps(request))) for request in requests]


def compare(tmp_path: Path, scenario: Scenario) -> tuple[list[Any], Path]:
    """Run ``scenario`` on both; returns vmd's replies and image dir."""
    with daemons(tmp_path) as ((vmd, vmd_root), (qemu, qemu_root)):
        ours, theirs = run(vmd, scenario(vmd_root)), run(qemu, scenario(qemu_root))
        requests = scenario(vmd_root)
        for request, mine, reference in zip(requests, ours, theirs, strict=True):
            text = json.dumps(request).replace(str(vmd_root), "ROOT")
            assert mine == reference, f"{text}:\nvmd  {mine}\nqemu {reference}"
    return ours, vmd_root


def test_chains_read_only_nodes_and_filters(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        return [
            add(driver="qcow2", node_name="top", file=file(root, "top.qcow2")),
            GRAPH,
            add(driver="qcow2", node_name="ro", read_only=True, file=file(root, "a.qcow2", **{"node-name": "rof"})),
            add(driver="raw", node_name="r", file=file(root, "plain.raw")),
            add(driver="null-co", node_name="n"),
            GRAPH, NODES,
        ]
    compare(tmp_path, scenario)


def test_exports_take_their_edges(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        return [
            add(driver="qcow2", node_name="top", file=file(root, "top.qcow2")),
            add(driver="qcow2", node_name="ro", read_only=True, file=file(root, "a.qcow2")),
            nbd_start(root),
            export("e1", "top", writable=True), export("e2", "top", name="again", writable=True),
            export("e3", "ro"), export("e4", "ro", writable=True, name="w"),
            GRAPH, EXPORTS,
            cmd("block_resize", node_name="top", size=2 << 20),
            cmd("block-export-del", id="e2"), cmd("block-export-del", id="e1"),
            cmd("block_resize", **{"node-name": "top"}, size=2 << 20),
            GRAPH, EXPORTS,
        ]
    compare(tmp_path, scenario)


def test_permission_conflicts(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        return [
            add(driver="file", node_name="af", filename=str(root / "a.qcow2")),
            add(driver="qcow2", node_name="a", file="af"),
            nbd_start(root),
            export("w", "af", writable=True), export("r", "af"),
            cmd("block_resize", **{"node-name": "af"}, size=4 << 20),
            GRAPH,
        ]
    compare(tmp_path, scenario)


def test_two_nodes_on_one_file(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        return [
            # A file node nobody uses holds nothing: a qcow2 node may follow.
            add(driver="file", node_name="f1", filename=str(root / "a.qcow2")),
            add(driver="qcow2", node_name="q1", file=file(root, "a.qcow2")),
            add(driver="qcow2", node_name="q2", file=file(root, "a.qcow2")),
            add(driver="qcow2", node_name="q3", read_only=True, file=file(root, "a.qcow2")),
            add(driver="raw", node_name="r1", file=file(root, "plain.raw")),
            add(driver="raw", node_name="r2", file=file(root, "plain.raw")),
            GRAPH,
        ]
    compare(tmp_path, scenario)


def test_blockdev_del_of_busy_nodes(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        return [
            add(driver="file", node_name="bf", filename=str(root / "base.qcow2")),
            add(driver="qcow2", node_name="base", file="bf", backing=None),
            add(driver="qcow2", node_name="ov", file=file(root, "ov.qcow2", **{"node-name": "of"}), backing=None),
            cmd("blockdev-snapshot", node="base", overlay="ov"),
            cmd("blockdev-del", **{"node-name": "base"}), cmd("blockdev-del", **{"node-name": "bf"}),
            cmd("blockdev-del", **{"node-name": "of"}), cmd("blockdev-del", **{"node-name": "nope"}),
            nbd_start(root), export("e", "ov"),
            cmd("blockdev-del", **{"node-name": "ov"}),
            cmd("block-export-del", id="e"),
            cmd("blockdev-del", **{"node-name": "ov"}),
            cmd("blockdev-del", **{"node-name": "base"}),
            cmd("blockdev-del", **{"node-name": "bf"}),
            GRAPH,
        ]
    compare(tmp_path, scenario)


def test_snapshot_moves_a_writable_export_and_checks_cycles(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        return [
            add(driver="qcow2", node_name="base", file=file(root, "base.qcow2"), backing=None),
            add(driver="qcow2", node_name="ov", file=file(root, "ov.qcow2"), backing=None),
            add(driver="qcow2", node_name="a", file=file(root, "a.qcow2"), backing=None),
            add(driver="null-co", node_name="n0"),
            cmd("blockdev-snapshot", node="a", overlay="a"),
            cmd("blockdev-snapshot", node="n0", overlay="n0"),
            cmd("blockdev-snapshot", node="nope", overlay="a"),
            nbd_start(root), export("e", "base", writable=True),
            cmd("blockdev-snapshot", node="base", overlay="base"),
            cmd("blockdev-snapshot", node="base", overlay="ov"),
            GRAPH, EXPORTS, NODES,
            cmd("blockdev-snapshot", node="ov", overlay="base"),
            cmd("blockdev-snapshot", node="base", overlay="a"),
            cmd("blockdev-snapshot", node="ov", overlay="a"),
            cmd("blockdev-snapshot", node="a", overlay="ov"),
            GRAPH, EXPORTS, NODES,
        ]
    compare(tmp_path, scenario)


def test_writes_through_a_moved_export_land_in_the_overlay(tmp_path: Path) -> None:
    with daemons(tmp_path) as ((vmd, root), _):
        with RawQMP(vmd) as qmp:
            qmp.negotiate()
            for request in (add(driver="qcow2", node_name="base", file=file(root, "base.qcow2"), backing=None),
                            add(driver="qcow2", node_name="ov", file=file(root, "ov.qcow2"), backing=None),
                            nbd_start(root), export("e", "base", writable=True),
                            cmd("blockdev-snapshot", node="base", overlay="ov")):
                assert qmp.command(json.dumps(request)) == {"return": {}}, request
            uri = f"nbd+unix:///base?socket={root / 'nbd.sock'}"
            io = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x77 64k 64k", uri],
                                capture_output=True, text=True)
            assert io.returncode == 0 and "wrote 65536" in io.stdout, io
            for request in (cmd("block-export-del", id="e"), cmd("blockdev-del", **{"node-name": "ov"}),
                            cmd("blockdev-del", **{"node-name": "base"})):
                assert qmp.command(json.dumps(request)) == {"return": {}}, request
        mapped = subprocess.run(["qemu-img", "map", "--output=json", "-f", "qcow2", str(root / "ov.qcow2")],
                                capture_output=True, text=True, check=True)
        data = [e for e in json.loads(mapped.stdout) if e["data"]]
        assert [(e["start"], e["length"], e["depth"]) for e in data] == [(65536, 65536, 0)]
        base = subprocess.run(["qemu-img", "map", "--output=json", str(root / "base.qcow2")],
                              capture_output=True, text=True, check=True)
        assert not any(e["data"] for e in json.loads(base.stdout))
        check = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x77 64k 64k", str(root / "ov.qcow2")],
                               capture_output=True, text=True)
        assert check.returncode == 0 and "verification failed" not in check.stdout, check


def test_graph_changes_refuse_cycles(tmp_path: Path) -> None:
    """Issue 14: a snapshot onto itself or through a two-node loop used to be
    accepted and left the next query spinning forever."""
    def scenario(root: Path) -> list[dict[str, Any]]:
        return [
            add(driver="qcow2", node_name="b", file=file(root, "b.qcow2"), backing=None),
            add(driver="qcow2", node_name="c", file=file(root, "c.qcow2"), backing=None),
            cmd("blockdev-snapshot", node="b", overlay="b"),
            cmd("blockdev-snapshot", node="b", overlay="c"),
            cmd("blockdev-snapshot", node="c", overlay="b"),
            GRAPH, NODES,
        ]
    replies, _ = compare(tmp_path, scenario)
    assert replies[2]["error"]["desc"] == "Making 'b' a backing child of 'b' would create a cycle"
    assert replies[4]["error"]["desc"] == "Making 'c' a backing child of 'b' would create a cycle"


def make_chain(root: Path, depth: int) -> Path:
    """``depth`` qcow2 images, each the backing file of the next (copies of
    one small template with the backing name patched: fast to make)."""
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", str(root / "c00000.qcow2"), "64k")
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", "-b", "c00000.qcow2", "-F", "qcow2",
             str(root / "template.qcow2"))
    template = (root / "template.qcow2").read_bytes()
    for index in range(1, depth):
        (root / f"c{index:05d}.qcow2").write_bytes(
            template.replace(b"c00000.qcow2", f"c{index - 1:05d}.qcow2".encode()))
    return root / f"c{depth - 1:05d}.qcow2"


def test_a_deep_backing_chain_opens_answers_and_closes(tmp_path: Path) -> None:
    """Issue 14: a 2500-deep chain hit Python's recursion limit (graph walks,
    chain opening, closing and nested replies now use explicit stacks)."""
    depth = 2500
    top = make_chain(tmp_path, depth)
    (tmp_path / "vmd").mkdir()
    with running_vmd(tmp_path / "vmd") as vmd, RawQMP(vmd.qmp_path, timeout=120) as qmp:
        qmp.negotiate()
        assert qmp.command(add(driver="qcow2", node_name="top", file=file(tmp_path, top.name))) == {"return": {}}
        nodes = qmp.command(NODES)["return"]
        assert len(nodes) == 2 * depth and sum(node["ro"] for node in nodes) == 2 * depth - 2
        edges = qmp.command(GRAPH)["return"]["edges"]
        assert sum(edge["name"] == "backing" for edge in edges) == depth - 1
        assert qmp.command(cmd("blockdev-del", **{"node-name": "top"})) == {"return": {}}
        assert qmp.command(NODES) == {"return": []}
        assert vmd.stop() == 0


def test_replies_nest_deeper_than_the_recursion_limit() -> None:
    """A chain's non-flat ImageInfo nests once per image; converting and
    encoding it must not recurse."""
    deep: dict[str, Any] = {}
    level = deep
    for index in range(5000):
        level["backing-image"] = {"filename": f"c{index}", "format": BlockPermission.WRITE}
        level = level["backing-image"]
    text = dumps(to_wire(deep))
    assert text.count('"backing-image": {"filename": ') == 5000 and text.count('"write"') == 5000
    assert text.startswith('{"backing-image": {"filename": "c0", "format": "write", "backing-image": ')
    assert text.endswith('"format": "write"}' + "}" * 5000)


# -- one dispatcher: commands of all clients take turns --------------------------------------


async def test_two_clients_changing_the_graph_at_once(tmp_path: Path) -> None:
    """Each round both clients add a node, fail to add a broken one and
    query; a failing blockdev-add used to close the other client's nodes."""
    rounds = 15
    (tmp_path / "vmd").mkdir()
    for who in ("x", "y"):
        for index in range(rounds):
            qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / f"{who}{index}.qcow2"), "1M")
    (tmp_path / "broken.qcow2").write_bytes(b"not an image" * 100)
    with running_vmd(tmp_path / "vmd") as vmd:
        clients = [QMPClient(who) for who in ("x", "y")]
        for client in clients:
            await client.connect(str(vmd.qmp_path))

        async def work(client: QMPClient, who: str) -> None:
            for index in range(rounds):
                await client.execute("blockdev-add", {
                    "driver": "qcow2", "node-name": f"{who}{index}",
                    "file": {"driver": "file", "filename": str(tmp_path / f"{who}{index}.qcow2")}})
                with pytest.raises(ExecuteError, match="Image is not in qcow2 format"):
                    await client.execute("blockdev-add", {
                        "driver": "qcow2", "node-name": f"{who}-broken",
                        "file": {"driver": "file", "filename": str(tmp_path / "broken.qcow2")}})
                names = {node["node-name"] for node in await client.execute("query-named-block-nodes")}
                assert {f"{who}{i}" for i in range(index + 1)} <= names

        await asyncio.gather(work(clients[0], "x"), work(clients[1], "y"))
        nodes = await clients[0].execute("query-named-block-nodes", {"flat": True})
        named = sorted(node["node-name"] for node in nodes if not node["node-name"].startswith("#"))
        assert named == sorted(f"{who}{i}" for who in "xy" for i in range(rounds))
        assert len(nodes) == 4 * rounds  # each qcow2 node and its file, nothing half-closed
        for client in clients:
            await client.disconnect()


def test_a_client_that_hangs_up_does_not_cancel_its_command(tmp_path: Path) -> None:
    (tmp_path / "vmd").mkdir()
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "a.qcow2"), "1M")
    with running_vmd(tmp_path / "vmd") as vmd:
        with RawQMP(vmd.qmp_path) as quitter:
            quitter.negotiate()
            quitter.send(json.dumps(add(driver="qcow2", node_name="a", file=file(tmp_path, "a.qcow2"))))
        with RawQMP(vmd.qmp_path) as qmp:
            qmp.negotiate()
            graph = normal_graph(qmp.command(GRAPH)["return"])
            assert graph == [("a", "file", "a.file", ["consistent-read", "resize", "write"],
                              ["consistent-read", "write-unchanged"])]
            assert qmp.command(cmd("blockdev-del", **{"node-name": "a"})) == {"return": {}}
        assert vmd.stop() == 0
    check = subprocess.run(["qemu-img", "check", str(tmp_path / "a.qcow2")], capture_output=True, text=True)
    assert check.returncode == 0, check


def test_shutdown_stops_exports_and_leaves_images_clean(tmp_path: Path) -> None:
    (tmp_path / "vmd").mkdir()
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(tmp_path / "a.qcow2"), "4M")
    with running_vmd(tmp_path / "vmd") as vmd, RawQMP(vmd.qmp_path) as qmp:
        qmp.negotiate()
        for request in (add(driver="qcow2", node_name="a", file=file(tmp_path, "a.qcow2")),
                        nbd_start(tmp_path), export("e", "a", writable=True)):
            assert qmp.command(json.dumps(request)) == {"return": {}}, request
        uri = f"nbd+unix:///a?socket={tmp_path / 'nbd.sock'}"
        io = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5c 0 1M", uri], capture_output=True, text=True)
        assert io.returncode == 0, io
        assert _dirty(tmp_path / "a.qcow2")  # lazy refcounts: dirty while open
        assert vmd.stop() == 0
    assert not _dirty(tmp_path / "a.qcow2")
    check = subprocess.run(["qemu-img", "check", str(tmp_path / "a.qcow2")], capture_output=True, text=True)
    assert check.returncode == 0 and "No errors were found" in check.stdout, check
    io = subprocess.run(["qemu-io", "-r", "-c", "read -P 0x5c 0 1M", str(tmp_path / "a.qcow2")],
                        capture_output=True, text=True)
    assert io.returncode == 0 and "verification failed" not in io.stdout, io


def _dirty(path: Path) -> bool:
    """The qcow2 header's dirty bit (incompatible feature bit 0)."""
    with open(path, "rb") as image:
        image.seek(72)
        return bool(int.from_bytes(image.read(8), "big") & 1)


def test_copy_on_read_filter(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        subprocess.run(["qemu-io", "-c", "write -P 0x11 0 64k", str(root / "base.qcow2")],
                       check=True, capture_output=True)
        return [
            add(driver="qcow2", node_name="top", file=file(root, "top.qcow2")),
            add(driver="copy-on-read", node_name="cor", file="top"),
            GRAPH, NODES, DEPTHS,
            nbd_start(root), export("e", "cor"),
            GRAPH,
            add(driver="copy-on-read", node_name="cor2", file={"driver": "null-co"}),
            cmd("blockdev-snapshot", node="top", overlay="cor2"),
        ]
    with daemons(tmp_path) as ((vmd, vmd_root), (qemu, qemu_root)):
        for sock, root in ((vmd, vmd_root), (qemu, qemu_root)):
            requests = scenario(root)
            with RawQMP(sock) as qmp:
                qmp.negotiate()
                replies = [normal(request, qmp.command(json.dumps(request))) for request in requests]
                read = subprocess.run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0x11 0 64k",
                                       f"nbd+unix:///cor?socket={root / 'nbd.sock'}"], capture_output=True, text=True)
                assert read.returncode == 0 and "verification failed" not in read.stdout, read
                for request in (cmd("block-export-del", id="e"), cmd("blockdev-del", **{"node-name": "cor"}),
                                cmd("blockdev-del", **{"node-name": "top"})):
                    assert qmp.command(json.dumps(request)) == {"return": {}}, request
            if root == vmd_root:
                ours = replies
            else:
                for request, mine, reference in zip(requests, ours, replies, strict=True):
                    assert mine == reference, f"{request}:\nvmd  {mine}\nqemu {reference}"
            # The read copied the backing file's data into the top image.
            mapped = subprocess.run(["qemu-img", "map", "--output=json", str(root / "top.qcow2")],
                                    capture_output=True, text=True, check=True)
            assert [(e["start"], e["length"], e["depth"]) for e in json.loads(mapped.stdout)][0] == (0, 65536, 0)


def test_locks_exclude_qemu_and_vmd_both_ways(tmp_path: Path) -> None:
    """The lock bytes follow the permissions: qemu-io, qemu-img and a QEMU
    process see an image vmd holds as vmd sees one QEMU holds."""
    with daemons(tmp_path) as ((vmd, _), (qemu, _)):
        image = tmp_path / "shared.qcow2"
        qemu_img("create", "-f", "qcow2", str(image), "1M")
        openers = [add(driver="qcow2", node_name="w", file={"driver": "file", "filename": str(image)}),
                   add(driver="qcow2", node_name="r", read_only=True,
                       file={"driver": "file", "filename": str(image)}),
                   add(driver="file", node_name="f", filename=str(image))]
        tools = [["qemu-io", "-c", "read 0 512", str(image)], ["qemu-io", "-r", "-c", "read 0 512", str(image)],
                 ["qemu-img", "info", str(image)]]
        seen = []
        for holder, opener in ((vmd, qemu), (qemu, vmd)):
            with RawQMP(holder) as held, RawQMP(opener) as other:
                held.negotiate()
                other.negotiate()
                assert held.command(json.dumps(openers[0])) == {"return": {}}
                replies = [other.command(json.dumps(request)) for request in openers]
                outputs = [subprocess.run(tool, capture_output=True, text=True).stderr for tool in tools]
                for name in ("w", "r", "f"):
                    for qmp in (held, other):
                        qmp.command(json.dumps(cmd("blockdev-del", **{"node-name": name})))
            seen.append((replies, outputs))
        assert seen[0] == seen[1]
        replies, outputs = seen[0]
        assert replies == [{"error": {"class": "GenericError", "desc": 'Failed to get "write" lock'}},
                           {"error": {"class": "GenericError", "desc": 'Failed to get shared "write" lock'}},
                           {"return": {}}]
        assert outputs[0].startswith(f"qemu-io: can't open device {image}: Failed to get \"write\" lock\n")


def test_snapshot_sync_moves_a_writable_export(tmp_path: Path) -> None:
    def scenario(root: Path) -> list[dict[str, Any]]:
        return [
            add(driver="qcow2", node_name="base", file=file(root, "base.qcow2")),
            nbd_start(root), export("e", "base", writable=True),
            cmd("blockdev-snapshot-sync", **{"node-name": "base", "snapshot-file": str(root / "sync.qcow2"),
                                             "snapshot-node-name": "sync", "format": "qcow2"}),
            cmd("blockdev-snapshot-sync", **{"node-name": "base", "snapshot-file": str(root / "sync2.qcow2"),
                                             "snapshot-node-name": "sync2", "format": "qcow2"}),
            GRAPH, EXPORTS, NODES, DEPTHS,
        ]
    compare(tmp_path, scenario)


# -- what block jobs build on ------------------------------------------------------------------


async def test_change_backing_file_and_frozen_chains(tmp_path: Path) -> None:
    """A job that drops ``mid`` from base <- mid <- top rewrites top's header
    and holds the chain frozen meanwhile."""
    make_images(tmp_path)
    qemu_img("create", "-f", "qcow2", "-b", str(tmp_path / "top.qcow2"), "-F", "qcow2", str(tmp_path / "up.qcow2"))
    up = await open_image(str(tmp_path / "up.qcow2"))
    try:
        mid = up.backing
        assert mid is not None and mid.backing is not None
        frozen = freeze_chain(up, mid.backing)
        before = [edge.frozen for edge in chain_edges(up, None)]
        text = f"^Cannot change 'backing' link from '{up.node_name}' to '{mid.node_name}'$"
        with pytest.raises(QMPError, match=text):
            freeze_chain(up, None)
        assert [edge.frozen for edge in chain_edges(up, None)] == before  # all or nothing
        with pytest.raises(QMPError, match="^Cannot change 'backing' link to "):
            with Transaction() as tran:
                replace_node(mid, mid.backing, tran)
        unfreeze(frozen)
        assert not any(edge.frozen for edge in chain_edges(up, None))
        await up.change_backing_file(str(tmp_path / "base.qcow2"), "qcow2")
    finally:
        await close_image(up)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(tmp_path / "up.qcow2")],
                                     capture_output=True, text=True, check=True).stdout)
    assert (info["backing-filename"], info["backing-filename-format"]) == (str(tmp_path / "base.qcow2"), "qcow2")
    check = subprocess.run(["qemu-img", "check", str(tmp_path / "up.qcow2")], capture_output=True, text=True)
    assert check.returncode == 0, check


def test_snapshot_while_an_nbd_client_writes(tmp_path: Path) -> None:
    """The snapshot drains the export: requests in flight finish on the old
    top, later ones go to the overlay; both images stay consistent."""
    (tmp_path / "vmd").mkdir()
    make_images(tmp_path)
    with running_vmd(tmp_path / "vmd") as vmd, RawQMP(vmd.qmp_path, timeout=60) as qmp:
        qmp.negotiate()
        for request in (add(driver="qcow2", node_name="base", file=file(tmp_path, "base.qcow2"), backing=None),
                        add(driver="qcow2", node_name="ov", file=file(tmp_path, "ov.qcow2"), backing=None),
                        nbd_start(tmp_path), export("e", "base", writable=True)):
            assert qmp.command(json.dumps(request)) == {"return": {}}, request
        uri = f"nbd+unix:///base?socket={tmp_path / 'nbd.sock'}"
        writer = subprocess.Popen(["qemu-img", "bench", "-w", "-f", "raw", "-t", "none", "-s", "4k", "-d", "8",
                                   "-c", "4000", "--pattern=0x3c", uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # Once the writes reach the image, snapshot under them.
            size = (tmp_path / "base.qcow2").stat().st_size
            deadline = time.monotonic() + 30
            while (tmp_path / "base.qcow2").stat().st_size == size and writer.poll() is None:
                assert time.monotonic() < deadline, "the NBD writer never wrote"
                time.sleep(0.005)
            assert qmp.command(json.dumps(cmd("blockdev-snapshot", node="base", overlay="ov"))) == {"return": {}}
        finally:
            out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        assert qmp.command(json.dumps(EXPORTS))["return"][0]["node-name"] == "ov"
        for request in (cmd("block-export-del", id="e"), cmd("blockdev-del", **{"node-name": "ov"}),
                        cmd("blockdev-del", **{"node-name": "base"})):
            assert qmp.command(json.dumps(request)) == {"return": {}}, request
    for image in ("base.qcow2", "ov.qcow2"):
        check = subprocess.run(["qemu-img", "check", str(tmp_path / image)], capture_output=True, text=True)
        assert check.returncode == 0, check
    # The overlay over the base reads the pattern everywhere the client wrote.
    chain = "json:" + json.dumps({
        "driver": "qcow2", "file": {"driver": "file", "filename": str(tmp_path / "ov.qcow2")},
        "backing": {"driver": "qcow2", "file": {"driver": "file", "filename": str(tmp_path / "base.qcow2")}}})
    # (qemu-img bench wraps around the 1 MiB disk: every byte was written.)
    read = subprocess.run(["qemu-io", "-r", "-c", "read -P 0x3c 0 1M", chain], capture_output=True, text=True)
    assert read.returncode == 0 and "verification failed" not in read.stdout, read
