#!/usr/bin/env python3
"""The floor for any asyncio QMP daemon: the least a uvloop server can do.

It binds the ``-qmp unix:PATH,...`` socket given on its command line,
greets each client as QEMU does and answers every request with an empty
return; it parses nothing else. ``qmp_rtt.py`` times its start to first
reply exactly as it times vmd and QEMU, so the table shows how much of
vmd's start-up is Python and the event loop, and how much is vmd.
"""

import asyncio
import sys

import uvloop

GREETING = (b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, '
            b'"package": ""}, "capabilities": ["oob"]}}\r\n')


class Floor(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(GREETING)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.transport.write(b'{"return": {}}\r\n' * data.count(b'"execute"'))  # type: ignore[attr-defined]


async def serve(path: str) -> None:
    server = await asyncio.get_running_loop().create_unix_server(Floor, path)
    await server.serve_forever()


def main() -> None:
    spec = sys.argv[sys.argv.index("-qmp") + 1]
    uvloop.run(serve(spec[len("unix:"):].split(",")[0]))


if __name__ == "__main__":
    main()
