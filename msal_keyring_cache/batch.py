"""Group commit: writers that wait for the same lock hand their changes to one of them.

When a writer finds the cross-process lock busy, it does not queue for the lock with
its own write. It joins a *group* on a Unix socket named after the lock file:

* the first such writer binds the socket and becomes the group's **leader**: it waits
  for the lock as usual; once it holds it, it stops accepting, collects the changes the
  others sent meanwhile (:meth:`Leader.collect`), writes its own change and theirs in
  one store write, and answers each of them (:meth:`Request.answer`);
* a later writer (a **follower**) connects, sends its change with a random id, and waits
  for the answer (:meth:`Ticket.wait`). While it waits it also tries the lock now and
  then: a leader that died or hangs without the lock never holds it up.

The socket carries changes in memory only (a token never touches a file outside the
encrypted store). It lives in Linux's abstract namespace, so no socket file is ever
left behind, stale, or too long a path; its name is a digest of the lock file's identity
and the user id. Anyone on the host could bind such a name, so both ends check the peer
with ``SO_PEERCRED``: a change is sent only to, and taken only from, a process of the
same user. Anything unexpected on the socket (no Linux, a peer of another user, garbage,
silence, a closed connection) means "no group": the writer takes the lock and writes
itself. This module never raises for any of that.

Why a follower's change is never written twice (see docs/how-it-works.md, "Group
commit"): the leader writes each follower's id with its change, in the same store
write; it checks, *under the lock* and just before writing, that each follower's
connection is still open; a follower closes its connection before it writes itself.
So a follower that gave up either was left out, or its change is in the store with its
id — which its own write (under the lock, after taking in the store) then finds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import string
import struct
import sys
import weakref
from typing import Optional, Union

__all__ = ["Leader", "Request", "Ticket", "join"]

#: The largest change a leader accepts from one follower.
MAX_MESSAGE = 16 * 1024 * 1024
_READ_TIMEOUT = 0.25  # a follower sends at once after connecting; a slower one is left out
_ANSWER_TIMEOUT = 1.0
_BACKLOG = 512
_OK, _FAILED = b"+", b"-"
_HEX = frozenset(string.hexdigits.lower())
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

#: Every socket this process holds open for a group: closed in a forked child.
_open: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def supported() -> bool:
    """Whether group commit can work here (Linux: abstract sockets and ``SO_PEERCRED``)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_PEERCRED")


def address(lock_path: str) -> Optional[bytes]:
    """The abstract socket name of the group for ``lock_path`` (``None``: no such file)."""
    try:
        st = os.stat(lock_path)
    except OSError:
        return None
    digest = hashlib.sha256(f"{st.st_dev}:{st.st_ino}:{os.getuid()}".encode()).hexdigest()
    return b"\0msal-keyring-cache/" + digest[:40].encode()


def join(lock_path: str, ident: str, change: bytes) -> Union[Leader, Ticket, None]:
    """Join the group of writers waiting for ``lock_path``'s lock.

    Returns a :class:`Leader` (this writer collects the others' changes), a
    :class:`Ticket` (``change`` was sent to a leader under ``ident``), or ``None``: no
    group here, write alone.
    """
    if not supported() or len(ident) != 32 or not set(ident) <= _HEX:
        return None
    name = address(lock_path)
    if name is None:
        return None
    for _ in range(3):  # a leader that just stopped accepting frees the name
        try:
            sock = _socket()
        except OSError:
            return None
        try:
            sock.bind(name)
            sock.listen(_BACKLOG)
        except OSError:
            _close(sock)
        else:
            return Leader(sock)
        ticket = _send(name, ident, change)
        if ticket is not None:
            return ticket if isinstance(ticket, Ticket) else None
    return None


class Ticket:
    """A follower's side: its change is with a leader; :meth:`wait` for the answer."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def wait(self, seconds: float) -> Optional[bool]:
        """``True``: written, durably; ``False``: not (write it yourself); ``None``: no answer."""
        try:
            ready = select.poll()
            ready.register(self._sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            if not ready.poll(max(0, int(seconds * 1000))):
                return None
            return self._sock.recv(1) == _OK  # b"": the leader is gone; else garbage
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        """Withdraw: a leader that has not written yet leaves this change out."""
        _close(self._sock)


class Request:
    """One follower's change, as its leader received it."""

    def __init__(self, sock: socket.socket, ident: str, change: bytes) -> None:
        self._sock = sock
        #: The follower's random id, written with its change.
        self.ident = ident
        #: The change (a journal delta, JSON), not yet checked.
        self.change = change

    def alive(self) -> bool:
        """Whether the follower still waits (it closes its end when it gives up)."""
        try:
            self._sock.setblocking(False)  # with a timeout set, recv would wait for it
            self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # closed (b"") or talking out of turn

    def answer(self, written: bool) -> None:
        """Tell the follower whether its change was written, and hang up."""
        try:
            self._sock.settimeout(_ANSWER_TIMEOUT)
            self._sock.sendall(_OK if written else _FAILED)
        except OSError:
            pass  # it gave up meanwhile: it finds its id in the store
        finally:
            _close(self._sock)


class Leader:
    """The writer that collects the group's changes and writes them with its own."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: Optional[socket.socket] = sock

    def collect(self) -> list[Request]:
        """Stop accepting; the changes of every follower that joined, in arrival order.

        Call it holding the lock. Followers that join later find no leader and start a
        group of their own.
        """
        sock, self._sock = self._sock, None
        requests: list[Request] = []
        if sock is None:
            return requests
        try:
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:  # BlockingIOError: nobody else waiting
                    break
                _open.add(conn)
                request = _receive(conn)
                if request is not None:
                    requests.append(request)
        finally:
            _close(sock)
        return requests

    def close(self) -> None:
        """Stop accepting and turn away whoever joined (they write themselves)."""
        for request in self.collect():
            request.answer(False)


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | getattr(socket, "SOCK_CLOEXEC", 0))
    _open.add(sock)
    return sock


def _close(sock: socket.socket) -> None:
    _open.discard(sock)
    with contextlib.suppress(OSError):
        sock.close()


def _peer_uid(sock: socket.socket) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    return int(_CRED.unpack(raw)[1])


def _send(name: bytes, ident: str, change: bytes) -> Union[Ticket, bool, None]:
    """Send ``change`` to the leader at ``name``: a Ticket, ``None`` (retry), ``False``."""
    if len(change) + 32 > MAX_MESSAGE:
        return False
    try:
        sock = _socket()
    except OSError:
        return False
    try:
        sock.settimeout(_READ_TIMEOUT)
        sock.connect(name)
    except (ConnectionRefusedError, FileNotFoundError):
        _close(sock)
        return None  # the leader stopped accepting just now
    except OSError:
        _close(sock)
        return False
    try:
        if _peer_uid(sock) != os.getuid():
            _close(sock)
            return False  # not ours: our change must not go there
        body = ident.encode() + change
        sock.sendall(struct.pack(">I", len(body)) + body)
    except OSError:
        _close(sock)
        return False
    return Ticket(sock)


def _receive(conn: socket.socket) -> Optional[Request]:
    try:
        if _peer_uid(conn) != os.getuid():
            raise OSError("another user")
        conn.settimeout(_READ_TIMEOUT)
        (size,) = struct.unpack(">I", _read(conn, 4))
        if not 32 < size <= MAX_MESSAGE:
            raise OSError("a message out of bounds")
        body = _read(conn, size)
        ident = body[:32].decode("ascii")
        if not set(ident) <= _HEX:
            raise OSError("a bad id")
    except (OSError, UnicodeError, struct.error):
        _close(conn)
        return None
    return Request(conn, ident, body[32:])


def _read(conn: socket.socket, size: int) -> bytes:
    parts, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise OSError("closed early")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _after_fork() -> None:
    # The parent's group sockets are the parent's: a child holding them open would keep
    # a leader's name bound that nobody serves.
    for sock in list(_open):
        _close(sock)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
