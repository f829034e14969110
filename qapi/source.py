"""Where in the schema sources a definition or error comes from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class QAPISchemaPragma:
    """Per-schema pragma settings; shared by every file of one schema."""

    doc_required: bool = False
    command_name_exceptions: list[str] = field(default_factory=list)
    command_returns_exceptions: list[str] = field(default_factory=list)
    member_name_exceptions: list[str] = field(default_factory=list)


class QAPISourceInfo:
    """A file name and line, plus the definition being parsed there.

    Every error message is anchored to one of these, so users can jump
    straight to the offending line.
    """

    def __init__(self, fname: str, line: int,
                 pragma: QAPISchemaPragma | None = None) -> None:
        self.fname = fname
        self.line = line
        self.pragma = pragma if pragma is not None else QAPISchemaPragma()
        self.defn_meta: str | None = None
        self.defn_name: str | None = None

    def at_line(self, line: int) -> QAPISourceInfo:
        """A copy for another line of the same file (one per definition)."""
        info = QAPISourceInfo(self.fname, line, self.pragma)
        return info

    def set_defn(self, meta: str, name: str) -> None:
        """Remember which definition this location belongs to."""
        self.defn_meta = meta
        self.defn_name = name

    def loc(self) -> str:
        """``file:line``, the prefix of every error message."""
        return f"{self.fname}:{self.line}"

    def __repr__(self) -> str:
        return f"QAPISourceInfo({self.loc()!r})"
