"""Greeting QMP clients while the rest of vmd is still loading.

Python needs ~100 ms to import vmd and its event loop; QEMU greets a client
~20 ms after it starts. So before anything heavy is imported, vmd binds the
Unix sockets of its ``-qmp unix:PATH,...`` options and a thread greets the
clients that connect. When the event loop is up, the QMP monitors adopt the
listening sockets and the greeted connections, and the thread ends. The
clients see no difference except speed: a greeted client's first command is
simply answered once the loop runs.

Only the plain ``-qmp unix:`` form is handled here (other monitors start
normally), never with ``-daemonize``, whose fork would lose the thread, and
not under socket activation, where the socket may already exist.
This module imports only built-in modules.
"""

import _socket
import _thread
import os
import select
import stat
import sys

from vmd.version import greeting_line

_QMP_OPTIONS = ("-qmp", "--qmp")


def unlink_stale_socket(path: str) -> None:
    """Remove a leftover Unix socket at ``path`` (never a regular file)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


#: Mode of the QMP Unix sockets vmd creates: whoever can connect can make
#: vmd open and write files as its own user, so only that user may.
SOCKET_MODE = 0o600


def listen_unix(path: str) -> _socket.socket:
    """A listening Unix socket at ``path`` that only vmd's user can use.

    The mode is set between bind and listen: until ``listen`` nobody can
    connect, so there is no moment at which the umask's wider mode counts.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, SOCKET_MODE)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def qmp_unix_paths(argv: list[str]) -> list[str]:
    """Socket paths of ``-qmp unix:PATH,server=on...`` options in ``argv``."""
    if "-daemonize" in argv or "--daemonize" in argv:
        return []
    if os.environ.get("LISTEN_FDS"):
        return []  # systemd may have passed the socket (vmd.system.listen_fds)
    paths = []
    for option, value in zip(argv, argv[1:]):
        if option in _QMP_OPTIONS and value.startswith("unix:"):
            params = value[len("unix:"):].replace(",,", "\0").split(",")
            if "server=on" in params[1:]:
                paths.append(params[0].replace("\0", ","))
    return paths


class EarlyGreeter:
    """Listening sockets bound early, and a thread that greets clients."""

    def __init__(self, paths: list[str]) -> None:
        self.listeners: dict[str, _socket.socket] = {}
        self.greeted: dict[str, list[_socket.socket]] = {}
        self._wake_read, self._wake_write = os.pipe()
        self._done = _thread.allocate_lock()
        self._greeting = greeting_line()
        for path in paths:
            self._bind(path)
        if self.listeners:
            self._done.acquire()
            sys.setswitchinterval(0.0005)  # greet promptly despite imports
            _thread.start_new_thread(self._serve, ())

    def _bind(self, path: str) -> None:
        try:
            unlink_stale_socket(path)
            sock = listen_unix(path)
        except OSError:
            return  # the normal start-up path reports the error
        self.listeners[path] = sock
        self.greeted[path] = []

    def _serve(self) -> None:
        by_fd = {sock.fileno(): path for path, sock in self.listeners.items()}
        try:
            while True:
                ready, _, _ = select.select([*by_fd, self._wake_read], [], [])
                if self._wake_read in ready:
                    return
                for fd in ready:
                    self._greet(by_fd[fd])
        finally:
            self._done.release()

    def _greet(self, path: str) -> None:
        try:
            fd, _address = self.listeners[path]._accept()  # type: ignore[attr-defined]
            client = _socket.socket(fileno=fd)
            client.sendall(self._greeting)
        except OSError:
            return
        self.greeted[path].append(client)

    def stop(self) -> None:
        """End the thread; the sockets stay open for the monitors."""
        if self._wake_write < 0:
            return
        if self._done.locked():
            os.write(self._wake_write, b"x")
            self._done.acquire()
            self._done.release()
        sys.setswitchinterval(0.005)
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._wake_read = self._wake_write = -1

    def abandon(self) -> None:
        """Start-up failed: close everything and remove the sockets."""
        self.stop()
        for path, sock in self.listeners.items():
            for client in self.greeted[path]:
                client.close()
            sock.close()
            unlink_stale_socket(path)

    def take(self, path: str) -> tuple[_socket.socket, list[_socket.socket]] | None:
        """Hand over the listener for ``path`` and its greeted clients."""
        sock = self.listeners.pop(path, None)
        if sock is None:
            return None
        return sock, self.greeted.pop(path)
