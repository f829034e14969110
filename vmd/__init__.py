"""vmd: a QEMU-style virtual machine and storage daemon, driven over QMP."""

__version__ = "0.1.0"
