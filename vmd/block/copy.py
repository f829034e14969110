"""One range copied from a node to another, with the side that failed.

Block jobs (commit, stream) and the copy-before-write filter copy data
and decide what to do with a failure by where it happened: QEMU's
``on-source-error`` applies to a failed read, ``on-target-error`` to a
failed write. ``CopyFailed`` carries that answer.
"""

from __future__ import annotations

from vmd.block.node import BlockNode


class CopyFailed(Exception):
    """A copy failed; ``is_read`` says whether reading the source did, and
    ``done`` how many bytes at the start of the copy had been copied."""

    def __init__(self, error: Exception, is_read: bool, done: int = 0) -> None:
        super().__init__(str(error))
        self.error = error
        self.is_read = is_read
        self.done = done


async def copy_range(source: BlockNode, target: BlockNode, offset: int, buf: memoryview) -> None:
    """Read ``len(buf)`` bytes at ``offset`` from ``source`` into ``buf``
    and write them to ``target`` at the same offset."""
    try:
        await source.read(offset, buf)
    except Exception as error:
        raise CopyFailed(error, True) from error
    try:
        await target.write(offset, buf)
    except Exception as error:
        raise CopyFailed(error, False) from error
