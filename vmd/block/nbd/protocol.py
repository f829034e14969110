"""The server side of the NBD protocol, as a state machine without I/O.

The byte layouts and rules come from the NBD protocol specification
(NetworkBlockDevice/nbd, doc/proto.md); where the specification leaves a
choice, QEMU's nbd/server.c is followed, error texts included.

``ServerConnection`` is fed the bytes a client sends (``receive_data``) and
hands back, one at a time, what they mean (``next_event``): the end of the
handshake, a checked request to carry out, or the end of the connection.
Whatever the protocol answers by itself (the greeting, every reply of the
option haggling, the error reply to a malformed request) is collected for
``data_to_send``. Replies to the requests the caller carries out are built
by the ``*_chunk``/``simple_reply`` functions and the connection's
``reply_*`` helpers, which return bytes to write and never write them.

Only the fixed-newstyle handshake is offered (as QEMU does); a client
without the fixed-newstyle flag may still use ``NBD_OPT_EXPORT_NAME``.
Metadata contexts are ``base:allocation`` and, as QEMU's, one
``qemu:dirty-bitmap:NAME`` per bitmap the export offers (queries in the
``qemu:`` namespace as QEMU 7.2 answers them; ``qemu:allocation-depth``
is not offered). TLS and extended headers are not offered. Errors found while parsing a request use
the error values the specification asks for (a write to a read-only export
is ``NBD_EPERM``, one past the end ``NBD_ENOSPC``); QEMU 7.2 sends
``NBD_EINVAL`` for all of these, with the same texts.

The caller pulls one event at a time, so it can stop pulling while too many
requests are in flight; the bytes held here are then one request (a write
payload is at most ``MAX_PAYLOAD``) plus what the caller fed last.
"""

from __future__ import annotations

import enum
import errno as _errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# -- constants (proto.md) -----------------------------------------------------

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT": newstyle greeting and options
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

#: QEMU's NBD_MAX_BUFFER_SIZE: the largest read/write, and the largest option.
MAX_PAYLOAD = 32 << 20
#: The longest export name, description or query string (NBD_MAX_STRING_SIZE).
MAX_STRING = 4096
#: Extents in one block status chunk: 1 MiB of descriptors, as QEMU.
MAX_EXTENTS = (1 << 20) // 8

# Handshake flags (server) and client flags.
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = FLAG_FIXED_NEWSTYLE
FLAG_C_NO_ZEROES = FLAG_NO_ZEROES

# Transmission flags.
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8
FLAG_SEND_RESIZE = 1 << 9
FLAG_SEND_CACHE = 1 << 10
FLAG_SEND_FAST_ZERO = 1 << 11


class Opt(enum.IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


class Rep(enum.IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_PLATFORM = (1 << 31) + 4
    ERR_TLS_REQD = (1 << 31) + 5
    ERR_UNKNOWN = (1 << 31) + 6
    ERR_SHUTDOWN = (1 << 31) + 7
    ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
    ERR_TOO_BIG = (1 << 31) + 9


class Info(enum.IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class Cmd(enum.IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7


#: Sets of commands for the checks made on every request: a look-up in a
#: frozenset of ints costs a tenth of ``x in (Cmd.A, Cmd.B)``, where every
#: member is an attribute look-up on the enum class.
DATA_COMMANDS = frozenset({Cmd.READ, Cmd.WRITE})
_SIZED_COMMANDS = frozenset({Cmd.READ, Cmd.WRITE, Cmd.CACHE})
_CHANGING_COMMANDS = frozenset({Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES})
_KNOWN_COMMANDS = frozenset({Cmd.READ, Cmd.WRITE, Cmd.FLUSH, Cmd.TRIM, Cmd.WRITE_ZEROES,
                             Cmd.CACHE, Cmd.BLOCK_STATUS})

_READ, _WRITE = Cmd.READ, Cmd.WRITE  # module globals: found sooner than Cmd's attributes

# Command flags.
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4


class ReplyType(enum.IntEnum):
    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = (1 << 15) + 1
    ERROR_OFFSET = (1 << 15) + 2


REPLY_FLAG_DONE = 1 << 0

# Error values on the wire (they equal Linux's errno numbers).
EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 12, 22, 28, 75, 95, 108

# base:allocation flags and context id (QEMU numbers base:allocation 0).
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 0
# qemu:dirty-bitmap:NAME: the flag of a dirty extent; the export's bitmap i
# has context id DIRTY_BITMAP_ID + i (QEMU's NBD_META_ID_DIRTY_BITMAP).
STATE_DIRTY = 1 << 0
DIRTY_BITMAP = "qemu:dirty-bitmap:"
DIRTY_BITMAP_ID = 2

_OPT_NAMES = {
    Opt.EXPORT_NAME: "export name", Opt.ABORT: "abort", Opt.LIST: "list",
    Opt.STARTTLS: "starttls", Opt.INFO: "info", Opt.GO: "go",
    Opt.STRUCTURED_REPLY: "structured reply",
    Opt.LIST_META_CONTEXT: "list meta context",
    Opt.SET_META_CONTEXT: "set meta context",
}
_CMD_NAMES = {
    Cmd.READ: "read", Cmd.WRITE: "write", Cmd.DISC: "disconnect",
    Cmd.FLUSH: "flush", Cmd.TRIM: "trim", Cmd.CACHE: "cache",
    Cmd.WRITE_ZEROES: "write zeroes", Cmd.BLOCK_STATUS: "block status",
}


def option_name(option: int) -> str:
    """QEMU's name of an option, as its error texts show it."""
    return _OPT_NAMES.get(option, "<unknown>")  # type: ignore[call-overload]


def command_name(command: int) -> str:
    return _CMD_NAMES.get(command, "<unknown>")  # type: ignore[call-overload]


def nbd_error(system_errno: int) -> int:
    """The NBD error value for a host errno (QEMU's mapping)."""
    if system_errno in (_errno.EPERM, _errno.EROFS):
        return EPERM
    if system_errno == _errno.EIO:
        return EIO
    if system_errno == _errno.ENOMEM:
        return ENOMEM
    if system_errno in (_errno.EDQUOT, _errno.EFBIG, _errno.ENOSPC):
        return ENOSPC
    if system_errno == _errno.EOVERFLOW:
        return EOVERFLOW
    if system_errno in (_errno.ENOTSUP, _errno.EOPNOTSUPP):
        return ENOTSUP
    if system_errno == _errno.ESHUTDOWN:
        return ESHUTDOWN
    return EINVAL


# -- what the protocol needs to know about exports ------------------------------

@dataclass(frozen=True, slots=True)
class ExportInfo:
    """An export as the handshake presents it."""

    name: str
    size: int
    read_only: bool = True
    description: str | None = None
    #: Minimum block size: the node's request alignment.
    min_block: int = 1
    #: Largest transfer; capped at ``MAX_PAYLOAD``.
    max_block: int = MAX_PAYLOAD
    #: Whether to offer NBD_CMD_FLAG_FAST_ZERO (only on writable exports).
    fast_zero: bool = True
    #: Dirty bitmaps offered as ``qemu:dirty-bitmap:NAME`` contexts, in order.
    bitmaps: tuple[str, ...] = ()

    def context_name(self, context_id: int) -> str:
        if context_id == BASE_ALLOCATION_ID:
            return BASE_ALLOCATION
        return DIRTY_BITMAP + self.bitmaps[context_id - DIRTY_BITMAP_ID]

    def context_ids(self) -> list[int]:
        """Every context of the export, in QEMU's order."""
        return [BASE_ALLOCATION_ID] + [DIRTY_BITMAP_ID + i for i in range(len(self.bitmaps))]

    def transmission_flags(self, structured: bool) -> int:
        flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE
        if self.read_only:
            # Several connections see the same data only if none writes.
            flags |= FLAG_READ_ONLY | FLAG_CAN_MULTI_CONN
        else:
            flags |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES
            if self.fast_zero:
                flags |= FLAG_SEND_FAST_ZERO
        if structured:
            flags |= FLAG_SEND_DF
        return flags


class Catalog(Protocol):
    """The exports a server offers, looked up during the handshake."""

    def find_export(self, name: str) -> ExportInfo | None: ...

    def list_exports(self) -> Sequence[ExportInfo]: ...


# -- events ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ready:
    """The handshake is over: transmission on ``export`` begins."""

    export: ExportInfo


@dataclass(slots=True)
class Request:
    """A well-formed request, checked against the export, to carry out.

    Not frozen (one per request: a frozen dataclass's ``__init__`` costs four
    times as much); nobody changes one once made.
    """

    cookie: int
    command: int
    flags: int
    offset: int
    length: int
    #: The payload of NBD_CMD_WRITE.
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over; close it once ``data_to_send`` is written."""

    reason: str
    #: NBD_OPT_ABORT, NBD_CMD_DISC or end of file between messages.
    clean: bool = False


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: ``next_event``'s answer when the bytes so far hold no complete message.
NEED_DATA = _NeedData()

Event = Ready | Request | Closed | _NeedData


class State(enum.Enum):
    CLIENT_FLAGS = enum.auto()
    OPTIONS = enum.auto()
    TRANSMISSION = enum.auto()
    CLOSED = enum.auto()


_TRANSMISSION = State.TRANSMISSION


# -- encoders -------------------------------------------------------------------

_OPTION_HEADER = struct.Struct(">QII")        # magic, option, length
_OPTION_REPLY = struct.Struct(">QIII")        # magic, option, type, length
_REQUEST = struct.Struct(">IHHQQI")           # magic, flags, type, cookie, offset, length
_SIMPLE_REPLY = struct.Struct(">IIQ")         # magic, error, cookie
_CHUNK = struct.Struct(">IHHQI")              # magic, flags, type, cookie, length
_OFFSET = struct.Struct(">Q")
_HOLE = struct.Struct(">QI")
_ERROR = struct.Struct(">IH")
_EXTENT = struct.Struct(">II")

REQUEST_SIZE = _REQUEST.size


def option_reply(option: int, rep: int, payload: bytes = b"") -> bytes:
    return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, rep, len(payload)) + payload


def simple_reply(cookie: int, error: int = 0) -> bytes:
    """A simple reply header; a successful read's data follows it."""
    return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def chunk_header(cookie: int, reply_type: int, length: int, done: bool) -> bytes:
    return _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0,
                       reply_type, cookie, length)


def none_chunk(cookie: int) -> bytes:
    return chunk_header(cookie, ReplyType.NONE, 0, True)


def offset_data_chunk(cookie: int, offset: int, data: bytes | memoryview,
                      done: bool) -> list[bytes | memoryview]:
    """Header and offset, then ``data`` itself, not copied."""
    head = chunk_header(cookie, ReplyType.OFFSET_DATA, 8 + len(data), done)
    return [head + _OFFSET.pack(offset), data]


def offset_hole_chunk(cookie: int, offset: int, length: int, done: bool) -> bytes:
    return chunk_header(cookie, ReplyType.OFFSET_HOLE, _HOLE.size, done) + _HOLE.pack(offset, length)


def error_chunk(cookie: int, error: int, message: str = "") -> bytes:
    """A final generic error chunk with a human-readable message."""
    text = message.encode("utf-8", "replace")[:MAX_STRING]
    head = chunk_header(cookie, ReplyType.ERROR, _ERROR.size + len(text), True)
    return head + _ERROR.pack(error, len(text)) + text


def block_status_chunk(cookie: int, context_id: int,
                       extents: Sequence[tuple[int, int]], done: bool) -> bytes:
    """``extents`` are (length, flags) pairs, in order from the offset."""
    body = b"".join(_EXTENT.pack(length, flags) for length, flags in extents)
    head = chunk_header(cookie, ReplyType.BLOCK_STATUS, 4 + len(body), done)
    return head + struct.pack(">I", context_id) + body


def _match_context(query: str, export: ExportInfo, listing: bool) -> set[int]:
    """The context ids a query names (QEMU 7.2's nbd_negotiate_meta_query):
    an empty leaf lists a whole namespace, but selects nothing on SET."""
    bitmaps = {DIRTY_BITMAP_ID + i for i in range(len(export.bitmaps))}
    if query.startswith("base:"):
        leaf = query[len("base:"):]
        return {BASE_ALLOCATION_ID} if leaf == "allocation" or (listing and not leaf) else set()
    if query in ("qemu:", DIRTY_BITMAP):
        return bitmaps if listing else set()
    if query.startswith(DIRTY_BITMAP):
        name = query[len(DIRTY_BITMAP):]
        return {DIRTY_BITMAP_ID + i for i, bitmap in enumerate(export.bitmaps) if bitmap == name}
    return set()


def _sanitize(name: str) -> str:
    return name if len(name) < 80 else name[:80] + "..."


class _OptionError(Exception):
    """Ends one option with an error reply; the haggling goes on."""

    def __init__(self, rep: int, message: str) -> None:
        super().__init__(message)
        self.rep = rep
        self.message = message


class _OptionReader:
    """Reads the fields of one option's payload, QEMU's checks included."""

    def __init__(self, option: int, payload: bytes) -> None:
        self.option = option
        self.payload = payload
        self.pos = 0

    def take(self, size: int) -> bytes:
        if size > len(self.payload) - self.pos:
            raise _OptionError(Rep.ERR_INVALID,
                               f"Inconsistent lengths in option {option_name(self.option)}")
        data = self.payload[self.pos:self.pos + size]
        self.pos += size
        return data

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def string(self, size: int) -> str:
        data = self.take(size)
        if b"\0" in data:
            raise _OptionError(Rep.ERR_INVALID,
                               f"Unexpected embedded NUL in option {option_name(self.option)}")
        return data.decode("utf-8", "surrogateescape")

    def name(self) -> str:
        length = self.u32()
        if length > MAX_STRING:
            raise _OptionError(Rep.ERR_INVALID, f"Invalid name length: {length}")
        return self.string(length)

    def end(self) -> None:
        if self.pos != len(self.payload):
            raise _OptionError(Rep.ERR_INVALID,
                               f"option '{option_name(self.option)}' has unexpected length")


# -- the connection ---------------------------------------------------------------

def _bad_flags(command: int, flags: int) -> tuple[int, str]:
    return EINVAL, f"unsupported flags for command {command_name(command)} (got 0x{flags:x})"


class ServerConnection:
    """One client's connection, from greeting to disconnect."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.state = State.CLIENT_FLAGS
        self.fixed_newstyle = False
        self.no_zeroes = False
        self.structured = False
        self.export: ExportInfo | None = None
        #: Contexts chosen by NBD_OPT_SET_META_CONTEXT (ids, in order), and
        #: for which export.
        self.meta_export: str | None = None
        self.contexts: tuple[int, ...] = ()
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._closed: Closed | None = None
        self._out = bytearray(NBDMAGIC + struct.pack(">QH", IHAVEOPT,
                                                     FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))

    # -- plumbing ----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the client; ``b""`` means end of file."""
        if not data:
            self._eof = True
            return
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, size: int) -> bytes:
        with memoryview(self._buf) as view:
            data = view[self._pos:self._pos + size].tobytes()
        self._pos += size
        if self._pos > (1 << 20):
            del self._buf[:self._pos]
            self._pos = 0
        return data

    def _close(self, reason: str, clean: bool = False) -> Closed:
        self.state = State.CLOSED
        self._closed = Closed(reason, clean)
        return self._closed

    def _need(self, size: int) -> bool:
        return self._available() >= size

    def _eof_event(self) -> Event:
        if not self._eof:
            return NEED_DATA
        if self._available() == 0 and self.state == State.TRANSMISSION:
            return self._close("client closed the connection", clean=True)
        return self._close("Unexpected end-of-file before all bytes were read")

    # -- events ------------------------------------------------------------

    def next_event(self) -> Event:
        """The next thing the client's bytes mean, or ``NEED_DATA``."""
        while True:
            if self.state is _TRANSMISSION:  # first: once per request
                event = self._next_request()
                if event is None:
                    continue
                return event
            if self.state == State.CLOSED:
                assert self._closed is not None
                return self._closed
            if self.state == State.CLIENT_FLAGS:
                if not self._need(4):
                    return self._eof_event()
                flags = struct.unpack(">I", self._take(4))[0]
                self.fixed_newstyle = bool(flags & FLAG_C_FIXED_NEWSTYLE)
                self.no_zeroes = bool(flags & FLAG_C_NO_ZEROES)
                unknown = flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
                if unknown:
                    return self._close(f"Unknown client flags 0x{unknown:x} received")
                self.state = State.OPTIONS
                continue
            event = self._next_option()
            if event is None:
                continue
            return event

    # -- option haggling ---------------------------------------------------------

    def _next_option(self) -> Event | None:
        if not self._need(_OPTION_HEADER.size):
            return self._eof_event()
        magic, option, length = _OPTION_HEADER.unpack_from(self._buf, self._pos)
        if magic != IHAVEOPT:
            return self._close("Bad magic received")
        if length > MAX_PAYLOAD:
            return self._close(f"len ({length}) is larger than max len ({MAX_PAYLOAD})")
        if option == Opt.EXPORT_NAME and length > MAX_STRING:
            return self._close("Bad length received")
        if not self._need(_OPTION_HEADER.size + length):
            return self._eof_event()
        self._pos += _OPTION_HEADER.size
        payload = self._take(length)
        if not self.fixed_newstyle and option != Opt.EXPORT_NAME:
            return self._close(f"Unsupported option {option} ({option_name(option)})")
        try:
            return self._handle_option(option, payload)
        except _OptionError as error:
            self._out += option_reply(option, error.rep, error.message.encode("utf-8", "replace"))
            return None

    def _handle_option(self, option: int, payload: bytes) -> Event | None:
        reader = _OptionReader(option, payload)
        if option == Opt.EXPORT_NAME:
            return self._export_name(payload.decode("utf-8", "surrogateescape"))
        if option == Opt.ABORT:
            # The client may hang up without reading this.
            self._out += option_reply(option, Rep.ACK)
            return self._close("client sent NBD_OPT_ABORT", clean=True)
        if option == Opt.LIST:
            reader.end()
            for export in self.catalog.list_exports():
                name = export.name.encode("utf-8", "surrogateescape")
                description = (export.description or "").encode()
                self._out += option_reply(option, Rep.SERVER,
                                          struct.pack(">I", len(name)) + name + description)
            self._out += option_reply(option, Rep.ACK)
            return None
        if option in (Opt.INFO, Opt.GO):
            return self._info(reader)
        if option == Opt.STARTTLS:
            reader.end()
            raise _OptionError(Rep.ERR_POLICY, "TLS not configured")
        if option == Opt.STRUCTURED_REPLY:
            reader.end()
            if self.structured:
                raise _OptionError(Rep.ERR_INVALID, "structured reply already negotiated")
            self.structured = True
            self._out += option_reply(option, Rep.ACK)
            return None
        if option in (Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT):
            self._meta_context(reader)
            return None
        raise _OptionError(Rep.ERR_UNSUP, f"Unsupported option {option} ({option_name(option)})")

    def _export_name(self, name: str) -> Event:
        export = self.catalog.find_export(name)
        if export is None:
            # This option has no way to say no: hang up.
            return self._close("export not found")
        reply = struct.pack(">QH", export.size, export.transmission_flags(self.structured))
        self._out += reply if self.no_zeroes else reply + bytes(124)
        return self._begin(export)

    def _begin(self, export: ExportInfo) -> Event:
        if self.meta_export != export.name:
            self.contexts = ()
        self.export = export
        self.state = State.TRANSMISSION
        return Ready(export)

    def _info(self, reader: _OptionReader) -> Event | None:
        option = reader.option
        name = reader.name()
        send_name = block_size = False
        for _ in range(reader.u16()):
            request = reader.u16()
            send_name |= request == Info.NAME
            block_size |= request == Info.BLOCK_SIZE
        reader.end()
        export = self.catalog.find_export(name)
        if export is None:
            raise _OptionError(Rep.ERR_UNKNOWN, f"export '{_sanitize(name)}' not present")
        infos = []
        if send_name:
            infos.append(struct.pack(">H", Info.NAME) + name.encode("utf-8", "surrogateescape"))
        if export.description:
            infos.append(struct.pack(">H", Info.DESCRIPTION) + export.description.encode())
        # A minimum of 1 for clients that would not honour the real one.
        minimum = export.min_block if option == Opt.INFO or block_size else 1
        maximum = min(export.max_block, MAX_PAYLOAD)
        infos.append(struct.pack(">HIII", Info.BLOCK_SIZE, minimum, max(4096, minimum), maximum))
        infos.append(struct.pack(">HQH", Info.EXPORT, export.size,
                                 export.transmission_flags(self.structured)))
        for info in infos:
            self._out += option_reply(option, Rep.INFO, info)
        if option == Opt.INFO and not block_size and export.min_block > 1:
            raise _OptionError(Rep.ERR_BLOCK_SIZE_REQD, "request NBD_INFO_BLOCK_SIZE to use this export")
        self._out += option_reply(option, Rep.ACK)
        if option == Opt.GO:
            return self._begin(export)
        return None

    def _meta_context(self, reader: _OptionReader) -> None:
        option = reader.option
        setting = option == Opt.SET_META_CONTEXT
        if setting:
            self.meta_export = None
            self.contexts = ()
            if not self.structured:
                raise _OptionError(Rep.ERR_INVALID, f"request option '{option_name(option)}' "
                                   "when structured reply is not negotiated")
        name = reader.name()
        export = self.catalog.find_export(name)
        if export is None:
            raise _OptionError(Rep.ERR_UNKNOWN, f"export '{_sanitize(name)}' not present")
        count = reader.u32()
        selected: set[int] = set()
        if not setting and count == 0:  # LIST with no query: everything
            selected.update(export.context_ids())
        for _ in range(count):
            length = reader.u32()
            if length > MAX_STRING:
                reader.take(length)
                continue
            selected.update(_match_context(reader.string(length), export, listing=not setting))
        reader.end()
        chosen = tuple(sorted(selected))
        for context_id in chosen:
            # Ids mean something only in reply to SET.
            self._out += option_reply(option, Rep.META_CONTEXT, struct.pack(">I", context_id if setting else 0)
                                      + export.context_name(context_id).encode("utf-8", "surrogateescape"))
        self._out += option_reply(option, Rep.ACK)
        if setting:
            self.meta_export = name
            self.contexts = chosen

    # -- transmission ------------------------------------------------------------

    def _next_request(self) -> Event | None:
        if len(self._buf) - self._pos < REQUEST_SIZE:  # _need(), inline: once per request
            return self._eof_event()
        magic, flags, command, cookie, offset, length = _REQUEST.unpack_from(self._buf, self._pos)
        if magic != REQUEST_MAGIC:
            return self._close(f"invalid magic (got 0x{magic:x})")
        if command == Cmd.DISC:
            self._pos += REQUEST_SIZE
            return self._close("client sent NBD_CMD_DISC", clean=True)
        if command in _SIZED_COMMANDS and length > MAX_PAYLOAD:
            self._pos += REQUEST_SIZE
            # QEMU 7.2's text, stray space included.
            self._reply_error_now(Request(cookie, command, flags, offset, length), EINVAL,
                                  f"len ({length} ) is larger than max len ({MAX_PAYLOAD})")
            if command == Cmd.WRITE:
                # The payload cannot be skipped safely: hang up, as QEMU does.
                return self._close("Request handling failed in intermediate state")
            return None
        if command == _WRITE:
            if not self._need(REQUEST_SIZE + length):
                return self._eof_event()
            self._pos += REQUEST_SIZE
            request = Request(cookie, command, flags, offset, length, self._take(length))
        else:
            self._pos += REQUEST_SIZE
            request = Request(cookie, command, flags, offset, length)
        problem = self._check(request)
        if problem is not None:
            self._reply_error_now(request, *problem)
            return None
        return request

    def _check(self, request: Request) -> tuple[int, str] | None:
        """Why ``request`` must fail, in QEMU's order of checks, or None."""
        export = self.export
        assert export is not None
        command = request.command
        if export.read_only and command in _CHANGING_COMMANDS:
            return EPERM, "Export is read-only"
        if request.offset > export.size or request.length > export.size - request.offset:
            error = ENOSPC if command in (_WRITE, Cmd.WRITE_ZEROES) else EINVAL
            return error, (f"operation past EOF; From: {request.offset}, Len: {request.length}, "
                           f"Size: {export.size}")
        flags = request.flags
        if command in DATA_COMMANDS:  # most requests: only their flags to check
            if flags & ~(CMD_FLAG_FUA | (CMD_FLAG_DF if command == _READ and self.structured else 0)):
                return _bad_flags(command, flags)
            return None
        valid = CMD_FLAG_FUA
        if command == Cmd.WRITE_ZEROES:
            valid |= CMD_FLAG_NO_HOLE | (CMD_FLAG_FAST_ZERO if export.fast_zero else 0)
        elif command == Cmd.BLOCK_STATUS:
            valid |= CMD_FLAG_REQ_ONE
        if flags & ~valid:
            return _bad_flags(command, flags)
        if command == Cmd.BLOCK_STATUS:
            if not request.length:
                return EINVAL, "need non-zero length"
            if not self.contexts:
                return EINVAL, "CMD_BLOCK_STATUS not negotiated"
        elif command not in _KNOWN_COMMANDS:
            return EINVAL, f"invalid request type ({command}) received"
        return None

    def _reply_error_now(self, request: Request, error: int, message: str) -> None:
        self._out += self.reply_error(request, error, message)

    # -- replies -----------------------------------------------------------------

    def reply_ok(self, request: Request) -> bytes:
        """Success without payload (anything but a read or block status)."""
        return simple_reply(request.cookie)

    def reply_error(self, request: Request, error: int, message: str) -> bytes:
        """A failure: an error chunk if structured replies are on."""
        if self.structured:
            return error_chunk(request.cookie, error, message)
        return simple_reply(request.cookie, error)
