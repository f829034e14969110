"""Many QMP clients at once, with events flowing and NBD clients doing I/O.

``run_load`` connects ``clients`` raw QMP clients to one vmd, each sending
``commands`` requests one after another with ids of its own, while a driver
client toggles ``stop``/``cont`` (so STOP and RESUME events reach every
negotiated client) and ``nbd_clients`` qemu-io processes write and verify
patterns on disjoint ranges of an exported qcow2 image. It checks that every
reply came to the client that asked, with its id, and that every client saw
every event, and returns the latencies. Used by ``tests/test_load.py`` (a
small run) and ``bench/load.py`` (the big one).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUERIES = ("query-status", "query-name", "query-version", "query-block", "query-named-block-nodes",
           "query-jobs", "query-block-exports", "query-chardev")


@dataclass
class LoadResult:
    replies: int = 0
    events: int = 0
    nbd_ops: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


class _Client:
    """A raw QMP client on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.events: dict[str, int] = {}

    @classmethod
    async def connect(cls, path: Path) -> _Client:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 << 20)
        client = cls(reader, writer)
        assert "QMP" in json.loads(await reader.readline())
        await client.call({"execute": "qmp_capabilities"})
        return client

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; return its reply, counting the events before it."""
        self.writer.write(json.dumps(request).encode())
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("vmd closed the connection")
            message: dict[str, Any] = json.loads(line)
            if "event" in message:
                self.events[message["event"]] = self.events.get(message["event"], 0) + 1
                continue
            return message

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def _worker(client: _Client, number: int, commands: int, result: LoadResult) -> None:
    for i in range(commands):
        request_id = [number, i]
        started = time.perf_counter()
        reply = await client.call({"execute": QUERIES[(number + i) % len(QUERIES)], "id": request_id})
        result.latencies.append(time.perf_counter() - started)
        if reply.get("id") != request_id or "return" not in reply:
            result.errors.append(f"client {number} asked {request_id}, got {str(reply)[:200]}")
        result.replies += 1


async def _toggler(client: _Client, rounds: int) -> None:
    for _ in range(rounds):
        for command in ("stop", "cont"):
            assert await client.call({"execute": command}) == {"return": {}}


async def _nbd_worker(url: str, number: int, ops: int, result: LoadResult) -> None:
    base = number * (4 << 20)
    args: list[str] = []
    for i in range(ops):
        offset = base + (i % 16) * 65536
        pattern = (number * 16 + i) % 250 + 1
        args += ["-c", f"write -P {pattern} {offset} 64k", "-c", f"read -P {pattern} {offset} 64k"]
    process = await asyncio.create_subprocess_exec("qemu-io", "-f", "raw", *args, url,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    text = out.decode(errors="replace")
    if process.returncode != 0 or "failed" in text or "verification" in text:
        result.errors.append(f"NBD client {number}: {text[-300:]}")
    result.nbd_ops += 2 * ops


async def run_load(qmp_path: Path, nbd_url: str | None, clients: int, commands: int,
                   toggles: int, nbd_clients: int = 0, nbd_ops: int = 0) -> LoadResult:
    """Drive vmd as described above; raises AssertionError on a misrouted reply or lost event."""
    result = LoadResult()
    workers = [await _Client.connect(qmp_path) for _ in range(clients)]
    driver = await _Client.connect(qmp_path)
    tasks = [asyncio.create_task(_worker(client, n, commands, result)) for n, client in enumerate(workers)]
    tasks.append(asyncio.create_task(_toggler(driver, toggles)))
    if nbd_url is not None:
        tasks += [asyncio.create_task(_nbd_worker(nbd_url, n, nbd_ops, result)) for n in range(nbd_clients)]
    await asyncio.gather(*tasks)
    # Every event was broadcast before the toggler's last reply; a request sent
    # now is answered after all of them on every connection.
    for n, client in enumerate(workers):
        reply = await client.call({"execute": "query-name", "id": "final"})
        assert reply.get("id") == "final", reply
        seen = (client.events.get("STOP", 0), client.events.get("RESUME", 0))
        if seen != (toggles, toggles):
            result.errors.append(f"client {n} saw STOP/RESUME {seen}, not {toggles} each")
        result.events += sum(client.events.values())
    for client in [*workers, driver]:
        await client.close()
    return result
