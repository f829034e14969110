"""Moving a chardev's bytes over host file descriptors without blocking.

The fd backends (file, pipe, pty, stdio) share this plumbing, QEMU's
``char-fd.c``:

* Input is read only while a front end is attached and has room, and at
  most as much as it has room for (``fd_chr_read_poll``), so input the
  front end cannot take stays in the kernel. ``pause``/``resume`` are the
  chardev's ``_pause_input``/``_resume_input``.
* Output is written at once as far as the fd takes it; the rest waits in a
  queue of at most ``OUTPUT_LIMIT`` bytes drained by ``loop.add_writer``.
  After a short write the chardev's ``writable()`` is called once the
  queue is empty.

Regular files (and /dev/null) cannot be polled: epoll refuses them. They
are always ready, as poll(2) reports them, so input from them is read one
chunk per loop iteration with ``call_soon``, and output is written with a
plain ``os.write`` that never returns EAGAIN. A regular file write only
waits for the page cache, as QEMU's own write does on its main loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from vmd.chardev.base import OUTPUT_LIMIT, Chardev, ChardevError
from vmd.system import fdsets

log = logging.getLogger(__name__)

READ_SIZE = 4096  # QEMU's READ_BUF_LEN


class FdStream:
    """Input from ``in_fd`` and output to ``out_fd`` for one chardev.

    ``on_eof`` is called when input ends, ``on_error(OSError)`` when a
    read or write fails (a pty whose slave side was closed gives EIO), or
    when the fd polls writable but takes nothing; either way input stops
    until ``enable_input(True)``. Without ``on_error`` a failure is logged,
    input stops and queued output is dropped.
    """

    def __init__(self, chardev: Chardev, in_fd: int | None, out_fd: int | None, *,
                 on_eof: Callable[[], None] | None = None,
                 on_error: Callable[[OSError], None] | None = None,
                 close_fds: bool = True) -> None:
        self.chardev = chardev
        self.in_fd = in_fd
        self.out_fd = out_fd
        self._on_eof = on_eof
        self._on_error = on_error
        self._close_fds = close_fds
        self._loop = asyncio.get_running_loop()
        self._input_enabled = in_fd is not None
        self._paused = False
        self._reading = False  # a reader or a call_soon poll is armed
        self._pollable: bool | None = None  # unknown until the first add_reader
        self._soon: asyncio.Handle | None = None
        self._queue = bytearray()
        self._writing = False
        self._want_writable = False
        self._closed = False

    # -- input ---------------------------------------------------------------

    def pause(self) -> None:
        self._paused = True
        self._update_reader()

    def resume(self) -> None:
        self._paused = False
        self._update_reader()

    def enable_input(self, enabled: bool) -> None:
        """Start or stop reading for the backend's own reasons (EOF, hangup)."""
        self._input_enabled = enabled and self.in_fd is not None
        self._update_reader()

    def _update_reader(self) -> None:
        want = (not self._closed and self._input_enabled and not self._paused
                and self.chardev.frontend is not None)
        if want == self._reading:
            return
        fd = self.in_fd
        assert fd is not None or not want
        if want:
            assert fd is not None
            if self._pollable is not False:
                try:
                    self._loop.add_reader(fd, self._on_readable)
                    self._pollable = True
                except PermissionError:
                    self._pollable = False
            if not self._pollable:
                self._soon = self._loop.call_soon(self._on_ready_soon)
        elif self._pollable:
            assert fd is not None
            self._loop.remove_reader(fd)
        elif self._soon is not None:
            self._soon.cancel()
            self._soon = None
        self._reading = want

    def _on_ready_soon(self) -> None:
        self._soon = None
        self._on_readable()
        if self._reading and self._soon is None:
            self._soon = self._loop.call_soon(self._on_ready_soon)

    def _on_readable(self) -> None:
        frontend = self.chardev.frontend
        room = frontend.chr_can_receive() if frontend is not None else 0
        if room <= 0:
            # The front end calls accept_input() when it has room again.
            self._paused = True
            self._update_reader()
            return
        assert self.in_fd is not None
        try:
            data = os.read(self.in_fd, min(room, READ_SIZE))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.enable_input(False)
            self._failed(error)
            return
        if not data:
            self.enable_input(False)
            if self._on_eof is not None:
                self._on_eof()
            return
        self.chardev.deliver(data)

    # -- output --------------------------------------------------------------

    def write(self, data: bytes) -> int:
        """Take as much of ``data`` as fits; see the module doc."""
        if self._closed or self.out_fd is None:
            return len(data)
        written = 0
        if not self._queue:
            try:
                written = self._write_some(data)
            except OSError as error:
                self._failed(error)
                return len(data)  # dropped, as output nobody can read
        rest = len(data) - written
        taken = min(rest, OUTPUT_LIMIT - len(self._queue))
        if taken > 0:
            self._queue += data[written:written + taken]
        if self._queue and not self._writing:
            self._loop.add_writer(self.out_fd, self._on_writable)
            self._writing = True
        if taken < rest:
            self._want_writable = True
        return written + taken

    def _write_some(self, data: bytes | bytearray) -> int:
        """Write without blocking; returns how much the fd took."""
        assert self.out_fd is not None
        done = 0
        view = memoryview(data)
        while done < len(data):
            try:
                n = os.write(self.out_fd, view[done:])
            except InterruptedError:
                continue
            except BlockingIOError:
                break
            if n <= 0:
                break
            done += n
        return done

    def _on_writable(self) -> None:
        try:
            n = self._write_some(self._queue)
        except OSError as error:
            self._failed(error)
            return
        del self._queue[:n]
        if self._queue:
            if n == 0 and self._on_error is not None:
                # Woken without room: a hangup (a pty master whose slave is
                # closed polls POLLHUP yet may take no more). Let the
                # backend decide rather than spin on the level-triggered
                # wake-up.
                self._failed(OSError(errno.EIO, os.strerror(errno.EIO)))
            return
        self._stop_writer()
        if self._want_writable:
            self._want_writable = False
            self.chardev.writable()

    def _stop_writer(self) -> None:
        if self._writing and self.out_fd is not None:
            self._loop.remove_writer(self.out_fd)
        self._writing = False

    def discard_output(self) -> None:
        """Forget queued output (the peer went away)."""
        self._queue.clear()
        self._stop_writer()
        if self._want_writable:
            self._want_writable = False
            self.chardev.writable()

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- errors and teardown -------------------------------------------------

    def _failed(self, error: OSError) -> None:
        if self._on_error is not None:
            self._on_error(error)
            return
        if error.errno != errno.EIO:
            log.warning("chardev '%s': %s", self.chardev.id, error)
        self.enable_input(False)
        self.discard_output()

    def close(self) -> None:
        if self._closed:
            return
        self._input_enabled = False
        self._update_reader()
        self._stop_writer()
        self._queue.clear()
        self._closed = True
        if self._close_fds:
            for fd in {self.in_fd, self.out_fd} - {None}:
                assert fd is not None
                os.close(fd)


def open_error(path: str, error: OSError) -> str:
    """QEMU's ``error_setg_file_open`` text."""
    return f"Could not open '{path}': {os.strerror(error.errno or 0)}"


class FdChardev(Chardev):
    """A chardev whose host side is an ``FdStream``; subclasses open the fds
    in ``open`` and hand them to ``_start``."""

    stream: FdStream | None = None

    def _start(self, in_fd: int | None, out_fd: int | None, **kwargs: Any) -> FdStream:
        self.stream = FdStream(self, in_fd, out_fd, **kwargs)
        return self.stream

    async def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def _write(self, data: bytes) -> int:
        return self.stream.write(data) if self.stream is not None else len(data)

    def _pause_input(self) -> None:
        if self.stream is not None:
            self.stream.pause()

    def _resume_input(self) -> None:
        if self.stream is not None:
            self.stream.resume()


def open_fd(path: str, flags: int, mode: int = 0o666) -> int:
    """open(2) that never blocks, failing with QEMU's words."""
    try:
        return fdsets.open_path(path, flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, mode)
    except OSError as error:
        raise ChardevError(open_error(path, error)) from None
