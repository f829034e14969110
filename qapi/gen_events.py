"""Generate ``events.py``: one sender per event plus EVENTS.

``qapi_event_send_<c_name>(emitter, <members as keyword arguments>)``
calls ``emitter.emit('NAME', data)`` where ``data`` is the wire object
(members that are None and optional left out), or None for an event
without members.  Boxed events take the whole typed value as ``arg``.
"""

from __future__ import annotations

from .common import c_name, py_member
from .gen import QAPIGenPython, annotation
from .gen_types import q
from .schema import QAPISchema, QAPISchemaEvent

_IMPORTS = '''\
from __future__ import annotations

from typing import Any

from vmd import qapi_runtime as rt

from . import types as t
'''


def _sender(event: QAPISchemaEvent) -> str:
    """The send function for one event."""
    fname = f"qapi_event_send_{c_name(event.name.lower())}"
    arg = event.arg_type
    if arg is None or (arg.is_empty() and not event.boxed):
        return (f"def {fname}(emitter: Any) -> None:\n"
                f"    emitter.emit({q(event.name)}, None)\n")
    if event.boxed:
        return (f"def {fname}(emitter: Any, arg: {annotation(arg, 't.')}) "
                "-> None:\n"
                f"    emitter.emit({q(event.name)}, rt.to_wire(arg))\n")
    params = []
    for m in arg.members:
        ann = annotation(m.resolved(), "t.")
        default = " | None = None" if m.optional else ""
        params.append(f"{py_member(m.name)}: {ann}{default}")
    rows = "".join(
        f"        ({q(m.name)}, {py_member(m.name)}, {m.optional}),\n"
        for m in arg.members)
    sig = ",\n        ".join(["emitter: Any", "*"] + params)
    return (f"def {fname}(\n        {sig}) -> None:\n"
            f"    emitter.emit({q(event.name)}, rt.members_to_wire((\n"
            f"{rows}    )))\n")


def gen_events(schema: QAPISchema, schema_name: str) -> QAPIGenPython:
    """The events module for ``schema``."""
    gen = QAPIGenPython("events.py", schema_name,
                        "QMP event senders (see qapi/gen_events.py).")
    events = [e for e in schema.entities if isinstance(e, QAPISchemaEvent)]
    body = "".join("\n\n" + _sender(event) for event in events)
    imports = _IMPORTS
    if "t." not in body:
        imports = imports.replace("\nfrom . import types as t\n", "")
    gen.add(imports + body)
    names = "".join(f"    {q(e.name)},\n" for e in events)
    gen.add(f"\n\nEVENTS: tuple[str, ...] = (\n{names})\n")
    return gen
