"""QOM: the type registry, device properties and the device tree.

QEMU describes every device by a type (name, parent, abstract or not,
interfaces, properties with defaults) and builds instances from it; the
same description answers ``-device help``, ``-device TYPE,help``,
``qom-list-types`` and ``device-list-properties``. ``types`` holds the
registry, ``property`` the typed properties, ``device`` the base class a
device model derives from, ``help`` and ``qtree`` the text QEMU prints.
"""
