"""PCI: configuration space, BARs, INTx and MSI-X, the bus and the pc chipset.

``config`` (the 256-byte space and its write rules), ``device`` (a
function: BARs, INTx, QOM properties), ``msix``, ``bus`` (placement,
configuration mechanism #1, BAR mapping), ``host`` (i440FX/PIIX3 of the
``pc`` board), ``info`` (``query-pci``/``info pci``).
"""
