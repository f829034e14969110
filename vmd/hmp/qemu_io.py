"""HMP ``qemu-io DEVICE "COMMAND"``: qemu-io's commands on a drive or node.

QEMU's test suite drives the block layer of a running QEMU this way
(``vm.hmp_qemu_io(...)``). The command runs on the BlockBackend named
DEVICE, or on a temporary one over the node of that name, as QEMU's
hmp_qemu_io does; a command that writes first extends the backend's
permissions, which stay extended (QEMU says why in hmp_qemu_io).

Where the text goes matters, because the suite compares it: qemu-io's
reports (``wrote 512/512 bytes at offset 0``...) are printed on vmd's
standard output, as QEMU's ``printf`` does, through the stdio chardev when
one owns it so that they stay in order with the QMP output there; usage
and "not found" complaints go to standard error; failures QEMU reports
with ``error_report`` (a permission refused, a reopen refused) are the
HMP command's output. ``aio_*`` requests run on after the command has
returned; their report is printed when they end, and ``aio_flush`` waits
for all of them.

The commands: ``read``, ``write`` (``-P``, ``-z``, ``-q``, ``-C``),
``aio_read``, ``aio_write``, ``aio_flush``, ``flush``, ``discard``,
``reopen`` (``-r``, ``-w``, ``-o`` with ``read-only`` and ``detect-zeroes``,
also on ``file.``/``backing.`` children), and blkdebug's ``break``,
``remove_break``, ``resume`` and ``wait_break``.
"""

from __future__ import annotations

import asyncio
import errno
import getopt
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vmd.block.accounting import AcctType
from vmd.block.backend import BlockBackend
from vmd.block.node import BlockNode
from vmd.block.perm import ALL, NONE, Perm
from vmd.chardev.stdio import write_process_stdout
from vmd.errors import QMPError
from vmd.hmp.args import ArgumentError, parse_arguments

#: BDRV_REQUEST_MAX_BYTES: the longest single request.
MAX_REQUEST = 0x7FFFFE00
_SIZE = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?)([bBkKmMgGtTpPeE]?)\Z")
_UNITS = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


class CommandFailed(Exception):
    """A qemu-io command failed; its message has been printed."""


@dataclass
class Session:
    """What one qemu-io command line works on and where its text goes."""

    ctx: Any
    backend: BlockBackend
    #: error_report() text: the HMP command's output.
    report: list[str]
    #: The aio requests this command line started.
    tasks: list[asyncio.Task[None]]

    def print(self, text: str) -> None:
        """qemu-io's printf(): vmd's standard output."""
        write_process_stdout(text)

    def error(self, text: str) -> None:
        self.report.append(text + "\n")


async def hmp_qemu_io(ctx: Any, args: list[str]) -> str:
    """``qemu-io [-d] device "command"``."""
    text = args[0] if args else ""
    qdev = text.lstrip().startswith("-d ")
    if qdev:
        text = text.lstrip()[3:]
    try:
        device, command = parse_arguments("qemu-io", "ss", text)
    except ArgumentError as error:
        return f"{error}\nTry \"help qemu-io\" for more information\n"
    graph = ctx.daemon.block
    backend = None if qdev else graph.named_backend(device)
    temporary = backend is None
    if backend is None:
        try:
            node = graph.lookup(None, device)
        except QMPError as error:
            return f"Error: {error.desc}\n" if not qdev else f"Error: Cannot find device='{device}'\n"
        backend = graph.backend(Perm(0), ALL)
        backend.attach(node)
    session = Session(ctx, backend, [], [])
    try:
        await run_command(session, command)
    finally:
        if temporary:
            _release_after(session)
    return "".join(session.report)


def _release_after(session: Session) -> None:
    """Drop a temporary backend once the aio requests on it have ended."""
    async def release() -> None:
        await asyncio.wait(session.tasks)
        session.backend.detach()
    if session.tasks:
        _keep(asyncio.get_running_loop().create_task(release()))
    else:
        session.backend.detach()


@dataclass(frozen=True)
class Command:
    """One qemu-io command (qemu-io-cmds.c's cmdinfo_t)."""

    name: str
    alias: str | None
    run: Callable[[Session, list[str]], Awaitable[None]]
    argmin: int = 0
    argmax: int = 0
    args: str = ""
    oneline: str = ""
    perm: Perm = NONE

    def usage(self) -> str:
        return f"{self.name} {self.args} -- {self.oneline}\n"


async def run_command(session: Session, line: str) -> None:
    """qemuio_command(): split at spaces, find the command, check, run."""
    words = [word for word in line.split(" ") if word]
    if not words:
        return
    command = next((c for c in COMMANDS if words[0] in (c.name, c.alias)), None)
    if command is None:
        sys.stderr.write(f'command "{words[0]}" not found\n')
        return
    count = len(words) - 1
    if count < command.argmin or (command.argmax != -1 and count > command.argmax):
        sys.stderr.write(_count_error(command, count, words[0]))
        return
    backend = session.backend
    if command.perm & ~backend.perm:
        try:
            backend.set_perm(backend.perm | command.perm, backend.shared)
        except QMPError as error:
            session.error(error.desc)
            return
    try:
        await command.run(session, words[1:])
    except CommandFailed:
        pass


def _count_error(command: Command, count: int, name: str) -> str:
    if command.argmax == -1:
        expected = f"at least {command.argmin}"
    elif command.argmin == command.argmax:
        expected = f"{command.argmin}"
    else:
        expected = f"between {command.argmin} and {command.argmax}"
    return f"bad argument count {count} to {name}, expected {expected} arguments\n"


# -- arguments ----------------------------------------------------------------


def _options(session: Session, command: Command, words: list[str], spec: str,
             operands: int | None) -> tuple[dict[str, str], list[str]]:
    """getopt() with qemu-io's usage line on a bad option or operand count."""
    try:
        pairs, rest = getopt.gnu_getopt(words, spec)
    except getopt.GetoptError as error:
        sys.stderr.write(f"qemu-io: invalid option -- '{error.opt}'\n")
        session.print(command.usage())
        raise CommandFailed from None
    if operands is not None and len(rest) != operands:
        session.print(command.usage())
        raise CommandFailed
    return {flag[1]: value for flag, value in pairs}, rest


def cvtnum(session: Session, text: str) -> int:
    """qemu_strtosz(): a byte count with an optional k/M/G/T/P/E suffix."""
    match = _SIZE.match(text)
    value = None
    if match is not None:
        number, unit = match.groups()
        if number[:2] in ("0x", "0X"):
            value = int(number, 16) if not unit or unit in "bB" else None
        else:
            value = math.floor(float(number) * (1 << _UNITS[unit.lower()]))
    if value is None:
        session.print("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- "
                      f"{text}\n")
        raise CommandFailed
    if value >= 1 << 63:
        session.print(f"Parsing error: argument too large -- {text}\n")
        raise CommandFailed
    return value


def _pattern(session: Session, text: str) -> int:
    """parse_pattern(): a byte, as strtol with base 0 reads it."""
    try:
        value = int(text, 0) if not re.fullmatch(r"0[0-7]+", text) else int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        session.print(f"{text} is not a valid pattern byte\n")
        raise CommandFailed
    return value


def _length(session: Session, text: str) -> int:
    count = cvtnum(session, text)
    if count > MAX_REQUEST:
        session.print(f"length cannot exceed {MAX_REQUEST}, given {text}\n")
        raise CommandFailed
    return count


# -- reports ------------------------------------------------------------------


_BINARY_UNITS = ((60, " EiB"), (50, " PiB"), (40, " TiB"), (30, " GiB"), (20, " MiB"), (10, " KiB"))


def cvtstr(value: float) -> str:
    """qemu-io's cvtstr(): 3 decimals and a binary unit, ".000" dropped."""
    shift, suffix = next(((shift, suffix) for shift, suffix in _BINARY_UNITS if value >= 1 << shift),
                         (0, " bytes"))
    text = f"{value / (1 << shift):.3f}" if shift else f"{value:f}"
    trim = text.find(".000")
    return (text[:trim] if trim >= 0 else text) + suffix


def timestr(seconds: float) -> str:
    whole = int(seconds)
    if whole:
        return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60 + seconds % 1:05.2f}"
    return f"{seconds:05.2f} sec"


def report(op: str, seconds: float, offset: int, count: int, total: int, ops: int, terse: bool) -> str:
    """print_report(): two lines, or one parsable line with -C."""
    def per_second(value: float) -> float:
        return value / seconds if seconds else math.inf
    if terse:
        return (f"{total},{ops},{timestr(seconds)},{per_second(total):.3f},"
                f"{per_second(ops):.3f}\n")
    return (f"{op} {total}/{count} bytes at offset {offset}\n"
            f"{cvtstr(total)}, {ops} ops; {timestr(seconds)} "
            f"({cvtstr(per_second(total))}/sec and {per_second(ops):.4f} ops/sec)\n")


def _errno_text(error: BaseException) -> str:
    code = getattr(error, "errno", None)
    return os.strerror(code if isinstance(code, int) and code > 0 else errno.EIO)


async def _io(session: Session, op: Callable[[BlockBackend], Awaitable[None]]) -> None:
    """One request through the backend (counted in flight, waits while
    drained, throttled); a block layer error is EIO to qemu-io."""
    try:
        await op(session.backend)
    except QMPError as error:
        raise OSError(errno.EIO, error.desc) from None


# -- the commands ---------------------------------------------------------------


async def _read(session: Session, words: list[str]) -> None:
    opts, rest = _options(session, READ, words, "bCl:pP:qs:v", 2)
    offset, count = cvtnum(session, rest[0]), _length(session, rest[1])
    pattern = _pattern(session, opts["P"]) if "P" in opts else None
    if pattern is None and ("l" in opts or "s" in opts):
        session.print(READ.usage())
        raise CommandFailed
    start = cvtnum(session, opts["s"]) if "s" in opts else 0
    length = cvtnum(session, opts["l"]) if "l" in opts else count - start
    if length < 0 or start + length > count:
        session.print("pattern verification range exceeds end of read data\n")
        raise CommandFailed
    buf = bytearray(b"\xab" * count)
    began = time.monotonic()
    try:
        await _io(session, lambda blk: blk.read(offset, memoryview(buf)))
    except OSError as error:
        session.print(f"read failed: {_errno_text(error)}\n")
        return
    elapsed = time.monotonic() - began
    if pattern is not None and buf[start:start + length] != bytes([pattern]) * length:
        session.print(f"Pattern verification failed at offset {offset + start}, {length} bytes\n")
    if "q" in opts:
        return
    if "v" in opts:
        session.print(dump_buffer(buf, offset))
    session.print(report("read", elapsed, offset, count, count, 1, "C" in opts))


def dump_buffer(buf: bytes | bytearray, offset: int) -> str:
    lines = []
    for start in range(0, len(buf), 16):
        row = buf[start:start + 16]
        hexes = "".join(f"{byte:02x} " for byte in row)
        chars = "".join(chr(byte) if chr(byte).isalnum() and byte < 128 else "." for byte in row)
        lines.append(f"{offset + start:08x}:  {hexes} {chars}\n")
    return "".join(lines)


async def _write(session: Session, words: list[str]) -> None:
    opts, rest = _options(session, WRITE, words, "bcCfnpP:qs:uz", 2)
    zero = "z" in opts
    if "u" in opts and not zero:
        session.print("-u requires -z to be specified\n")
        raise CommandFailed
    if zero + ("P" in opts) + ("s" in opts) > 1:
        session.print("Only one of -z, -P, and -s can be specified at the same time\n")
        raise CommandFailed
    if "b" in opts or "c" in opts or "s" in opts:
        session.print("vmd's qemu-io has no -b, -c or -s\n")
        raise CommandFailed
    offset, count = cvtnum(session, rest[0]), _length(session, rest[1])
    pattern = _pattern(session, opts["P"]) if "P" in opts else 0xCD
    data = b"" if zero else bytes([pattern]) * count

    async def request(blk: BlockBackend) -> None:
        if zero:
            await blk.write_zeroes(offset, count, "u" in opts)
        else:
            await blk.write(offset, data)
    await _timed(session, "write", "wrote", request, offset, count, opts)


async def _timed(session: Session, name: str, verb: str, request: Callable[[BlockBackend], Awaitable[None]],
                 offset: int, count: int, opts: dict[str, str]) -> None:
    """A request the command waits for, then its report (or its failure)."""
    began = time.monotonic()
    try:
        await _io(session, request)
    except OSError as error:
        session.print(f"{name} failed: {_errno_text(error)}\n")
        return
    if "q" not in opts:
        session.print(report(verb, time.monotonic() - began, offset, count, count, 1, "C" in opts))


async def _aio_write(session: Session, words: list[str]) -> None:
    opts, rest = _options(session, AIO_WRITE, words, "CfiqP:uz", None)
    if len(rest) < 2:
        session.print(AIO_WRITE.usage())
        raise CommandFailed
    zero = "z" in opts
    if zero and len(rest) != 2:
        session.print("-z supports only a single length parameter\n")
        raise CommandFailed
    if "u" in opts and not zero:
        session.print("-u requires -z to be specified\n")
        raise CommandFailed
    if zero and "P" in opts:
        session.print("-z and -P cannot be specified at the same time\n")
        raise CommandFailed
    pattern = _pattern(session, opts["P"]) if "P" in opts else 0xCD
    offset, count = _aio_range(session, opts, rest, AcctType.WRITE)
    began = time.monotonic()

    async def request(blk: BlockBackend) -> None:
        if zero:
            await blk.write_zeroes(offset, count, "u" in opts)
        else:
            await blk.write(offset, bytes([pattern]) * count)

    def done(error: OSError | None) -> str:
        if error is not None:
            return f"aio_write failed: {_errno_text(error)}\n"
        if "q" in opts:
            return ""
        return report("wrote", time.monotonic() - began, offset, count, count, 1, "C" in opts)
    # qemu-io accounts no zero write (its cookie stays empty).
    _in_background(session, request, done, None if zero else AcctType.WRITE, count)


async def _aio_read(session: Session, words: list[str]) -> None:
    opts, rest = _options(session, AIO_READ, words, "CP:iqv", None)
    if len(rest) < 2:
        session.print(AIO_READ.usage())
        raise CommandFailed
    pattern = _pattern(session, opts["P"]) if "P" in opts else None
    offset, count = _aio_range(session, opts, rest, AcctType.READ)
    buf = bytearray(b"\xab" * count)
    began = time.monotonic()

    def done(error: OSError | None) -> str:
        if error is not None:
            return f"readv failed: {_errno_text(error)}\n"
        text = ""
        if pattern is not None and buf != bytes([pattern]) * count:
            text += f"Pattern verification failed at offset {offset}, {count} bytes\n"
        if "q" in opts:
            return text
        if "v" in opts:
            text += dump_buffer(buf, offset)
        return text + report("read", time.monotonic() - began, offset, count, count, 1, "C" in opts)
    _in_background(session, lambda blk: blk.read(offset, memoryview(buf)), done, AcctType.READ, count)


def _aio_range(session: Session, opts: dict[str, str], words: list[str], kind: AcctType) -> tuple[int, int]:
    """An aio command's offset and total length. ``-i`` (a request made
    invalid on purpose) and lengths that do not parse are invalid requests
    in the backend's stats, as qemu-io's; a bad offset is not counted."""
    stats = session.backend.stats
    if "i" in opts:
        session.print(f"injecting invalid {'write' if kind == AcctType.WRITE else 'read'} request\n")
        stats.invalid(kind)
        raise CommandFailed
    offset = cvtnum(session, words[0])
    try:
        return offset, sum(cvtnum(session, word) for word in words[1:])
    except CommandFailed:
        stats.invalid(kind)
        raise


def _in_background(session: Session, request: Callable[[BlockBackend], Awaitable[None]],
                   done: Callable[[OSError | None], str], kind: AcctType | None, size: int) -> None:
    """An aio request: runs on after the command, accounted in the
    backend's stats (unless ``kind`` is None), reported when it ends."""
    stats = session.backend.stats
    cookie = stats.start(kind, size) if kind is not None else None

    async def run() -> None:
        error = None
        try:
            await _io(session, request)
        except OSError as failure:
            error = failure
        if cookie is not None:
            (stats.done if error is None else stats.failed)(cookie)
        session.print(done(error))
    task = asyncio.get_running_loop().create_task(run())
    session.tasks.append(task)
    _AIO_TASKS.add(task)
    task.add_done_callback(_AIO_TASKS.discard)


#: aio requests still running (``aio_flush`` waits for them).
_AIO_TASKS: set[asyncio.Task[None]] = set()
_BACKGROUND: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    """Hold a reference to a background task until it ends."""
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def _aio_flush(session: Session, _words: list[str]) -> None:
    """blk_drain_all(): every aio request has ended (accounted as a flush)."""
    stats = session.backend.stats
    cookie = stats.start(AcctType.FLUSH, 0)
    while _AIO_TASKS:
        await asyncio.wait(list(_AIO_TASKS))
    stats.done(cookie)


async def _flush(session: Session, _words: list[str]) -> None:
    try:
        await _io(session, lambda blk: blk.flush())
    except OSError:
        pass   # QEMU's flush_f returns the error without a word


async def _discard(session: Session, words: list[str]) -> None:
    opts, rest = _options(session, DISCARD, words, "Cq", 2)
    offset, count = cvtnum(session, rest[0]), _length(session, rest[1])
    await _timed(session, "discard", "discard", lambda blk: blk.discard(offset, count), offset, count, opts)


async def _reopen(session: Session, words: list[str]) -> None:
    """reopen [-r|-w] [-o options]: the options vmd can change on a live node."""
    from vmd.block.reopen import reopen
    try:
        pairs, rest = getopt.gnu_getopt(words, "c:o:rw")
    except getopt.GetoptError as error:
        sys.stderr.write(f"qemu-io: invalid option -- '{error.opt}'\n")
        session.print(REOPEN.usage())
        return
    if rest:
        session.print(REOPEN.usage())
        return
    options: dict[str, str] = {}
    read_only: bool | None = None
    for flag, value in pairs:
        if flag in ("-r", "-w"):
            if read_only is not None:
                session.error("Only one -r/-w option may be given")
                return
            read_only = flag == "-r"
        elif flag == "-o":
            options.update(_keyvals(value))
        else:
            session.error("vmd's qemu-io reopen has no -c")
            return
    if "read-only" in options and read_only is not None:
        session.error("Cannot set both -r/-w and 'read-only'")
        return
    if read_only is not None:
        options["read-only"] = "on" if read_only else "off"
    try:
        await reopen(session.backend.node, options, session.ctx.daemon.block)
    except QMPError as error:
        session.error(error.desc)
        return
    if read_only:
        session.backend.set_perm(session.backend.perm & ~(Perm.WRITE | Perm.WRITE_UNCHANGED),
                                 session.backend.shared)


def _keyvals(text: str) -> dict[str, str]:
    from vmd.cli.qemu_opts import split_params
    return dict(split_params(text))


def _blkdebug(session: Session) -> Any:
    """The first blkdebug node down the primary children (bdrv_debug_*)."""
    from vmd.block.drivers.blkdebug import BlkdebugNode
    node: BlockNode | None = session.backend.node
    while node is not None and not isinstance(node, BlkdebugNode):
        node = node.child("file") or node.child("image") or (node.filtered() if node.is_filter else None)
    return node


async def _break(session: Session, words: list[str]) -> None:
    node = _blkdebug(session)
    error = errno.ENOTSUP if node is None else node.add_breakpoint(words[0], words[1])
    if error:
        session.print(f"Could not set breakpoint: {os.strerror(error)}\n")


async def _remove_break(session: Session, words: list[str]) -> None:
    node = _blkdebug(session)
    error = errno.ENOTSUP if node is None else node.remove_breakpoint(words[0])
    if error:
        session.print(f"Could not remove breakpoint {words[0]}: {os.strerror(error)}\n")


async def _resume(session: Session, words: list[str]) -> None:
    node = _blkdebug(session)
    error = errno.ENOTSUP if node is None else node.resume(words[0])
    if error:
        session.print(f"Could not resume request: {os.strerror(error)}\n")


async def _wait_break(session: Session, words: list[str]) -> None:
    node = _blkdebug(session)
    if node is not None:
        await node.wait_suspended(words[0])


READ = Command("read", "r", _read, 2, -1, "[-abCqv] [-P pattern [-s off] [-l len]] off len",
               "reads a number of bytes at a specified offset")
WRITE = Command("write", "w", _write, 2, -1, "[-bcCfnquz] [-P pattern | -s source_file] off len",
                "writes a number of bytes at a specified offset", Perm.WRITE)
AIO_READ = Command("aio_read", None, _aio_read, 2, -1, "[-Ciqv] [-P pattern] off len [len..]",
                   "asynchronously reads a number of bytes")
AIO_WRITE = Command("aio_write", None, _aio_write, 2, -1, "[-Cfiquz] [-P pattern] off len [len..]",
                    "asynchronously writes a number of bytes", Perm.WRITE)
DISCARD = Command("discard", "d", _discard, 2, -1, "[-Cq] off len",
                  "discards a number of bytes at a specified offset", Perm.WRITE)
REOPEN = Command("reopen", None, _reopen, 0, -1, "[(-r|-w)] [-c cache] [-o options]",
                 "reopens an image with new options")
COMMANDS = (
    READ, WRITE, AIO_READ, AIO_WRITE,
    Command("aio_flush", None, _aio_flush, oneline="completes all outstanding aio requests"),
    Command("flush", "f", _flush, oneline="flush all in-core file state to disk"),
    DISCARD, REOPEN,
    Command("break", None, _break, 2, 2, "event tag",
            "sets a breakpoint on event and tags the stopped request as tag"),
    Command("remove_break", None, _remove_break, 1, 1, "tag", "remove a breakpoint by tag"),
    Command("resume", None, _resume, 1, 1, "tag", "resumes the request tagged as tag"),
    Command("wait_break", None, _wait_break, 1, 1, "tag", "waits for the suspension of a request"),
)
