"""Sockets handed over at start: systemd socket activation and ``fd=N``.

systemd passes listening sockets as fds 3, 4, ... with ``$LISTEN_FDS`` (how
many), ``$LISTEN_PID`` (whom they are for) and ``$LISTEN_FDNAMES`` (their
``FileDescriptorName=``, colon-separated) -- sd_listen_fds(3). vmd reads
them once at start, before ``-daemonize`` forks, marks them close-on-exec
and removes the variables, so nothing vmd runs inherits them.

A socket chardev takes one in three ways:

* ``fd=3``: QEMU's spelling, any open socket descriptor (QEMU 7.2 accepts
  exactly this on its command line);
* ``fd=NAME``: the socket systemd passed under that name (a vmd extension;
  QEMU says "Unable to parse FD number NAME");
* ``path=P`` (or ``-qmp unix:P``) when a passed socket is bound to P: the
  daemon takes it over instead of binding a new one, so one command line
  serves with and without the ``.socket`` unit (a vmd extension; QEMU would
  replace the socket file).

A server socket that is bound but not yet listening is made to listen, as
QEMU does. Passed sockets nobody took are closed once start-up is done.

The fd table belongs to the process, so this module keeps the one list of
passed fds; it is filled before the event loop starts and read only on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat

SD_LISTEN_FDS_START = 3

_passed: dict[int, str] = {}    # fd -> LISTEN_FDNAMES name ("" if none)


class FdError(Exception):
    """A ``fd=`` that names no usable socket; QEMU's wording."""


def collect_from_environ() -> int:
    """Take over the ``$LISTEN_*`` sockets meant for this process; return how many."""
    count_text = os.environ.pop("LISTEN_FDS", None)
    pid_text = os.environ.pop("LISTEN_PID", None)
    names_text = os.environ.pop("LISTEN_FDNAMES", None)
    try:
        count = int(count_text or "0")
        if pid_text is None or int(pid_text) != os.getpid():
            return 0
    except ValueError:
        return 0
    names = names_text.split(":") if names_text else []
    for index in range(max(count, 0)):
        fd = SD_LISTEN_FDS_START + index
        with contextlib.suppress(OSError):
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            _passed[fd] = names[index] if index < len(names) else ""
    return len(_passed)


def take(spec: str, *, listen: bool = True) -> socket.socket:
    """The socket ``fd=spec`` names (a number or a passed socket's name):
    made to listen for a server, or taken as it is for a client, which
    QEMU's ``fd=`` lets be an already connected socket."""
    fd = next((fd for fd, name in _passed.items() if name and name == spec), None)
    if fd is None:
        try:
            fd = int(spec, 10)
        except ValueError:
            raise FdError(f"Unable to parse FD number {spec}") from None
    if not _is_socket(fd):
        raise FdError(f"File descriptor '{spec}' is not a socket")
    _passed.pop(fd, None)
    sock = socket.socket(fileno=fd)
    if listen:
        return _listening(sock)
    sock.setblocking(False)
    return sock


def take_bound_to(path: str) -> socket.socket | None:
    """The passed Unix socket bound to ``path``, if any."""
    for fd in list(_passed):
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(fd))
            try:
                if sock.family == socket.AF_UNIX and sock.getsockname() == path:
                    _passed.pop(fd)
                    os.close(fd)
                    return _listening(sock)
            except BaseException:
                sock.close()
                raise
            sock.close()
    return None


def close_unused() -> None:
    """Close the passed sockets no chardev took (after start-up)."""
    for fd in list(_passed):
        _passed.pop(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _listening(sock: socket.socket) -> socket.socket:
    """Make a bound stream socket listen if it does not yet (as QEMU does)."""
    try:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.listen(128)
    except OSError as error:
        sock.close()
        raise FdError(f"Failed to listen on socket: {error.strerror}") from None
    sock.setblocking(False)
    return sock
