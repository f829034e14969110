"""``block-set-write-threshold`` and the ``BLOCK_WRITE_THRESHOLD`` event.

A management tool sets a threshold on a node (typically a thin volume's
allocation limit); the first write that reaches past it fires the event
once and clears the threshold, as in QEMU's block/write-threshold.c.
"""

from __future__ import annotations

from typing import Any

from vmd._generated import events
from vmd.block.node import BlockNode


def qmp_block_set_write_threshold(ctx: Any, node_name: str, write_threshold: int) -> None:
    node = ctx.daemon.block.find(node_name)
    emitter = ctx.daemon.events

    def exceeded(node: BlockNode, threshold: int, end: int) -> None:
        events.qapi_event_send_block_write_threshold(
            emitter, node_name=node.node_name, amount_exceeded=end - threshold, write_threshold=threshold)

    node.on_threshold = exceeded
    node.write_threshold = write_threshold
