"""Every device model; importing this module registers their QOM types."""

from vmd.hw import debug_ports, i8042, misc_ports, rtc, serial

MODULES = (debug_ports, i8042, misc_ports, rtc, serial)
