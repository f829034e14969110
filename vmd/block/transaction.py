"""``transaction``: several block operations, all or none (QEMU 7.2's
qmp_transaction and its BlkActionOps in blockdev.c).

Each action of a transaction goes through four steps, as QEMU's:

- ``prepare`` does the work in a way that can still be undone; it is the
  only step that may fail (raising ``QMPError`` with QEMU's text);
- ``commit`` makes it final (a snapshot's old top becomes read-only, a
  backup job starts); it does not fail;
- ``abort`` undoes a prepared action, also one whose ``prepare`` failed
  half-way, so it must check what was done;
- ``clean`` releases what ``prepare`` held (its drained section, a node it
  opened), after ``commit`` or ``abort``.

``run_transaction`` first drains every node (QEMU's bdrv_drain_all: running
jobs pause and resume), then prepares the actions in order. If one fails,
every action prepared so far, the failing one included, is aborted, newest
first, and the error is the command's; otherwise all are committed in
order. Either way all are cleaned, in order. An action drains the nodes it
works on from ``prepare`` to ``clean`` (``Action.drain``), so no request
of a user runs between the prepares and the commits.

With ``completion-mode: grouped`` the jobs the actions start share one job
transaction (``JobTxn``): they wait for each other, finalize together, and
one failing cancels the others. Actions that start no job refuse it with
``check_completion_mode``.

The standalone commands ``blockdev-snapshot``, ``blockdev-snapshot-sync``,
``blockdev-backup`` and ``drive-backup`` are one-action transactions, as in
QEMU, so there is one way to do each.

How to add an action kind:

1. give ``TransactionAction`` in ``schema/transaction.json`` the kind's
   branch (a ``...Wrapper`` struct whose ``data`` is the command's
   argument type) and regenerate ``vmd/_generated``;
2. in the module of the subsystem, subclass ``Action`` and register it with
   ``@action(TransactionActionKind.THE_KIND)``. ``self.data`` is the
   generated argument object, ``self.txn`` the ``Transaction`` (the daemon,
   the grouped ``job_txn`` or None). Override ``prepare`` and whichever of
   ``commit``/``abort``/``clean`` the action needs (all are coroutines);
   call ``self.check_completion_mode()`` first unless the action starts
   jobs that can be grouped (dirty-bitmap actions accept grouped too);
3. add that module to ``ACTION_MODULES`` below, so that it is imported
   (and its actions registered) before the first transaction runs;
4. a standalone command of the same kind runs ``run_action(daemon, kind,
   data)``.

Everything here runs on the event loop thread, one QMP command at a time.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

from vmd._generated.types import ActionCompletionMode, TransactionAction, TransactionActionKind, TransactionProperties
from vmd.block.edge import drained
from vmd.block.node import BlockNode
from vmd.errors import QMPError
from vmd.job.core import JobTxn

#: Modules defining actions (imported on the first transaction).
ACTION_MODULES = ("vmd.block.snapshot", "vmd.block.jobs.backup", "vmd.block.bitmap_commands")

_ACTIONS: dict[TransactionActionKind, type[Action]] = {}


def action(kind: TransactionActionKind) -> Callable[[type[Action]], type[Action]]:
    """Register ``cls`` as the action of ``kind``."""
    def register(cls: type[Action]) -> type[Action]:
        cls.kind = kind
        _ACTIONS[kind] = cls
        return cls
    return register


class Transaction:
    """What the actions of one ``transaction`` command share."""

    def __init__(self, daemon: Any, completion_mode: ActionCompletionMode) -> None:
        self.daemon = daemon
        self.completion_mode = completion_mode
        #: The job transaction of ``grouped`` (None: each job on its own).
        self.job_txn = JobTxn() if completion_mode == ActionCompletionMode.GROUPED else None


class Action:
    """One action of a transaction (QEMU's BlkActionState and its ops)."""

    kind: ClassVar[TransactionActionKind]

    def __init__(self, txn: Transaction, data: Any) -> None:
        self.txn = txn
        self.data = data
        self._drains = contextlib.AsyncExitStack()

    @property
    def daemon(self) -> Any:
        return self.txn.daemon

    def check_completion_mode(self) -> None:
        """QEMU's action_check_completion_mode: only ``individual``."""
        mode = self.txn.completion_mode
        if mode != ActionCompletionMode.INDIVIDUAL:
            raise QMPError(f"Action '{self.kind.value}' does not support Transaction property "
                           f"completion-mode = {mode.value}")

    async def drain(self, node: BlockNode) -> None:
        """Drain ``node`` until this action is cleaned (paired with ``clean``)."""
        await self._drains.enter_async_context(drained(node))

    async def end_drains(self) -> None:
        """End the drained sections of ``drain`` (``clean`` calls it)."""
        await self._drains.aclose()

    async def prepare(self) -> None:
        raise NotImplementedError

    async def commit(self) -> None:
        """Make the prepared action final."""

    async def abort(self) -> None:
        """Undo what ``prepare`` did (also a failed, partial ``prepare``)."""

    async def clean(self) -> None:
        """Release what ``prepare`` held, after ``commit`` or ``abort``."""
        await self.end_drains()


def _load_actions() -> None:
    for module in ACTION_MODULES:
        importlib.import_module(module)


async def run_transaction(daemon: Any, actions: list[tuple[TransactionActionKind, Any]],
                          completion_mode: ActionCompletionMode = ActionCompletionMode.INDIVIDUAL) -> None:
    """Prepare every action, then commit all or abort all; clean all."""
    _load_actions()
    txn = Transaction(daemon, completion_mode)
    async with drained(*daemon.block):
        pass
    states: list[Action] = []
    try:
        for kind, data in actions:
            cls = _ACTIONS.get(kind)
            if cls is None:
                raise QMPError(f"Action '{kind.value}' is not supported by vmd")
            states.append(cls(txn, data))
            await states[-1].prepare()
    except BaseException:
        for state in reversed(states):
            await state.abort()
        await _clean(states)
        raise
    for state in states:
        await state.commit()
    await _clean(states)


async def _clean(states: list[Action]) -> None:
    for state in states:
        await state.clean()


async def run_action(daemon: Any, kind: TransactionActionKind, data: Any) -> None:
    """A standalone command: a transaction of one action (blockdev_do_action)."""
    await run_transaction(daemon, [(kind, data)])


async def qmp_transaction(ctx: Any, actions: list[TransactionAction],
                          properties: TransactionProperties | None) -> None:
    mode = properties.completion_mode if properties is not None else None
    await run_transaction(ctx.daemon, [(entry.type, getattr(entry.u, "data", None)) for entry in actions],
                          mode or ActionCompletionMode.INDIVIDUAL)


@action(TransactionActionKind.ABORT)
class AbortAction(Action):
    """Always fails: for testing that nothing stays half-done."""

    async def prepare(self) -> None:
        raise QMPError("Transaction aborted using Abort action")
