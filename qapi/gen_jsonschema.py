"""Generate ``jsonschema.py``: each command's arguments as JSON Schema.

``COMMAND_SCHEMAS[name]`` is a Draft 2020-12 document describing what the
marshaller accepts for ``arguments``, for tools and clients that speak
JSON Schema rather than QAPI.  Named types live under ``$defs``.  Flat
unions use ``if``/``then`` per branch plus ``unevaluatedProperties``, so
branch members are allowed exactly when their tag value is present.
Integer bounds are what the QMP input visitor accepts (unsigned types
take negative int64 values, which wrap, like QEMU).
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
    QAPISchemaEnumType,
    QAPISchemaObjectType,
    QAPISchemaType,
)

JSON = dict[str, Any]
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _builtin(typ: QAPISchemaBuiltinType) -> JSON:
    """Schema of a built-in type."""
    simple = {"str": "string", "number": "number", "bool": "boolean",
              "null": "null"}
    if typ.name in simple:
        return {"type": simple[typ.name]}
    if typ.int_range is None:
        return {}
    lo, hi, _ = typ.int_range
    if typ.name in ("uint64", "size"):
        lo = -2**63
    return {"type": "integer", "minimum": lo, "maximum": hi}


class _Converter:
    """Builds one document, collecting ``$defs`` for named types."""

    def __init__(self) -> None:
        self.defs: dict[str, JSON] = {}

    def ref(self, typ: QAPISchemaType) -> JSON:
        """Schema for a use of ``typ`` (a $ref for named types)."""
        if isinstance(typ, QAPISchemaBuiltinType):
            return _builtin(typ)
        if isinstance(typ, QAPISchemaArrayType):
            return {"type": "array", "items": self.ref(typ.element())}
        if typ.name not in self.defs:
            self.defs[typ.name] = {}
            self.defs[typ.name] = self.define(typ)
        return {"$ref": f"#/$defs/{typ.name}"}

    def define(self, typ: QAPISchemaType) -> JSON:
        """Schema body of a named type."""
        if isinstance(typ, QAPISchemaEnumType):
            return {"type": "string", "enum": typ.member_names()}
        if isinstance(typ, QAPISchemaAlternateType):
            return {"anyOf": [self.ref(v.resolved()) for v in typ.variants]}
        assert isinstance(typ, QAPISchemaObjectType)
        return self.object(typ)

    def _props(self, typ: QAPISchemaObjectType) -> JSON:
        """properties/required of an object's (non-variant) members."""
        result: JSON = {
            "properties": {m.name: self.ref(m.resolved())
                           for m in typ.members}}
        required = [m.name for m in typ.members if not m.optional]
        if required:
            result["required"] = required
        return result

    def object(self, typ: QAPISchemaObjectType) -> JSON:
        """A struct, or a flat union via if/then per tag value."""
        result: JSON = {"type": "object", **self._props(typ)}
        if typ.variants is None:
            result["additionalProperties"] = False
            return result
        tag = typ.variants.tag_name
        branches = []
        for v in typ.variants.variants:
            branch = v.resolved()
            assert isinstance(branch, QAPISchemaObjectType)
            cond = {"properties": {tag: {"const": v.name}},
                    "required": [tag]}
            branches.append({"if": cond, "then": self._props(branch)})
        result["allOf"] = branches
        result["unevaluatedProperties"] = False
        return result


def command_schema(cmd: QAPISchemaCommand) -> JSON:
    """The JSON Schema document for one command's arguments."""
    conv = _Converter()
    doc: JSON = {"$schema": DIALECT, "title": cmd.name}
    if cmd.arg_type is None:
        doc.update({"type": "object", "additionalProperties": False})
    else:
        doc.update(conv.object(cmd.arg_type))
    if conv.defs:
        doc["$defs"] = conv.defs
    return doc


def gen_jsonschema(schema: QAPISchema, schema_name: str) -> QAPIGenPython:
    """The jsonschema module for ``schema``."""
    gen = QAPIGenPython(
        "jsonschema.py", schema_name,
        "JSON Schema of every command's arguments "
        "(see qapi/gen_jsonschema.py).")
    gen.add("from typing import Any\n\n")
    gen.add("COMMAND_SCHEMAS: dict[str, dict[str, Any]] = {\n")
    for ent in schema.entities:
        if isinstance(ent, QAPISchemaCommand):
            text = pprint.pformat(command_schema(ent), indent=1, width=75,
                                  sort_dicts=False)
            gen.add(f"    {ent.name!r}:\n        "
                    + text.replace("\n", "\n        ") + ",\n")
    gen.add("}\n")
    return gen
