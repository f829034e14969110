"""The block layer: a graph of block nodes, their drivers, and exports.

``node`` defines what every node offers (asynchronous reads and writes),
``graph`` the set of named nodes with QEMU's rules for adding, removing and
sharing them, ``aio`` the worker threads that do the blocking system
calls, and ``drivers`` one module per driver (file, raw, qcow2, null-co).
"""
