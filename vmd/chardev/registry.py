"""The chardevs a daemon owns, by id: QEMU's ``/chardevs`` container.

``add`` opens a backend built from a QAPI ``ChardevBackend`` (the QMP
``chardev-add`` shape; ``-chardev`` options are translated to it first by
``vmd.chardev.cli``), so both paths create the same objects and fail with
the same messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from vmd.chardev.base import Chardev, ChardevError
from vmd.qmp.errors import QMPError

if TYPE_CHECKING:  # the char types load with the first chardev command
    from vmd._generated.types import ChardevBackend, ShutdownCause

# kind -> factory(chardev id, the kind's options, registry) -> Chardev
Factory = Callable[[str, Any, "ChardevRegistry"], Chardev]
_FACTORIES: dict[str, Factory] = {}


def backend(*kinds: str) -> Callable[[Factory], Factory]:
    """Register a backend factory for ``kinds`` (a class decorator too)."""
    def register(factory: Factory) -> Factory:
        for kind in kinds:
            _FACTORIES[kind] = factory
        return factory
    return register


def _load_backends() -> None:
    # Importing the modules registers their backends.
    from vmd.chardev import (  # noqa: F401
        file,
        mux,
        null,
        pty,
        ringbuf,
        socket,
        stdio,
    )


def backend_names() -> list[str]:
    """The kinds this vmd can create (``query-chardev-backends``)."""
    _load_backends()
    return list(_FACTORIES)


class ChardevRegistry:
    """All chardevs of the daemon; owned by the event loop thread."""

    def __init__(self) -> None:
        self._chardevs: dict[str, Chardev] = {}
        # Set by the daemon: how a mux's Ctrl-A x ends vmd.
        self.quit_handler: Callable[[ShutdownCause], None] | None = None

    def __iter__(self) -> Iterator[Chardev]:
        return iter(list(self._chardevs.values()))

    def get(self, chardev_id: str) -> Chardev | None:
        return self._chardevs.get(chardev_id)

    def find(self, chardev_id: str) -> Chardev:
        chardev = self._chardevs.get(chardev_id)
        if chardev is None:
            raise QMPError(f"Chardev '{chardev_id}' not found")
        return chardev

    async def add(self, chardev_id: str, spec: ChardevBackend) -> Chardev:
        """Create and open a chardev (``chardev-add``)."""
        if chardev_id in self._chardevs:
            raise QMPError(f"Chardev with id '{chardev_id}' already exists")
        chardev = await self.open_backend(chardev_id, spec)
        self._chardevs[chardev_id] = chardev
        return chardev

    async def open_backend(self, chardev_id: str, spec: ChardevBackend
                           ) -> Chardev:
        """Build and open a backend, wrapping failures as QEMU does."""
        _load_backends()
        kind = str(spec.type)
        factory = _FACTORIES.get(kind)
        try:
            if factory is None:
                raise ChardevError(
                    f"backend '{kind}' is not supported by vmd")
            options = getattr(spec.u, "data", None)
            chardev = factory(chardev_id, options, self)
            await chardev.open()
        except ChardevError as error:
            raise QMPError(
                f"Failed to add chardev '{chardev_id}': {error}") from None
        return chardev

    def insert(self, chardev: Chardev) -> None:
        """Register a chardev opened elsewhere (a QMP monitor's listener)."""
        if chardev.id in self._chardevs:
            raise QMPError(f"Chardev with id '{chardev.id}' already exists")
        self._chardevs[chardev.id] = chardev

    async def remove(self, chardev_id: str) -> None:
        """Close and forget a chardev no front end uses (``chardev-remove``)."""
        chardev = self.find(chardev_id)
        if chardev.frontend is not None or getattr(chardev, "always_busy", False):
            raise QMPError(f"Chardev '{chardev_id}' is busy")
        del self._chardevs[chardev_id]
        await chardev.close()

    async def change(self, chardev_id: str, spec: ChardevBackend) -> Chardev:
        """Swap the backend under the live front end (``chardev-change``)."""
        old = self._chardevs.get(chardev_id)
        if old is None:
            raise QMPError(f"Chardev '{chardev_id}' does not exist")
        if spec.type == "mux" or old.kind == "mux":
            raise QMPError("Mux device hotswap not supported yet")
        new = await self.open_backend(chardev_id, spec)
        frontend = old.frontend
        old.detach()
        if frontend is not None and old.connected:
            frontend.chr_close()
        await old.close()
        self._chardevs[chardev_id] = new
        if frontend is not None:
            new.attach(frontend)
        return new

    async def close_all(self) -> None:
        for chardev in list(self._chardevs.values()):
            await chardev.close()
        self._chardevs.clear()
