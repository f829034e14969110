"""Device models and the buses they sit on (Firecracker's shape).

A device knows nothing of KVM or the event loop: it has ``read(offset,
size) -> int``, ``write(offset, size, value)`` and ``reset()``, and is
tested by feeding it bytes. The machine turns vCPU exits into accesses on
an ``IoBus`` (``bus``), gives devices IRQ lines (``irq``), chardevs
(``charport``) and a clock (``clock``) through the ``DeviceContext``
(``context``) it passes to ``realize``.

Threads: device methods run with the BQL held, on a vCPU thread (guest
accesses) or on the event loop thread (chardev input, timers); they never
block. Importing ``vmd.hw.devices`` registers every device type.
"""
