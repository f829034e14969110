"""Plain records for the modules that every vmd start imports.

``@dataclass`` builds each class's methods with ``exec`` at import (about
0.3 ms a class), and ``typing.NamedTuple`` compiles every string annotation
(0.1-0.5 ms a class); the twenty such classes on the way to vmd's first
reply cost a fifth of its start-up. A record instead lists its fields in
``__slots__`` and writes its own typed ``__init__``; this base adds what
the dataclass gave: equality and a repr, from those fields.
"""

from __future__ import annotations

from typing import ClassVar


class Record:
    """Equality and repr from the fields: the ``__slots__`` of the class and its bases."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._fields = cls._fields + tuple(cls.__dict__.get("__slots__", ()))

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(
            getattr(self, name) == getattr(other, name) for name in self._fields)

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"
