"""Block drivers, one module each; importing one registers its opener."""


def load_all() -> None:
    """Import every driver module (each registers itself with the graph)."""
    from vmd.block.drivers import (  # noqa: F401
        blkdebug,
        cbw,
        cor,
        file,
        null,
        qcow2,
        raw,
        snapshot_access,
        throttle,
    )
