"""Change detection on plain files: has the cache file moved on since we saw it?

:class:`Generation` answers "surely not" from shared memory with no system call, for the
warm hit; anything it cannot vouch for goes to the exact check below.

:class:`FileIdentity` tells whether a file was replaced since we last read or wrote it,
exactly and without reading it: files are only ever replaced whole (``os.replace``) or
appended to, so "same inode" means "same file" and its size tells how much was
appended. We keep the file we saw open, so its inode cannot be freed and reused by a
later file — which is what makes an inode comparison exact where mtime (coarse ticks)
and size are not.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import stat
import sys
import time
from typing import Callable, Optional

from .errors import StoreError

__all__ = ["FileIdentity", "Generation"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
logger = logging.getLogger("msal_keyring_cache")
_warned: set[str] = set()


class FileIdentity:
    """Remembers which version of a file we last saw; :meth:`check` says if it moved on."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self._id: Optional[tuple[int, int]] = None
        self._prefix: Optional[bytes] = None  # Windows: the header, which holds a random gen

    def remember(self, fd: Optional[int], prefix: Optional[bytes] = None) -> None:
        """Own ``fd``, open on the version just read or written (``None``: no file)."""
        self.forget()
        if fd is None:
            return
        if os.name == "posix":
            st = os.fstat(fd)
            self._fd, self._id = fd, (st.st_dev, st.st_ino)
        else:  # an open file would block os.replace on Windows
            os.close(fd)
            self._prefix = prefix

    def forget(self) -> None:
        """Close the kept file; the next :meth:`check` reports whether a file exists."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = self._id = self._prefix = None

    @property
    def fd(self) -> Optional[int]:
        """The descriptor kept open on the remembered version (POSIX), if any."""
        return self._fd

    @property
    def inode(self) -> Optional[tuple[int, int]]:
        """``(st_dev, st_ino)`` of the remembered version (POSIX), if any."""
        return self._id

    def changed(self) -> bool:
        """Whether the file now at ``path`` is another version than the one remembered."""
        return self.check()[0]

    def check(self) -> tuple[bool, int]:
        """``(replaced, size)``: whether ``path`` is another version, and its size now.

        Files that are only appended to stay the same version; their size tells the rest.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._id is not None or self._prefix is not None, 0
        except OSError as exc:
            raise StoreError(
                f"Cannot look at {self.path}: {exc.strerror}. Check the directory's permissions."
            ) from None
        if os.name != "posix":
            return self._changed_by_prefix(), st.st_size
        return self._id != (st.st_dev, st.st_ino), st.st_size

    def _changed_by_prefix(self) -> bool:  # pragma: no cover, no mutate block - Windows only
        try:
            with open(self.path, "rb") as fh:
                return fh.read(len(self._prefix or b"") or 1) != self._prefix
        except FileNotFoundError:
            return self._prefix is not None
        except OSError as exc:
            raise StoreError(f"Cannot read {self.path}: {exc.strerror}.") from None

    # Calls nothing of this module: a finalizer runs wherever the garbage collector does
    # (mutmut's call tracking, for one, breaks there), so it is not mutated either.
    def __del__(self) -> None:  # pragma: no mutate block
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class Generation:
    """A counter shared by every process using one cache, kept in ``<cache>.gen``.

    Writers step it around every change to the cache file (under the cache's lock): odd
    while a write is in progress, even when done. A reader maps the file into memory and
    compares one 8-byte word — no system call, no lock — to tell "nothing changed since I
    last caught up": the warm hit.

    How a reader uses it (:class:`~msal_keyring_cache.PersistentTokenCache` does): it
    trusts ``view[0] == seen`` until the monotonic clock passes ``until``. Otherwise it
    takes its lock, reads :meth:`peek`, checks the cache file exactly, takes in what
    changed, and then passes the value it peeked to :meth:`vouch`. A counter read before the
    exact check can only be older than what the check saw, so vouching for it never hides
    a change. Anything it cannot trust (odd: a write in progress, or a writer killed
    mid-write; no counter file; a file it cannot map) leaves ``seen`` at -1, which no
    counter equals: every read then checks exactly. The counter file holds no secret, is
    created 0600 beside the cache, and is never deleted (mapped readers rely on its
    inode); an exact check at least every :attr:`RECHECK` seconds catches a writer that
    does not bump it (an older version of the library, a file restored by hand).
    """

    RECHECK = 1.0
    SIZE = 8

    def __init__(self, path: str) -> None:
        self.path = path
        #: The counter as mapped, one native unsigned 64-bit word (a private word that is
        #: never vouched for while there is no counter file).
        self.view: memoryview = _unmapped()
        #: The counter value the reader vouched for; -1 (no counter value) for none.
        self.seen = -1
        #: Monotonic time after which the reader checks exactly again.
        self.until = 0.0
        self._inode: Optional[tuple[int, int]] = None
        self._mapped = False
        self._tried = -1e9  # monotonic time of the last attempt to map the file
        self._verified = 0.0  # monotonic time the mapped file was last compared by path

    def unchanged(self) -> bool:
        """True only when the cache surely did not change since the last :meth:`vouch`."""
        return self.view[0] == self.seen and time.monotonic() < self.until

    def peek(self) -> int:
        """The counter now (read before an exact check); -1 without a usable even value."""
        now = time.monotonic()
        if not self._mapped:
            if now - self._tried > self.RECHECK:
                self._tried = now  # an open() per check would cost more than a stat
                self._open()
        elif now - self._verified > self.RECHECK:
            self._verified = now
            self._verify()
        if not self._mapped:
            return -1
        raw = self.view.tobytes()  # one copy: the parity and the value of the same read
        if raw[0] & 1:  # little-endian on disk: the low bit is in the first byte
            return -1
        return int.from_bytes(raw, sys.byteorder)

    def vouch(self, value: int) -> None:
        """The reader took in everything the file held when :meth:`peek` returned ``value``."""
        self.until = time.monotonic() + self.RECHECK
        self.seen = value

    def begin(self) -> None:
        """Before a write (under the cache's lock): make the counter odd.

        It may be odd already: a writer was killed mid-write. Writers open the counter
        file only for this (``pwrite``, no writable mapping, which would keep the file
        system from being remounted read-only).
        """
        self._step(lambda value: value % 2 == 0)

    def end(self) -> None:
        """After a write, done or failed: make the counter even again."""
        self._step(lambda value: value % 2 == 1)

    def _step(self, wanted: Callable[[int], bool]) -> None:
        if os.name != "posix":
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK, 0o600)
        except (OSError, ValueError):
            self._cannot_bump()
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return  # readers cannot map it either: they check exactly
            value = int.from_bytes(os.pread(fd, self.SIZE, 0).ljust(self.SIZE, b"\0"), "little")
            if wanted(value):
                os.pwrite(fd, ((value + 1) % 2**63).to_bytes(self.SIZE, "little"), 0)
            if not self._mapped:
                self._tried = -1e9  # it exists now: map it at the next check
        except OSError:
            self._cannot_bump()
        finally:
            os.close(fd)

    def _cannot_bump(self) -> None:
        if self.path not in _warned:
            _warned.add(self.path)
            logger.warning(
                "Cannot update the change counter %s; other processes notice this "
                "process's writes within %g s instead of at once. Check the file's "
                "permissions.",
                self.path,
                self.RECHECK,
            )

    def _open(self) -> None:
        if os.name != "posix":
            return
        self.close()
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError):
            return  # no counter yet, or unusable: exact checks only
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < self.SIZE:
                return
            mapped = mmap.mmap(fd, self.SIZE, access=mmap.ACCESS_READ)
            self.view = memoryview(mapped).cast("Q")
            self._inode, self._mapped = (st.st_dev, st.st_ino), True
            self._verified = time.monotonic()
        except (OSError, ValueError):
            self.close()
        finally:
            os.close(fd)

    def _verify(self) -> None:
        """The counter file may have been replaced (deleted by hand): map the new one."""
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) != self._inode:
            self._open()

    def close(self) -> None:
        """Drop the mapping (the next :meth:`peek` maps the file again).

        Readers on other threads may still hold the old view for a moment: it is not
        closed but dropped, and unmapped when the last of them lets go.
        """
        self.seen = -1
        self.view, self._inode, self._mapped = _unmapped(), None, False


def _unmapped() -> memoryview:
    """A private word standing in for a counter file: never vouched for."""
    return memoryview(bytearray(Generation.SIZE)).cast("Q")
