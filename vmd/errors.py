"""The one exception type a command reports failure with (QEMU's Error).

QEMU sends only a handful of error classes (qapi/error.json): everything is
``GenericError`` except a few legacy cases. A handler raises ``QMPError`` with
the human-readable text; the dispatcher turns it into
``{"error": {"class": ..., "desc": ...}}``.
"""

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
DEVICE_NOT_FOUND = "DeviceNotFound"
KVM_MISSING_CAP = "KVMMissingCap"


class QMPError(Exception):
    """A command failed; ``desc`` is shown to the user as is."""

    def __init__(self, desc: str, error_class: str = GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def to_wire(self) -> dict[str, str]:
        """The value of the ``error`` member of a QMP reply."""
        return {"class": self.error_class, "desc": self.desc}
