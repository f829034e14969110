"""Generate ``types.py``: Python types and input visitors.

* enum -> ``enum.StrEnum`` (members: upper-cased c_name, '_' before a
  leading digit);
* struct -> a class deriving from ``rt.QAPIObject`` (keyword construction,
  equality and repr from the member table; slots); a named base type
  becomes the Python base class;
* union -> such a class with the base members plus ``u``, the branch's
  struct (None for a branch without members);
* alternate -> a type alias; values are the branch value itself;
* array -> ``list``.

Each type T gets ``visit_T(value, name, path)`` (see vmd.qapi_runtime);
object types also get ``members_T(obj, path, seen)``, which visits the
members in schema order into a dict keyed by Python member names.  The
command marshallers reuse these for their argument lists.
"""

from __future__ import annotations

import json

from .common import py_enum_member, py_member, py_type
from .gen import QAPIGenPython, annotation, visitor_name
from .schema import (
    QAPISchema,
    QAPISchemaAlternateType,
    QAPISchemaArrayType,
    QAPISchemaEnumType,
    QAPISchemaMember,
    QAPISchemaObjectType,
    QAPISchemaVariants,
)

_IMPORTS = '''\
from __future__ import annotations

import enum
from typing import Any, ClassVar, TypeAlias

from vmd import qapi_runtime as rt

Members: TypeAlias = tuple[tuple[str, str, bool], ...]
Fields: TypeAlias = tuple[str, ...]
'''


def q(text: str) -> str:
    """A Python string literal (schema strings are printable ASCII)."""
    return json.dumps(text)


def members_func(typ: QAPISchemaObjectType) -> str:
    """Name of the function visiting the members of ``typ``."""
    return f"members_{py_type(typ.name)}"


def is_class(typ: QAPISchemaObjectType) -> bool:
    """Object types that get a class (not the implicit ones)."""
    return not typ.is_implicit()


class TypesGenerator:
    """Builds types.py section by section (classes must precede users)."""

    def __init__(self, schema: QAPISchema, schema_name: str) -> None:
        self.schema = schema
        self.gen = QAPIGenPython(
            "types.py", schema_name,
            "QAPI types and their input visitors (see qapi/gen_types.py).")
        self.enums: list[str] = []
        self.classes: list[str] = []
        self.aliases: list[str] = []
        self.visitors: list[str] = []
        self.tables: list[str] = []

    def generate(self) -> QAPIGenPython:
        """Produce the module."""
        done: set[str] = set()
        for ent in self.schema.entities:
            if isinstance(ent, QAPISchemaEnumType):
                self._enum(ent)
            elif isinstance(ent, QAPISchemaObjectType):
                self._object_in_order(ent, done)
            elif isinstance(ent, QAPISchemaAlternateType):
                self._alternate(ent)
            elif isinstance(ent, QAPISchemaArrayType):
                self._array(ent)
        self.gen.add(_IMPORTS)
        for section in (self.enums, self.classes, self.aliases,
                        self.visitors, self.tables):
            for chunk in section:
                self.gen.add("\n\n" + chunk)
        return self.gen

    # ---- enums -------------------------------------------------------------

    def _enum(self, typ: QAPISchemaEnumType) -> None:
        name = py_type(typ.name)
        lines = [f"class {name}(enum.StrEnum):\n"]
        lines += [f"    {py_enum_member(m.name)} = {q(m.name)}\n"
                  for m in typ.members]
        if not typ.members:
            lines.append("    pass\n")
        self.enums.append("".join(lines))
        self.visitors.append(
            f"def visit_{name}(value: Any, name: str | None, "
            f"path: str) -> {name}:\n"
            f"    return rt.visit_enum(value, name, path, {name})\n")

    # ---- objects -----------------------------------------------------------

    def _object_in_order(self, typ: QAPISchemaObjectType,
                         done: set[str]) -> None:
        """Emit the base class first: Python needs it defined."""
        if typ.name in done or typ.name == "q_empty":
            return
        done.add(typ.name)
        if typ.base is not None:
            self._object_in_order(typ.base, done)
        self._object(typ)

    def _object(self, typ: QAPISchemaObjectType) -> None:
        if is_class(typ):
            self.classes.append(self._class(typ))
        self.visitors.append(self._members_func(typ))
        if not is_class(typ):
            return
        name = py_type(typ.name)
        head = (f"def visit_{name}(value: Any, name: str | None, "
                f"path: str) -> {name}:\n")
        if typ.variants is None:
            body = (f"    return rt.visit_struct(value, path, "
                    f"{members_func(typ)}, {name})\n")
        else:
            tag = py_member(typ.variants.tag_name)
            body = (f"    return rt.visit_union(\n"
                    f"        value, path, {members_func(typ)}, {q(tag)},\n"
                    f"        _{name}_BRANCHES, {name})\n")
            self.tables.append(self._branch_table(name, typ.variants))
        self.visitors.append(head + body)

    def _class(self, typ: QAPISchemaObjectType) -> str:
        """The class; own members only, the rest is inherited."""
        name = py_type(typ.name)
        base = typ.base
        if base is not None and is_class(base):
            own = typ.local_members
            parent = py_type(base.name)
        else:
            own = typ.members
            parent = "rt.QAPIObject"
        slots = [py_member(m.name) for m in own]
        lines = [f"class {name}({parent}):\n"]
        lines += [self._field(m) for m in own]
        if typ.variants is not None:
            lines.append(self._u_field(typ.variants))
            slots.append("u")
        lines.append(f"    __slots__ = ({''.join(q(s) + ', ' for s in slots)})\n")
        fields = [py_member(m.name) for m in typ.members]
        if typ.variants is not None:
            fields.append("u")
        lines.append(f"    _qapi_fields: ClassVar[Fields] = ({''.join(q(f) + ', ' for f in fields)})\n")
        lines.append(self._wire_table(typ.members))
        return "".join(lines)

    @staticmethod
    def _field(member: QAPISchemaMember) -> str:
        ann = annotation(member.resolved())
        if member.optional:
            return f"    {py_member(member.name)}: {ann} | None\n"
        return f"    {py_member(member.name)}: {ann}\n"

    @staticmethod
    def _u_field(variants: QAPISchemaVariants) -> str:
        """``u``: the branch struct, or None (branch without members)."""
        names: list[str] = []
        for v in variants.variants:
            if not v.implicit and py_type(v.type_name) not in names:
                names.append(py_type(v.type_name))
        return f"    u: {' | '.join(names + ['None'])}\n"

    @staticmethod
    def _wire_table(members: list[QAPISchemaMember]) -> str:
        """(python name, wire name, optional) for rt.to_wire()."""
        rows = "".join(
            f"        ({q(py_member(m.name))}, {q(m.name)}, {m.optional}),\n"
            for m in members)
        return f"    _qapi_members: ClassVar[Members] = (\n{rows}    )\n"

    def _members_func(self, typ: QAPISchemaObjectType) -> str:
        """``members_T``: visit members in schema order (base first)."""
        head = (f"def {members_func(typ)}(obj: dict[str, Any], path: str, "
                "seen: set[str]) -> dict[str, Any]:\n")
        lines = [head]
        own = typ.members
        entries: list[str] = []
        if typ.base is not None:
            entries.append(f"**{members_func(typ.base)}(obj, path, seen)")
            own = typ.local_members
        for m in own:
            opt = ", optional=True" if m.optional else ""
            entries.append(
                f"{q(py_member(m.name))}: rt.member(obj, {q(m.name)}, path, "
                f"seen, {visitor_name(m.resolved())}{opt})")
        if not entries:
            lines.append("    return {}\n")
        else:
            lines.append("    return {\n")
            lines += [f"        {e},\n" for e in entries]
            lines.append("    }\n")
        return "".join(lines)

    @staticmethod
    def _branch_table(name: str, variants: QAPISchemaVariants) -> str:
        rows = []
        for v in variants.variants:
            if v.implicit:
                continue
            typ = v.resolved()
            assert isinstance(typ, QAPISchemaObjectType)
            rows.append(f"    {q(v.name)}: ({py_type(typ.name)}, "
                        f"{members_func(typ)}),\n")
        return (f"_{name}_BRANCHES: dict[str, rt.Branch] = {{\n"
                + "".join(rows) + "}\n")

    # ---- alternates and arrays --------------------------------------------

    def _alternate(self, typ: QAPISchemaAlternateType) -> None:
        name = py_type(typ.name)
        anns = " | ".join(annotation(v.resolved()) for v in typ.variants)
        self.aliases.append(f"{name}: TypeAlias = {q(anns)}\n")
        rows = "".join(
            f"            {q(v.resolved().alternate_qtype() or '')}: "
            f"{visitor_name(v.resolved())},\n" for v in typ.variants)
        self.visitors.append(
            f"def visit_{name}(value: Any, name: str | None, "
            f"path: str) -> {name}:\n"
            f"    return rt.visit_alternate(\n"
            f"        value, name, path, {q(typ.name)}, {{\n{rows}"
            f"        }})\n")

    def _array(self, typ: QAPISchemaArrayType) -> None:
        name = py_type(typ.name)
        self.visitors.append(
            f"def visit_{name}(value: Any, name: str | None, "
            f"path: str) -> {annotation(typ)}:\n"
            f"    return rt.visit_list(value, path, "
            f"{visitor_name(typ.element())})\n")


def gen_types(schema: QAPISchema, schema_name: str) -> QAPIGenPython:
    """The types module for ``schema``."""
    return TypesGenerator(schema, schema_name).generate()
