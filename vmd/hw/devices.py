"""Every device model; importing this module registers their QOM types."""

from vmd.hw import debug_ports, i8042, misc_ports, rtc, serial
from vmd.hw.pci import host as pci_host
from vmd.hw.virtio import blk
from vmd.hw.virtio import serial as virtio_serial

MODULES = (debug_ports, i8042, misc_ports, rtc, serial, pci_host, blk, virtio_serial)
