"""One QMP client connection on the event loop.

The connection feeds received bytes to the stream parser and answers each
message through its ``QMPSession``. Like QEMU, in-band requests are answered
strictly in order: a coroutine command holds back the requests behind it
(up to ``MAX_QUEUED_REQUESTS``, after which input is no longer read), while
``exec-oob`` requests are answered at once. In-band commands of all clients
take turns (``dispatch.CommandTurns``): one runs at a time, daemon-wide.

A client that disconnects loses the requests it had queued; the command
already running completes (a graph change is never left half done) and its
reply is dropped, as in QEMU.

Resource bounds, so one client cannot hurt the others:
* input: one message may hold at most the parser's limits (64 MiB); a queue
  of waiting requests stops reading from the socket;
* time: at most ``MAX_ANSWERS_PER_TURN`` requests are answered before the
  other clients get their turn;
* output: when the client does not read its replies, answering and reading
  its requests stop too (``pause_writing``); if unread output still grows past
  ``MAX_UNREAD_OUTPUT`` (events keep coming), the client is disconnected;
* all clients together: unread output counts against the daemon-wide
  ``vmd.memory_cap.CAP``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from vmd.memory_cap import CAP, Holder
from vmd.qmp.access import describe_peer
from vmd.qmp.dispatch import Response, is_oob_request
from vmd.qmp.json_stream import JSONStreamParser, Message
from vmd.qmp.json_writer import encode_message
from vmd.qmp.session import QMPSession

log = logging.getLogger(__name__)

MAX_QUEUED_REQUESTS = 8
#: Requests of one client answered in one turn of the event loop.
MAX_ANSWERS_PER_TURN = 8
WRITE_BUFFER_HIGH = 1 << 20
MAX_UNREAD_OUTPUT = 16 << 20


class QMPConnection(asyncio.Protocol):
    """The asyncio protocol serving one QMP client."""

    def __init__(self, session: QMPSession,
                 on_close: Callable[[QMPConnection], None],
                 greeted: bool = False) -> None:
        self.session = session
        self._greeted = greeted
        self._on_close = on_close
        self._parser = JSONStreamParser()
        self._queue: collections.deque[Message] = collections.deque()
        self._running: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._queue_scheduled = False
        self._holder: Holder | None = None

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        sock = transport.get_extra_info("socket")
        peer = describe_peer(sock)
        if sock is not None:  # a chardev's (stdio) peer is who started vmd: nothing to log
            log.info("QMP client connected: %s", peer)
        self._holder = Holder(f"QMP client ({peer})", self._unread_output, self.abort)
        CAP.add(self._holder)
        if not self._greeted:  # the early greeter may have sent it already
            self._write(self.session.greeting())
        self.session.daemon.events.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._holder is not None:
            CAP.remove(self._holder)
        self.session.daemon.events.remove(self)
        self._queue.clear()
        self.session.daemon.turns.leave(self)
        self._transport = None
        self._on_close(self)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._parser.feed(data)
        except Exception:  # a parser bug must not reach the transport
            log.exception("QMP input could not be parsed; dropping %d pending bytes",
                          self._parser.pending_bytes())
            self._parser = JSONStreamParser()
            messages = [Message(error="internal error: QMP input could not be parsed")]
        for message in messages:
            if self.session.oob_enabled and is_oob_request(message.value):
                self._answer(message)
            else:
                self._queue.append(message)
        self._run_queue()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()
        self._schedule_queue()

    # -- events --------------------------------------------------------------

    def send_event(self, encoded: bytes) -> None:
        transport = self._transport
        if transport is None or self.session.negotiating:
            return
        if transport.get_write_buffer_size() > MAX_UNREAD_OUTPUT:
            log.warning("QMP client is not reading its output; disconnecting")
            transport.abort()
            return
        transport.write(encoded)
        self._check_cap()

    def close(self) -> None:
        """Close after pending output is flushed."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, discarding pending output (yank)."""
        if self._transport is not None:
            self._transport.abort()

    # -- requests --------------------------------------------------------------

    def _answer(self, message: Message) -> None:
        """Answer an out-of-band request immediately."""
        response = self.session.handle(message)
        assert not inspect.isawaitable(response), "OOB commands are sync"
        self._write(response)

    def _run_queue(self) -> None:
        """Answer queued requests: a few per turn of the loop, none while the
        client is not reading its replies (so its output stays bounded and
        the other clients are served in between)."""
        self._queue_scheduled = False
        turns = self.session.daemon.turns
        answered = 0
        while self._queue and self._running is None and not self._writing_paused:
            if answered == MAX_ANSWERS_PER_TURN:
                self._schedule_queue()
                break
            if not turns.try_begin(self, self._schedule_queue):
                break
            try:
                response = self.session.handle(self._queue.popleft())
            except BaseException:
                turns.end()
                raise
            answered += 1
            if inspect.isawaitable(response):
                self._running = turns.start_task(self._finish(response))
            else:
                turns.end()
                self._write(response)
        if self._writing_paused:
            turns.leave(self)  # back in line once it reads its replies
        self._update_reading()

    def _schedule_queue(self) -> None:
        """Run the queue soon (also the wake-up of ``CommandTurns``)."""
        if self._transport is not None and not self._queue_scheduled:
            self._queue_scheduled = True
            asyncio.get_running_loop().call_soon(self._run_queue)

    async def _finish(self, pending: Awaitable[Response]) -> None:
        try:
            response = await pending
        finally:
            self._running = None
            self.session.daemon.turns.end()
        self._write(response)
        if self._transport is not None:
            self._run_queue()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None:
            return
        pause = self._writing_paused or len(self._queue) >= MAX_QUEUED_REQUESTS
        if pause and not self._reading_paused:
            transport.pause_reading()
        elif not pause and self._reading_paused:
            transport.resume_reading()
        self._reading_paused = pause

    def _write(self, message: dict[str, Any]) -> None:
        if self._transport is not None:
            self._transport.write(encode_message(message))
            self._check_cap()

    def _unread_output(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def _check_cap(self) -> None:
        if self._holder is not None:
            CAP.check(self._holder)
