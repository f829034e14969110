"""The error the type system raises; the text is QEMU's, shown as is.

It lives here, below the monitors and the command line, so that device
code never imports the QMP server to fail: QMP handlers turn it into a
``GenericError`` and the command line prints it after the option.
"""


class QOMError(Exception):
    """Creating or configuring an object failed."""


class PropertyValueError(QOMError):
    """A property refused a value; ``create_device`` names the property
    (QEMU's "Property 'T.p' doesn't take value 'v'")."""
