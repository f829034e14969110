"""Naming rules shared by the checker and the generators."""

from __future__ import annotations

import keyword
import re

_NON_WORD = re.compile(r"[^A-Za-z0-9_]")


def c_name(name: str) -> str:
    """QEMU's C name: every character other than [A-Za-z0-9_] becomes '_'.

    Handler names (``qmp_<c_name>``) and event senders follow this rule so
    they match QEMU's function names one for one.
    """
    return _NON_WORD.sub("_", name)


def py_member(name: str) -> str:
    """Python identifier for a member or argument name.

    Rule: c_name(), then a trailing '_' if the result is a hard Python
    keyword (``from`` -> ``from_``, ``if`` -> ``if_``).  QAPI names always start
    with a letter, so no other fix-up is needed.  Soft keywords such as
    ``type`` and ``case`` stay as they are.
    """
    ident = c_name(name)
    if keyword.iskeyword(ident):
        ident += "_"
    return ident


def py_enum_member(value: str) -> str:
    """Python enum member name for an enum value.

    Upper-cased c_name(); a value starting with a digit gets a '_' prefix
    (``1g`` -> ``_1G``).
    """
    ident = c_name(value).upper()
    if ident[:1].isdigit():
        ident = "_" + ident
    return ident


def py_type(name: str) -> str:
    """Python class/function-suffix name of a schema type."""
    return c_name(name)



DEFAULT_ENABLED: frozenset[str] = frozenset(
    {"CONFIG_KVM", "CONFIG_LINUX", "CONFIG_POSIX",
     # block layer: as in the reference QEMU 7.2 build (Debian), so enums
     # such as BlockdevDriver, BlockdevAioOptions, PreallocMode and
     # Qcow2CompressionType list the same values; vmd refuses at open or
     # create time what it does not implement
     "CONFIG_LINUX_IO_URING", "CONFIG_POSIX_FALLOCATE", "CONFIG_REPLICATION",
     "CONFIG_ZSTD", "HAVE_HOST_BLOCK_DEVICE"})


def eval_cond(cond: object, enabled: frozenset[str]) -> bool:
    """Evaluate an 'if' condition against the enabled feature flags.

    vmd has no C preprocessor, so a condition names flags that are either
    in ``enabled`` or not; false means the entity does not exist at all.
    """
    if cond is None:
        return True
    if isinstance(cond, str):
        return cond in enabled
    assert isinstance(cond, dict)
    (op, arg), = cond.items()
    if op == "not":
        return not eval_cond(arg, enabled)
    results = [eval_cond(sub, enabled) for sub in arg]
    return all(results) if op == "all" else any(results)
