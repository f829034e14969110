"""Character devices: the host side of QEMU's ``-chardev``.

A chardev backend (socket, file, pty, ringbuf, ...) moves bytes between the
host and one front end (a serial port, a monitor). Backends live on the
event loop and never block it. See ``base`` for the contract between the
two sides and ``registry`` for the set of chardevs a daemon owns.
"""
