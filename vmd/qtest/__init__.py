"""QEMU's qtest: the test, not guest code, drives the machine (``-accel qtest``).

``protocol`` is the line protocol without I/O, ``clock`` the virtual clock
the test moves with ``clock_step``, ``frontend`` puts the protocol on the
``-qtest`` chardev.
"""
