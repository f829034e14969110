"""vmd's QEMU-compatible command-line parser.

``parse_args(argv)`` returns a :class:`Config` (or a help/version request)
or raises :class:`CliError`, whose text the caller prints before exiting 1.
"""

from vmd.cli.config import (
    DEFAULT_MACHINE,
    SUPPORTED_MACHINES,
    BlockdevConfig,
    ChardevConfig,
    Config,
    DeviceConfig,
    HelpRequest,
    MonitorConfig,
    SmpConfig,
    VersionRequest,
)
from vmd.cli.errors import CliError, OptionError
from vmd.cli.parser import parse_args

__all__ = [
    "DEFAULT_MACHINE", "SUPPORTED_MACHINES", "BlockdevConfig", "ChardevConfig",
    "CliError", "Config", "DeviceConfig", "HelpRequest", "MonitorConfig",
    "OptionError", "SmpConfig", "VersionRequest", "parse_args",
]
