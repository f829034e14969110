"""Schema errors: every message starts with ``file:line:``."""

from __future__ import annotations

from .source import QAPISourceInfo


class QAPIError(Exception):
    """A problem in a schema, pinned to the place it was found."""

    def __init__(self, info: QAPISourceInfo | None, msg: str,
                 col: int | None = None) -> None:
        super().__init__(msg)
        self.info = info
        self.msg = msg
        self.col = col

    def __str__(self) -> str:
        if self.info is None:
            return self.msg
        loc = self.info.loc()
        if self.col is not None:
            loc += f":{self.col}"
        return f"{loc}: {self.msg}"


class QAPIParseError(QAPIError):
    """Syntax error; carries a column as well as a line."""


class QAPISemError(QAPIError):
    """A well-formed schema that means something invalid."""
