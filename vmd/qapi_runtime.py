"""Support code for the modules in ``vmd/_generated``.

Generated visitors stay short by calling the helpers here.  A visitor
has the signature ``visit_X(value, name, path) -> typed value``:

* ``value`` is the parsed JSON value to check;
* ``name`` is the bare member name, or None for an array element.  QEMU
  uses it (not the full path) in its enum and integer-range messages,
  printing ``'null'`` when there is no name;
* ``path`` is the full path of the value (``file.filename``,
  ``actions[0].data``), used for missing/unexpected/type errors; ``''``
  is the top-level arguments object.

Errors are :class:`~vmd.qmp.errors.QMPError` with QEMU 7.2's texts.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from vmd.qmp.errors import QMPError

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)
Visitor = Callable[[Any, "str | None", str], Any]

# A generated dataclass lists its wire members as (python name, wire name,
# optional) in this class attribute; unions also carry a 'u' field.
WIRE_MEMBERS = "_qapi_members"


class QAPIObject:
    """Base of the generated struct and union classes.

    Gives keyword construction, equality and a repr from the class's
    member table, as ``@dataclass`` would. Not using dataclasses is on
    purpose: the schema has about a hundred classes, and generating their
    methods with ``exec`` at import cost some 150 ms of start-up.
    ``_qapi_fields`` lists every attribute (members, and ``u`` for a union);
    optional members default to None.
    """

    __slots__ = ()
    _qapi_members: ClassVar[tuple[tuple[str, str, bool], ...]] = ()
    _qapi_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **kwargs: Any) -> None:
        for py, _wire, optional in self._qapi_members:
            if py in kwargs:
                setattr(self, py, kwargs.pop(py))
            elif optional:
                setattr(self, py, None)
            else:
                raise TypeError(f"{type(self).__name__}() needs the argument '{py}'")
        if "u" in self._qapi_fields:
            setattr(self, "u", kwargs.pop("u", None))  # noqa: B010 - the subclass's slot
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got unexpected arguments {sorted(kwargs)}")

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(
            getattr(self, name) == getattr(other, name) for name in self._qapi_fields)

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass

    def __repr__(self) -> str:
        members = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._qapi_fields)
        return f"{type(self).__name__}({members})"


class CommandDef:
    """How the dispatcher runs one command.

    The marshaller is loaded from ``module`` when it is first needed, so
    start-up imports no marshaller and no type of any schema module.
    """

    __slots__ = ("name", "handler_name", "module", "marshal_name",
                 "allow_oob", "allow_preconfig", "coroutine", "features",
                 "_marshal")

    def __init__(self, *, name: str, handler_name: str, module: str,
                 marshal_name: str, allow_oob: bool, allow_preconfig: bool,
                 coroutine: bool, features: tuple[str, ...]) -> None:
        self.name = name
        self.handler_name = handler_name
        self.module = module
        self.marshal_name = marshal_name
        self.allow_oob = allow_oob
        self.allow_preconfig = allow_preconfig
        self.coroutine = coroutine
        self.features = features
        self._marshal: Callable[..., Any] | None = None

    @property
    def marshal(self) -> Callable[[Callable[..., Any], Any, dict[str, Any]], Any]:
        """``marshal(handler, ctx, arguments)``: check arguments, call, convert."""
        if self._marshal is None:
            module = importlib.import_module(self.module)
            self._marshal = getattr(module, self.marshal_name)
        return self._marshal

    def __repr__(self) -> str:
        return f"CommandDef({self.name!r}, module={self.module!r})"


def lazy_module_attributes(package_module: str, prefix: str,
                           where: dict[str, str],
                           namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) loading names on first use.

    ``where`` maps each name to the module ``<package>.<prefix><module>``
    defining it; a loaded name is stored in ``namespace`` (the facade's
    globals), so only the first use of a name costs more than a lookup.
    """
    package = package_module.rpartition(".")[0]

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(
                f"module {package_module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(
            f"{package}.{prefix}{module}"), name)
        namespace[name] = value
        return value

    return getattr_


# ---- paths and errors ---------------------------------------------------

def join(path: str, name: str) -> str:
    """Path of member ``name`` inside the object at ``path``."""
    return f"{path}.{name}" if path else name


def index(path: str, i: int) -> str:
    """Path of element ``i`` of the array at ``path``."""
    return f"{path}[{i}]"


def type_error(path: str, expected: str) -> QMPError:
    """Wrong JSON type (QEMU's QERR_INVALID_PARAMETER_TYPE)."""
    return QMPError(
        f"Invalid parameter type for '{path}', expected: {expected}")


def missing(path: str) -> QMPError:
    """A required member is absent."""
    return QMPError(f"Parameter '{path}' is missing")


def unexpected(path: str) -> QMPError:
    """A member the type does not have."""
    return QMPError(f"Parameter '{path}' is unexpected")


def expects(name: str | None, what: str) -> QMPError:
    """Value out of range (QERR_INVALID_PARAMETER_VALUE)."""
    return QMPError(f"Parameter '{name if name is not None else 'null'}' "
                    f"expects {what}")


# ---- objects --------------------------------------------------------------

def expect_object(value: Any, path: str) -> dict[str, Any]:
    """The value as a JSON object, or a type error."""
    if not isinstance(value, dict):
        raise type_error(path, "object")
    return value


def member(obj: dict[str, Any], key: str, path: str, seen: set[str],
           visit: Visitor, optional: bool = False) -> Any:
    """Visit member ``key`` of ``obj``; None if optional and absent.

    Records the key in ``seen`` so check_unexpected() can report what
    is left over, as QEMU does after visiting all members in order.
    """
    if key not in obj:
        if optional:
            return None
        raise missing(join(path, key))
    seen.add(key)
    return visit(obj[key], key, join(path, key))


def check_unexpected(obj: dict[str, Any], seen: set[str], path: str) -> None:
    """Report the first member nobody visited.

    QEMU reports the first leftover in its hash table's order; we use
    the input order, which is the same whenever there is only one.
    """
    for key in obj:
        if key not in seen:
            raise unexpected(join(path, key))


def visit_struct(value: Any, path: str,
                 members: Callable[[dict[str, Any], str, set[str]],
                                   dict[str, Any]],
                 cls: Callable[..., T]) -> T:
    """Visit a struct: members in schema order, then leftovers."""
    obj = expect_object(value, path)
    seen: set[str] = set()
    result = cls(**members(obj, path, seen))
    check_unexpected(obj, seen, path)
    return result


Branch = tuple[Callable[..., Any],
               Callable[[dict[str, Any], str, set[str]], dict[str, Any]]]


def visit_union(value: Any, path: str,
                base: Callable[[dict[str, Any], str, set[str]],
                               dict[str, Any]],
                tag: str, branches: dict[str, Branch],
                cls: Callable[..., T]) -> T:
    """Visit a flat union: base members, the tag's branch, leftovers."""
    obj = expect_object(value, path)
    seen: set[str] = set()
    fields = base(obj, path, seen)
    branch = branches.get(fields[tag])
    u = None
    if branch is not None:
        branch_cls, branch_members = branch
        u = branch_cls(**branch_members(obj, path, seen))
    check_unexpected(obj, seen, path)
    return cls(**fields, u=u)


def args_dict(arguments: dict[str, Any],
              members: Callable[[dict[str, Any], str, set[str]],
                                dict[str, Any]]) -> dict[str, Any]:
    """Visit a command's arguments object into handler keyword arguments."""
    seen: set[str] = set()
    kwargs = members(arguments, "", seen)
    check_unexpected(arguments, seen, "")
    return kwargs


def no_args(arguments: dict[str, Any]) -> None:
    """A command without arguments accepts only ``{}``."""
    check_unexpected(arguments, set(), "")


# ---- alternates, arrays, enums ------------------------------------------

def json_kind(value: Any) -> str:
    """The JSON type an alternate dispatches on."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "value"


class _JsonNull:
    """An explicit JSON ``null`` chosen as an alternate's branch.

    Optional members that are absent are ``None``; an alternate with a
    ``null`` branch (``BlockdevRefOrNull``: "no backing file") must be
    told apart from that, so its null branch yields this singleton.
    """

    _instance: _JsonNull | None = None

    def __new__(cls) -> _JsonNull:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "JSON_NULL"


JSON_NULL = _JsonNull()


def visit_alternate(value: Any, name: str | None, path: str, alt_name: str,
                    branches: dict[str, Visitor]) -> Any:
    """Pick the branch by JSON type, else a type error naming the type
    and the member by its own name, not its path (as QEMU's generated
    visitors of alternates do)."""
    kind = json_kind(value)
    visit = branches.get(kind)
    if visit is None:
        raise type_error(name if name is not None else "null", alt_name)
    if kind == "null":
        return JSON_NULL
    return visit(value, name, path)


def visit_list(value: Any, path: str, visit: Visitor) -> list[Any]:
    """An array; elements have no name (QEMU says 'null')."""
    if not isinstance(value, list):
        raise type_error(path, "array")
    return [visit(elem, None, index(path, i)) for i, elem in enumerate(value)]


def visit_enum(value: Any, name: str | None, path: str, cls: type[E]) -> E:
    """A string that must be one of the enum's values."""
    if not isinstance(value, str):
        raise type_error(path, "string")
    try:
        return cls(value)
    except ValueError:
        shown = name if name is not None else "null"
        raise QMPError(
            f"Parameter '{shown}' does not accept value '{value}'") from None


# ---- built-in types ------------------------------------------------------

def visit_str(value: Any, name: str | None, path: str) -> str:
    """'str'."""
    if not isinstance(value, str):
        raise type_error(path, "string")
    return value


def visit_bool(value: Any, name: str | None, path: str) -> bool:
    """'bool'; no coercion from strings or numbers."""
    if not isinstance(value, bool):
        raise type_error(path, "boolean")
    return value


def visit_number(value: Any, name: str | None, path: str) -> float:
    """'number': any JSON number, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error(path, "number")
    return float(value)


def visit_null(value: Any, name: str | None, path: str) -> None:
    """'null'."""
    if value is not None:
        raise type_error(path, "null")


def visit_any(value: Any, name: str | None, path: str) -> Any:
    """'any': every JSON value is fine."""
    return value


def _int64(value: Any, path: str) -> int:
    """A JSON integer that fits int64; otherwise a type error."""
    if (isinstance(value, bool) or not isinstance(value, int)
            or not -2**63 <= value < 2**63):
        raise type_error(path, "integer")
    return value


def visit_int(value: Any, name: str | None, path: str) -> int:
    """'int' / 'int64'."""
    return _int64(value, path)


def _signed(bits: int) -> Visitor:
    """Visitor for intN: int64 first, then QEMU's range message."""
    lo, hi, label = -2**(bits - 1), 2**(bits - 1) - 1, f"int{bits}_t"

    def visit(value: Any, name: str | None, path: str) -> int:
        result = _int64(value, path)
        if not lo <= result <= hi:
            raise expects(name, label)
        return result
    visit.__name__ = f"visit_int{bits}"
    return visit


def _uint64(value: Any, path: str) -> int:
    """A uint64, accepting (and wrapping) negative int64 like QEMU."""
    if (isinstance(value, bool) or not isinstance(value, int)
            or not -2**63 <= value < 2**64):
        raise expects(path, "uint64")
    return value % 2**64


def _unsigned(bits: int) -> Visitor:
    """Visitor for uintN: uint64 first (wrapping), then the range."""
    hi, label = 2**bits - 1, f"uint{bits}_t"

    def visit(value: Any, name: str | None, path: str) -> int:
        result = _uint64(value, path)
        if result > hi:
            raise expects(name, label)
        return result
    visit.__name__ = f"visit_uint{bits}"
    return visit


def visit_uint64(value: Any, name: str | None, path: str) -> int:
    """'uint64' and 'size' (QEMU's QMP visitor treats them alike)."""
    return _uint64(value, path)


visit_int8 = _signed(8)
visit_int16 = _signed(16)
visit_int32 = _signed(32)
visit_int64 = visit_int
visit_uint8 = _unsigned(8)
visit_uint16 = _unsigned(16)
visit_uint32 = _unsigned(32)
visit_size = visit_uint64


# ---- output ----------------------------------------------------------------

def to_wire(value: Any) -> Any:
    """Turn a handler's result into plain JSON-ready data.

    Generated classes become dicts keyed by wire names (absent optional
    members omitted, a union's branch flattened in), enums become their
    string values; lists and dicts are converted throughout; other values
    pass through. An explicit stack, not recursion: a reply may nest as
    deep as a user's backing chain.
    """
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        item, container, key = stack.pop()
        if isinstance(item, enum.Enum):
            container[key] = item.value
        elif item is JSON_NULL:
            container[key] = None
        elif isinstance(item, (QAPIObject, dict)):
            out: dict[str, Any] = {}
            container[key] = out
            pairs = _object_members(item) if isinstance(item, QAPIObject) else item.items()
            for wire, member in pairs:
                out[wire] = None  # keeps the member order
                stack.append((member, out, wire))
        elif isinstance(item, (list, tuple)):
            items: list[Any] = [None] * len(item)
            container[key] = items
            stack.extend((member, items, i) for i, member in enumerate(item))
        else:
            container[key] = item
    return root[0]


def _object_members(obj: Any) -> list[tuple[str, Any]]:
    """(wire name, value) of a generated struct or union, absent optional
    members left out, as QEMU's output visitor does."""
    members = []
    for py, wire, optional in getattr(obj, WIRE_MEMBERS):
        value = getattr(obj, py)
        if not (optional and value is None):
            members.append((wire, value))
    branch = getattr(obj, "u", None)
    if branch is not None:
        members += _object_members(branch)
    return members


def members_to_wire(members: Iterable[tuple[str, Any, bool]]
                    ) -> dict[str, Any]:
    """(wire name, value, optional) triples to a dict; absent optionals
    (None) are left out, as QEMU's output visitor does."""
    return {wire: to_wire(value) for wire, value, optional in members
            if not (optional and value is None)}
