"""Block drivers, one module each; importing one registers its opener."""


def load_all() -> None:
    """Import every driver module (each registers itself with the graph)."""
    import importlib
    for name in ("file", "raw", "null", "qcow2"):
        try:
            importlib.import_module(f"vmd.block.drivers.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"vmd.block.drivers.{name}":
                raise
