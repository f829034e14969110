"""QMP's error type, re-exported from ``vmd.errors`` for the QMP modules.

The type lives at the bottom of the package so that the block layer and
jobs raise it without importing anything of the QMP server.
"""

from vmd.errors import COMMAND_NOT_FOUND, DEVICE_NOT_ACTIVE, DEVICE_NOT_FOUND, GENERIC_ERROR, KVM_MISSING_CAP, QMPError

__all__ = ["COMMAND_NOT_FOUND", "DEVICE_NOT_ACTIVE", "DEVICE_NOT_FOUND", "GENERIC_ERROR", "KVM_MISSING_CAP",
           "QMPError"]
