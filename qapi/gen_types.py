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

All of it goes to ``types_<module>.py``, one per schema file (see
qapi/modules.py); ``types.py`` names every type and loads its module on
first use, so ``from vmd._generated.types import RunState`` imports only
the run-state types.
"""

from __future__ import annotations

import json
import re

from .common import py_enum_member, py_member, py_type
from .gen import QAPIGenPython, annotation, visitor_name
from .modules import check_acyclic, import_lines, imports_of, module_of, owners
from .schema import (
    QAPISchema,
    QAPISchemaAlternateType,
    QAPISchemaArrayType,
    QAPISchemaEntity,
    QAPISchemaEnumType,
    QAPISchemaMember,
    QAPISchemaObjectType,
    QAPISchemaVariants,
)


def _header(body: str, imports: str) -> str:
    """The imports a module's ``body`` needs, and its own type aliases."""
    words = set(re.findall(r"\w+", body))
    aliases = "Members" in words
    typing_names = [name for name in ("Any", "ClassVar", "TypeAlias")
                    if name in words or (aliases and name == "TypeAlias")]
    lines = ["from __future__ import annotations\n\n"]
    if "enum.StrEnum" in body:
        lines.append("import enum\n")
    lines.append(f"from typing import {', '.join(typing_names)}\n\n")
    lines.append("from vmd import qapi_runtime as rt\n")
    lines.append(("\n" + imports) if imports else "")
    if aliases:
        lines.append("\nMembers: TypeAlias = tuple[tuple[str, str, bool], ...]\n"
                     "Fields: TypeAlias = tuple[str, ...]\n")
    return "".join(lines)


_FACADE_IMPORTS = '''\
from __future__ import annotations

from typing import TYPE_CHECKING

from vmd import qapi_runtime as rt
'''

SECTIONS = ("enums", "classes", "aliases", "visitors", "tables")


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
    """Builds the types modules section by section (classes precede users)."""

    def __init__(self, schema: QAPISchema, schema_name: str) -> None:
        self.schema = schema
        self.schema_name = schema_name
        self.sections: dict[str, dict[str, list[str]]] = {}
        self.module = ""

    def generate(self) -> list[QAPIGenPython]:
        """Produce ``types.py`` and one ``types_<module>.py`` per module."""
        done: set[str] = set()
        for ent in self.schema.entities:
            self._enter(ent)
            if isinstance(ent, QAPISchemaEnumType):
                self._enum(ent)
            elif isinstance(ent, QAPISchemaObjectType):
                self._object_in_order(ent, done)
            elif isinstance(ent, QAPISchemaAlternateType):
                self._alternate(ent)
            elif isinstance(ent, QAPISchemaArrayType):
                self._array(ent)
        bodies = {module: "".join("\n\n" + chunk for name in SECTIONS
                                  for chunk in sections[name])
                  for module, sections in self.sections.items()}
        owner = owners(bodies)
        graph = {module: imports_of(text, module, owner)
                 for module, text in bodies.items()}
        check_acyclic(graph)
        modules = [self._module(module, bodies[module], graph[module])
                   for module in sorted(bodies)]
        return [self._facade(owner)] + modules

    def _enter(self, ent: QAPISchemaEntity) -> None:
        """Direct the chunks that follow to the module of ``ent``."""
        self.module = module_of(ent)

    def _add(self, section: str, chunk: str) -> None:
        module = self.sections.setdefault(
            self.module, {name: [] for name in SECTIONS})
        module[section].append(chunk)

    def _module(self, module: str, body: str,
                imports: dict[str, list[str]]) -> QAPIGenPython:
        gen = QAPIGenPython(
            f"types_{module}.py", self.schema_name,
            f"QAPI types of schema module {module} (see qapi/gen_types.py).")
        gen.add(_header(body, import_lines(imports, "types_")) + body)
        return gen

    def _facade(self, owner: dict[str, str]) -> QAPIGenPython:
        """``types.py``: every name, loaded from its module on first use."""
        gen = QAPIGenPython(
            "types.py", self.schema_name,
            "QAPI types and their input visitors (see qapi/gen_types.py).\n\n"
            "Each name is loaded from its schema module's types_<module>.py\n"
            "the first time it is used.")
        public = {name: module for name, module in sorted(owner.items())
                  if not name.startswith("_")}
        by_module: dict[str, list[str]] = {}
        for name, module in public.items():
            by_module.setdefault(module, []).append(name)
        checked = import_lines(dict(sorted(by_module.items())), "types_").replace("\n", "\n    ")
        rows = "".join(f"    {q(name)}: {q(module)},\n"
                       for name, module in public.items())
        gen.add(_FACADE_IMPORTS + "\nif TYPE_CHECKING:\n    "
                + checked.rstrip(" ")
                + f"\n_MODULES: dict[str, str] = {{\n{rows}}}\n"
                + "\n__getattr__ = rt.lazy_module_attributes(\n"
                + "    __name__, \"types_\", _MODULES, globals())\n")
        return gen

    # ---- enums -------------------------------------------------------------

    def _enum(self, typ: QAPISchemaEnumType) -> None:
        name = py_type(typ.name)
        lines = [f"class {name}(enum.StrEnum):\n"]
        lines += [f"    {py_enum_member(m.name)} = {q(m.name)}\n"
                  for m in typ.members]
        if not typ.members:
            lines.append("    pass\n")
        self._add("enums", "".join(lines))
        self._add(
            "visitors",
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
        self._enter(typ)
        self._object(typ)

    def _object(self, typ: QAPISchemaObjectType) -> None:
        if is_class(typ):
            self._add("classes", self._class(typ))
        self._add("visitors", self._members_func(typ))
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
            self._add("tables", self._branch_table(name, typ.variants))
        self._add("visitors", head + body)

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
        self._add("aliases", f"{name}: TypeAlias = {q(anns)}\n")
        rows = "".join(
            f"            {q(v.resolved().alternate_qtype() or '')}: "
            f"{visitor_name(v.resolved())},\n" for v in typ.variants)
        self._add(
            "visitors",
            f"def visit_{name}(value: Any, name: str | None, "
            f"path: str) -> {name}:\n"
            f"    return rt.visit_alternate(\n"
            f"        value, name, path, {q(typ.name)}, {{\n{rows}"
            f"        }})\n")

    def _array(self, typ: QAPISchemaArrayType) -> None:
        name = py_type(typ.name)
        self._add(
            "visitors",
            f"def visit_{name}(value: Any, name: str | None, "
            f"path: str) -> {annotation(typ)}:\n"
            f"    return rt.visit_list(value, path, "
            f"{visitor_name(typ.element())})\n")


def gen_types(schema: QAPISchema, schema_name: str) -> list[QAPIGenPython]:
    """The types modules for ``schema``: the facade, then one per module."""
    return TypesGenerator(schema, schema_name).generate()
