"""The ``null`` chardev: output is discarded, no input ever arrives.

QEMU's null backend never reports CHR_EVENT_OPENED; vmd calls it
connected so that front ends write freely. Either way nothing is read and
every write is taken whole.
"""

from __future__ import annotations

from typing import Any

from vmd.chardev.base import Chardev
from vmd.chardev.registry import ChardevRegistry, backend


class NullChardev(Chardev):
    kind = "null"

    async def open(self) -> None:
        self.set_connected(True)


@backend("null")
def _create(chardev_id: str, options: Any, registry: ChardevRegistry) -> Chardev:
    return NullChardev(chardev_id)
