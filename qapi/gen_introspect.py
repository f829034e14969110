"""Generate ``introspect.py``: the reply of ``query-qmp-schema``.

Follows QEMU 7.2's introspection rules:

* commands and events first, in definition order, under their real
  names; a missing argument or return type is the empty object type;
* then every type they reference, transitively, in the order of first
  reference, with names masked as "0", "1", ... (arrays are named
  "[<element name>]"); unreferenced types are left out;
* sized integer types collapse to ``int`` (and their arrays to ``[int]``);
* enums carry both ``members`` and the deprecated ``values``; optional
  object members carry ``"default": None``; unions add ``tag`` and
  ``variants`` (with an entry for every enum value, the empty object
  for branches without members); ``allow-oob`` appears only when true,
  ``features`` only when non-empty.
"""

from __future__ import annotations

import pprint
from typing import Any

from .gen import QAPIGenPython
from .schema import (
    QAPISchema,
    QAPISchemaAlternateType,
    QAPISchemaArrayType,
    QAPISchemaBuiltinType,
    QAPISchemaCommand,
    QAPISchemaEntity,
    QAPISchemaEnumType,
    QAPISchemaEvent,
    QAPISchemaObjectType,
    QAPISchemaType,
    QAPISchemaVisitor,
)

SchemaInfo = dict[str, Any]


class IntrospectVisitor(QAPISchemaVisitor):
    """Collects SchemaInfo entries; types only once something uses them."""

    def __init__(self, schema: QAPISchema) -> None:
        self.schema = schema
        self.entries: list[tuple[SchemaInfo, str | None]] = []
        self._used: list[QAPISchemaType] = []
        self._names: dict[str, str] = {}

    def visit_needed(self, entity: QAPISchemaEntity) -> bool:
        # Types are visited from visit_end(), once we know they are used.
        return not isinstance(entity, QAPISchemaType)

    def visit_end(self) -> None:
        # _used grows while we walk it: each type enqueues what it uses.
        i = 0
        while i < len(self._used):
            self._used[i].visit(self)
            i += 1

    def _name(self, name: str) -> str:
        """Masked name of a non-builtin, non-array type."""
        return self._names.setdefault(name, str(len(self._names)))

    def _use_type(self, typ: QAPISchemaType) -> str:
        """Enqueue ``typ`` (if new) and return the name to refer to it."""
        if typ.json_type() == "int":
            typ = self.schema.lookup_type("int")
        elif (isinstance(typ, QAPISchemaArrayType)
              and typ.element().json_type() == "int"):
            typ = self.schema.resolve_type("intList", None, "introspection")
        if typ not in self._used:
            self._used.append(typ)
        if isinstance(typ, QAPISchemaBuiltinType):
            return typ.name
        if isinstance(typ, QAPISchemaArrayType):
            return f"[{self._use_type(typ.element())}]"
        return self._name(typ.name)

    def _entry(self, name: str, meta: str, body: SchemaInfo,
               features: list[str], comment: str | None = None) -> None:
        """Record one SchemaInfo: common members first, then the rest."""
        entry: SchemaInfo = {"name": name, "meta-type": meta}
        if features:
            entry["features"] = list(features)
        entry.update(body)
        self.entries.append((entry, comment))

    def _masked(self, typ: QAPISchemaType) -> tuple[str, str]:
        """Masked name plus a comment mapping it back to the schema."""
        name = self._name(typ.name)
        return name, f'"{name}" = {typ.name}'

    def visit_builtin_type(self, typ: QAPISchemaBuiltinType) -> None:
        self._entry(typ.name, "builtin", {"json-type": typ.json_type()}, [])

    def visit_enum_type(self, typ: QAPISchemaEnumType) -> None:
        members: list[SchemaInfo] = []
        for m in typ.members:
            member: SchemaInfo = {"name": m.name}
            if m.features:
                member["features"] = list(m.features)
            members.append(member)
        name, comment = self._masked(typ)
        self._entry(name, "enum",
                    {"members": members, "values": typ.member_names()},
                    typ.features, comment)

    def visit_array_type(self, typ: QAPISchemaArrayType) -> None:
        element = self._use_type(typ.element())
        self._entry(f"[{element}]", "array", {"element-type": element}, [])

    def visit_object_type(self, typ: QAPISchemaObjectType) -> None:
        members = [self._member(m) for m in typ.members]
        body: SchemaInfo = {"members": members}
        if typ.variants is not None:
            body["tag"] = typ.variants.tag_name
            body["variants"] = [
                {"case": v.name, "type": self._use_type(v.resolved())}
                for v in typ.variants.variants]
        name, comment = self._masked(typ)
        self._entry(name, "object", body, typ.features, comment)

    def _member(self, member: Any) -> SchemaInfo:
        result: SchemaInfo = {"name": member.name,
                              "type": self._use_type(member.resolved())}
        if member.optional:
            result["default"] = None
        if member.features:
            result["features"] = list(member.features)
        return result

    def visit_alternate_type(self, typ: QAPISchemaAlternateType) -> None:
        members = [{"type": self._use_type(v.resolved())}
                   for v in typ.variants]
        name, comment = self._masked(typ)
        self._entry(name, "alternate", {"members": members}, typ.features,
                    comment)

    def visit_command(self, cmd: QAPISchemaCommand) -> None:
        empty = self.schema.the_empty_object_type
        body: SchemaInfo = {
            "arg-type": self._use_type(cmd.arg_type or empty),
            "ret-type": self._use_type(cmd.ret_type or empty),
        }
        if cmd.allow_oob:
            body["allow-oob"] = True
        self._entry(cmd.name, "command", body, cmd.features)

    def visit_event(self, event: QAPISchemaEvent) -> None:
        empty = self.schema.the_empty_object_type
        body = {"arg-type": self._use_type(event.arg_type or empty)}
        self._entry(event.name, "event", body, event.features)


def schema_info(schema: QAPISchema) -> list[SchemaInfo]:
    """The query-qmp-schema reply as Python data (used by tests too)."""
    visitor = IntrospectVisitor(schema)
    schema.visit(visitor)
    return [entry for entry, _ in visitor.entries]


def gen_introspect(schema: QAPISchema, schema_name: str) -> QAPIGenPython:
    """The introspection module for ``schema``."""
    gen = QAPIGenPython(
        "introspect.py", schema_name,
        "The query-qmp-schema reply (see qapi/gen_introspect.py).")
    visitor = IntrospectVisitor(schema)
    schema.visit(visitor)
    gen.add("from typing import Any\n\n")
    gen.add("SCHEMA_INFO: list[dict[str, Any]] = [\n")
    for entry, comment in visitor.entries:
        if comment:
            gen.add(f"    # {comment}\n")
        text = pprint.pformat(entry, indent=1, width=75, sort_dicts=False)
        gen.add("    " + text.replace("\n", "\n    ") + ",\n")
    gen.add("]\n")
    return gen
