"""The sync bitmap of a backup (``sync: bitmap``/``incremental``, ``bitmap-mode``).

QEMU 7.2's rules (blockdev.c's do_backup_common, block/backup.c):

- ``sync: incremental`` is ``sync: bitmap`` with ``bitmap-mode: on-success``;
  ``sync: bitmap`` copies what the bitmap marks; ``full`` and ``top`` may
  name a bitmap only to have it synchronised (any mode but ``never``).
- While the job runs the bitmap is frozen (busy, not recording) and an
  anonymous successor records the writes made meanwhile.
- When the job ends, the bitmap is synchronised (the successor takes its
  place: only writes made during the job remain) if it succeeded or the
  mode is ``always``, unless the mode is ``never``; otherwise the successor
  is merged back and nothing is lost. A failed ``always`` job also keeps
  the clusters it had not copied yet.

Everything here belongs to the event loop thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmd._generated.types import BitmapSyncMode, MirrorSyncMode
from vmd.block.dirty_bitmap import Check, DirtyBitmap, abdicate, create_successor, find_bitmap, reclaim
from vmd.block.node import BlockNode
from vmd.errors import QMPError


def check_sync_bitmap(backup: Any, source: BlockNode) -> tuple[MirrorSyncMode, DirtyBitmap | None,
                                                               BitmapSyncMode | None]:
    """The bitmap arguments' checks in QEMU's order; returns the sync mode
    the job runs (``incremental`` becomes ``bitmap``), the bitmap and its mode."""
    sync: MirrorSyncMode = backup.sync
    mode: BitmapSyncMode | None = backup.bitmap_mode
    if backup.bitmap is None:
        if sync in (MirrorSyncMode.INCREMENTAL, MirrorSyncMode.BITMAP):
            raise QMPError(f"must provide a valid bitmap name for '{sync.value}' sync mode")
        if mode is not None:
            raise QMPError("Cannot specify bitmap sync mode without a bitmap")
        return sync, None, None
    bitmap = find_bitmap(source, backup.bitmap)
    if bitmap is None:
        raise QMPError(f"Bitmap '{backup.bitmap}' could not be found")
    if sync == MirrorSyncMode.INCREMENTAL:
        if mode is not None and mode != BitmapSyncMode.ON_SUCCESS:
            raise QMPError(f"Bitmap sync mode must be '{BitmapSyncMode.ON_SUCCESS.value}' when using sync mode "
                           f"'{sync.value}'")
        sync, mode = MirrorSyncMode.BITMAP, BitmapSyncMode.ON_SUCCESS
    if mode is None:
        raise QMPError("Bitmap sync mode must be given when providing a bitmap")
    bitmap.check(Check.ALLOW_RO)
    if sync == MirrorSyncMode.NONE:
        raise QMPError(f"sync mode '{sync.value}' does not produce meaningful bitmap outputs")
    if mode == BitmapSyncMode.NEVER and sync != MirrorSyncMode.BITMAP:
        raise QMPError(f"Bitmap sync mode '{mode.value}' has no meaningful effect when combined with sync mode "
                       f"'{sync.value}'")
    return sync, bitmap, mode


@dataclass
class SyncBitmap:
    """A bitmap frozen for a backup job, and what to do with it at the end."""

    node: BlockNode
    bitmap: DirtyBitmap
    mode: BitmapSyncMode

    @classmethod
    def freeze(cls, node: BlockNode, bitmap: DirtyBitmap, mode: BitmapSyncMode) -> SyncBitmap:
        """backup_job_create: a bitmap to be written must be writable."""
        if mode != BitmapSyncMode.NEVER:
            bitmap.check(Check.DEFAULT)
        create_successor(node, bitmap)
        return cls(node, bitmap, mode)

    def thaw(self) -> None:
        """The job never ran: merge the successor back (a second call, or
        one after ``release``, does nothing)."""
        if self.bitmap.successor is not None:
            reclaim(self.node, self.bitmap)

    def release(self, ok: bool, uncopied: DirtyBitmap | None = None) -> None:
        """backup_cleanup_sync_bitmap, when the job ends."""
        if self.bitmap.successor is None:
            return
        synchronise = (ok or self.mode == BitmapSyncMode.ALWAYS) and self.mode != BitmapSyncMode.NEVER
        result = abdicate(self.node, self.bitmap) if synchronise else reclaim(self.node, self.bitmap)
        if not ok and self.mode == BitmapSyncMode.ALWAYS and uncopied is not None:
            result.merge(uncopied)
