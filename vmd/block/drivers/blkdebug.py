"""The ``blkdebug`` filter: injecting I/O errors by rule, as QEMU's blkdebug.

A blkdebug node passes every request to its ``image`` child, unless a rule
says to fail it. Rules come inline (``inject-error``, ``set-state`` in
``blockdev-add``/``-blockdev``) and from a config file (``config``) in
QEMU's syntax::

    [inject-error]
    event = "write_aio"
    errno = "28"
    once = "on"

    [set-state]
    event = "flush_to_disk"
    state = "1"
    new_state = "2"

How rules work (QEMU 7.2's blkdebug.c): the node has a state, 1 at open.
When an *event* fires, each rule on that event whose ``state`` matches (or
that has none) acts: ``set-state`` rules move the node to ``new_state``
(once all rules of the event have run), ``inject-error`` rules become
*active*. Each request then looks for the first active rule whose
``iotype`` matches (default: read, write, write-zeroes, discard and flush)
and whose ``sector`` lies in the request (default: any); if there is one,
the request fails with the rule's ``errno`` (default EIO) instead of
reaching the image, and a ``once`` rule is removed. Without ``immediately``
the failure is reported after one turn of the event loop, as QEMU
reschedules the coroutine first.

Where events come from, as in QEMU: format drivers report them on their
file child (``BlockNode.debug_event``): ``raw`` and ``qcow2`` fire
``read_aio`` before reading guest data and ``write_aio`` before writing it;
and the block layer fires ``pwritev``, ``pwritev_zero`` and
``pwritev_done`` on the node written, which this node does for the
requests it receives, and ``flush_to_os``/``flush_to_disk`` (the latter
only if something was written since the last flush) on the primary child
of the node flushed (``BlockNode.flush``): a format's own flushes of its
file (metadata ordering) fire nothing here. A flush is checked against
the rules only if this node was written since its last flush (QEMU checks
in its flush_to_disk callback). vmd's formats report no
metadata events (``l2_update``, ``refblock_alloc``, ...): rules on them are
accepted and never fire. ``align``, ``max-transfer`` and the other request
limits are accepted and not applied. ``take-child-perms`` and
``unshare-child-perms`` change what the node asks of its image, as QEMU's.

Breakpoints (qemu-io's ``break EVENT TAG``, ``resume TAG``,
``remove_break TAG``, ``wait_break TAG``) suspend the request that fires
EVENT until it is resumed; each breakpoint suspends one request and is
gone. An event a format reports on this node (``read_aio``...) comes just
before its request reaches the node, so the request is held as it
arrives; the node's own events hold it where they fire. QEMU prints
"blkdebug: Suspended request" only outside qtest; vmd never prints it.
"""

from __future__ import annotations

import asyncio
import errno as errnos
import os
import re
from dataclasses import dataclass
from typing import Any

from vmd._generated.types import BlkdebugEvent, BlkdebugIOType
from vmd.block import aio
from vmd.block.filename import NamesOf
from vmd.block.graph import BlockGraph, driver, node_name_of
from vmd.block.node import BlockNode, Extent
from vmd.block.perm import NONE, Perm, Role
from vmd.errors import QMPError

SECTOR_SIZE = 512
#: The I/O types a rule without ``iotype`` applies to (block-status is not one).
DEFAULT_IOTYPES = frozenset({BlkdebugIOType.READ, BlkdebugIOType.WRITE, BlkdebugIOType.WRITE_ZEROES,
                             BlkdebugIOType.DISCARD, BlkdebugIOType.FLUSH})


@dataclass(eq=False)
class InjectRule:
    """An ``inject-error`` rule."""

    event: BlkdebugEvent
    state: int = 0
    iotypes: frozenset[BlkdebugIOType] = DEFAULT_IOTYPES
    errno: int = errnos.EIO
    offset: int | None = None
    once: bool = False
    immediately: bool = False

    def matches(self, offset: int, length: int, iotype: BlkdebugIOType) -> bool:
        if iotype not in self.iotypes:
            return False
        return self.offset is None or (length > 0 and offset <= self.offset < offset + length)


@dataclass(eq=False)
class StateRule:
    """A ``set-state`` rule."""

    event: BlkdebugEvent
    new_state: int
    state: int = 0


class BlkdebugNode(BlockNode):
    driver = "blkdebug"
    is_filter = True
    is_protocol = True
    strong_options = ("config", "inject-error.", "set-state.", "align", "max-transfer", "opt-write-zero",
                      "max-write-zero", "opt-discard", "max-discard")

    def __init__(self, node_name: str, image: BlockNode, rules: list[InjectRule | StateRule],
                 *, config: str | None = None, read_only: bool = False,
                 take: Perm = NONE, unshare: Perm = NONE) -> None:
        super().__init__(node_name, read_only=read_only)
        self.take, self.unshare = take, unshare
        self.attach_child("image", image, Role.FILTERED | Role.PRIMARY)
        self.rules = rules
        #: Breakpoints as (event, tag); suspended requests by tag.
        self.breakpoints: list[tuple[str, str]] = []
        self.suspended: list[tuple[str, asyncio.Future[None]]] = []
        self._held: list[str] = []   # tags of requests to hold as they arrive
        self._suspend_waiters: list[asyncio.Future[None]] = []
        self.active: list[InjectRule] = []
        self.state = 1
        self.config = config
        #: Errors injected so far (for tests and the fault harness).
        self.injected = 0

    @property
    def image(self) -> BlockNode:
        return self.children["image"].child

    @property  # type: ignore[override]
    def total_size(self) -> int:
        return self.image.total_size if self.children else 0

    @total_size.setter
    def total_size(self, value: int) -> None:
        """Set by ``BlockNode.__init__``; the size is the image's."""

    @property
    def grows_on_write(self) -> bool:
        """Over a file, a format's writes past the end grow it through this node."""
        return bool(self.children) and self.image.grows_on_write

    @grows_on_write.setter
    def grows_on_write(self, value: bool) -> None:
        """Never set: it is the image's."""

    def exact_filename(self, options: dict[str, Any], names_of: NamesOf) -> str:
        """blkdebug_refresh_filename: ``blkdebug:CONFIG:IMAGE`` while the
        image has a plain name and no option but the config file was given."""
        image = names_of(self.image).exact
        if not image or set(options) - {"config", "image", "x-image", "driver"}:
            return ""
        return f"blkdebug:{self.config or ''}:{image}"

    # -- rules -------------------------------------------------------------------

    def child_perm(self, edge: Any, perm: Perm, shared: Perm) -> tuple[Perm, Perm]:
        """The default permissions, plus ``take-child-perms``, less ``unshare-child-perms``."""
        need, share = super().child_perm(edge, perm, shared)
        return need | self.take, share & ~self.unshare

    # -- breakpoints ---------------------------------------------------------------

    def add_breakpoint(self, event: str, tag: str) -> int:
        """``break EVENT TAG``: 0, or ENOENT for an unknown event."""
        if event not in {member.value for member in BlkdebugEvent}:
            return errnos.ENOENT
        self.breakpoints.insert(0, (event, tag))
        return 0

    def remove_breakpoint(self, tag: str) -> int:
        """``remove_break TAG``: drop its breakpoints, resume what it holds."""
        found = any(bp_tag == tag for _event, bp_tag in self.breakpoints)
        self.breakpoints = [bp for bp in self.breakpoints if bp[1] != tag]
        resumed = False
        while self.resume(tag) == 0:
            resumed = True
        return 0 if found or resumed else errnos.ENOENT

    def resume(self, tag: str) -> int:
        """``resume TAG``: let the first request held under ``tag`` go on."""
        for index, (held_tag, future) in enumerate(self.suspended):
            if held_tag == tag:
                del self.suspended[index]
                future.set_result(None)
                return 0
        return errnos.ENOENT

    async def wait_suspended(self, tag: str) -> None:
        """``wait_break TAG``: until a request is held under ``tag``."""
        while not any(held_tag == tag for held_tag, _future in self.suspended):
            waiter = asyncio.get_running_loop().create_future()
            self._suspend_waiters.append(waiter)
            await waiter

    async def _hold(self) -> None:
        """Suspend the arriving request for each breakpoint that fired."""
        while self._held:
            future = asyncio.get_running_loop().create_future()
            self.suspended.insert(0, (self._held.pop(0), future))
            waiters, self._suspend_waiters = self._suspend_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            await future

    def debug_event(self, event: str) -> None:
        """Fire ``event``: activate its error rules, apply its state changes,
        and mark the request for suspension if a breakpoint is on it."""
        for bp_event, tag in list(self.breakpoints):
            if bp_event == event:
                self.breakpoints.remove((bp_event, tag))
                self._held.append(tag)
        new_state = self.state
        for rule in self.rules:
            if rule.event != event or (rule.state and rule.state != self.state):
                continue
            if isinstance(rule, StateRule):
                new_state = rule.new_state
            elif rule not in self.active:
                self.active.insert(0, rule)
        self.state = new_state

    async def _check(self, offset: int, length: int, iotype: BlkdebugIOType) -> None:
        """Fail the request if an active rule says so (QEMU's rule_check)."""
        rule = next((r for r in self.active if r.matches(offset, length, iotype)), None)
        if rule is None or not rule.errno:
            return
        if rule.once:
            self.active.remove(rule)
            self.rules.remove(rule)
        self.injected += 1
        if not rule.immediately:
            await asyncio.sleep(0)
        raise OSError(rule.errno, os.strerror(rule.errno))

    # -- I/O -----------------------------------------------------------------------

    async def _co_read(self, offset: int, buf: memoryview) -> None:
        await self._hold()
        await self._check(offset, len(buf), BlkdebugIOType.READ)
        await self.image.read(offset, buf)

    async def _co_write(self, offset: int, data: memoryview) -> None:
        await self._hold()
        self.debug_event(BlkdebugEvent.PWRITEV)
        await self._hold()
        await self._check(offset, len(data), BlkdebugIOType.WRITE)
        await self.image.write(offset, data)
        self.debug_event(BlkdebugEvent.PWRITEV_DONE)

    async def _co_write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        await self._hold()
        self.debug_event(BlkdebugEvent.PWRITEV_ZERO)
        await self._hold()
        await self._check(offset, length, BlkdebugIOType.WRITE_ZEROES)
        await self.image.write_zeroes(offset, length, may_unmap)

    async def _co_discard(self, offset: int, length: int) -> None:
        await self._hold()
        await self._check(offset, length, BlkdebugIOType.DISCARD)
        await self.image.discard(offset, length)

    async def _co_flush(self) -> None:
        await self._hold()
        if self.write_gen != self.flushed_gen:
            await self._check(0, 0, BlkdebugIOType.FLUSH)
        await self.image.flush()

    async def _co_truncate(self, size: int) -> None:
        await self.image.truncate(size)

    async def _co_block_status(self, offset: int, length: int) -> Extent:
        await self._check(offset, length, BlkdebugIOType.BLOCK_STATUS)
        return await self.image.block_status(offset, length)


# -- rules from QMP and from a config file --------------------------------------------

def inline_rules(branch: Any) -> list[InjectRule | StateRule]:
    """The rules of ``inject-error`` and ``set-state`` in blockdev-add."""
    rules: list[InjectRule | StateRule] = []
    for item in branch.inject_error or []:
        rules.append(InjectRule(
            event=item.event, state=item.state or 0,
            iotypes=frozenset({item.iotype}) if item.iotype is not None else DEFAULT_IOTYPES,
            errno=errnos.EIO if item.errno is None else item.errno,
            offset=None if item.sector is None or item.sector < 0 else item.sector * SECTOR_SIZE,
            once=bool(item.once), immediately=bool(item.immediately)))
    for item in branch.set_state or []:
        rules.append(StateRule(event=item.event, new_state=item.new_state, state=item.state or 0))
    return rules


_GROUP = re.compile(r'\[\s*([A-Za-z0-9_-]+)\s*(?:"[^"]*"\s*)?\]$')
_SETTING = re.compile(r'([A-Za-z0-9_.-]+)\s*=\s*"([^"]*)"$')
_KEYS = {"inject-error": {"event", "state", "iotype", "errno", "sector", "once", "immediately"},
         "set-state": {"event", "state", "new_state"}}


def parse_config(text: str) -> list[InjectRule | StateRule]:
    """Rules from a blkdebug config file (QEMU's qemu_config_parse format)."""
    groups: list[tuple[str, dict[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        group = _GROUP.match(line)
        if group is not None:
            if group.group(1) not in _KEYS:
                raise QMPError("Could not parse blkdebug config file")
            groups.append((group.group(1), {}))
            continue
        setting = _SETTING.match(line)
        if setting is None or not groups or setting.group(1) not in _KEYS[groups[-1][0]]:
            raise QMPError("Could not parse blkdebug config file")
        groups[-1][1][setting.group(1)] = setting.group(2)
    return [_config_rule(kind, values) for kind, values in groups]


def _config_rule(kind: str, values: dict[str, str]) -> InjectRule | StateRule:
    name = values.get("event", "")
    try:
        event = BlkdebugEvent(name.replace(".", "_"))
    except ValueError:
        raise QMPError(f"Invalid event name \"{name}\"") from None
    state = _number(values, "state", 0)
    if kind == "set-state":
        return StateRule(event=event, new_state=_number(values, "new_state", 0), state=state)
    iotypes = DEFAULT_IOTYPES
    if "iotype" in values:
        try:
            iotypes = frozenset({BlkdebugIOType(values["iotype"])})
        except ValueError:
            raise QMPError(f"Invalid I/O type \"{values['iotype']}\"") from None
    sector = _number(values, "sector", -1)
    return InjectRule(event=event, state=state, iotypes=iotypes, errno=_number(values, "errno", errnos.EIO),
                      offset=None if sector < 0 else sector * SECTOR_SIZE,
                      once=_flag(values, "once"), immediately=_flag(values, "immediately"))


def _number(values: dict[str, str], key: str, default: int) -> int:
    text = values.get(key)
    if text is None:
        return default
    try:
        return int(text, 0)
    except ValueError:
        raise QMPError(f"Parameter '{key}' expects a number") from None


def _flag(values: dict[str, str], key: str) -> bool:
    text = values.get(key, "off")
    if text not in ("on", "off", "yes", "no", "true", "false"):
        raise QMPError(f"Parameter '{key}' expects 'on' or 'off'")
    return text in ("on", "yes", "true")


def read_config(path: str) -> list[InjectRule | StateRule]:
    """Rules from the config file at ``path`` (read when the node opens)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as config:
            text = config.read(1 << 20)
    except OSError as error:
        raise QMPError(f"Could not read blkdebug config file: "
                       f"{os.strerror(error.errno or errnos.EIO)}") from None
    return parse_config(text)


def split_filename(filename: str) -> tuple[str, str]:
    """``blkdebug:CONFIG:IMAGE`` (QEMU's legacy file name, which iotests
    write into image headers) as its config file (may be empty) and image."""
    config, sep, image = filename[len("blkdebug:"):].partition(":")
    if not sep:
        raise QMPError("blkdebug requires both config file and image path")
    return config, image


async def open_legacy(filename: str, image: BlockNode, *, read_only: bool) -> BlkdebugNode:
    """A blkdebug node over ``image`` (already open, the file that
    ``filename`` names) configured by the file ``filename`` names."""
    config, _ = split_filename(filename)
    rules = await aio.run(read_config, config) if config else []
    return BlkdebugNode(filename, image, rules, config=config or None, read_only=read_only)


@driver("blkdebug")
async def open_blkdebug(options: Any, graph: BlockGraph) -> BlockNode:
    branch = options.u
    align = branch.align
    if align is not None and (align < 0 or align >= 1 << 31 or (align and align & (align - 1))):
        raise QMPError("Invalid alignment")
    # Read once at open, as QEMU does (on a worker: it is a file).
    rules = await aio.run(read_config, branch.config) if branch.config else []
    rules += inline_rules(branch)
    image = await graph.open_child(branch.image, options, "image")
    return BlkdebugNode(node_name_of(options), image, rules, config=branch.config,
                        read_only=bool(getattr(options, "read_only", False)),
                        take=_perms(branch.take_child_perms), unshare=_perms(branch.unshare_child_perms))


def _perms(names: Any) -> Perm:
    """A BlockPermission list as permission bits."""
    bits = Perm(0)
    for name in names or ():
        bits |= Perm[str(getattr(name, "value", name)).replace("-", "_").upper()]
    return bits
