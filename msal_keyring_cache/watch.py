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
    compares 8 bytes — no system call — to tell "nothing changed since I last looked". It
    trusts only an even value it saw before an exact check; anything else (odd: a write in
    progress, or a writer killed mid-write; no counter file; a file it cannot map) sends
    it to the exact check (:class:`FileIdentity`). The counter file holds no secret, is
    created 0600 beside the cache, and is never deleted (mapped readers rely on its inode);
    an exact check at least every :attr:`RECHECK` seconds catches a writer that does not
    bump it (an older version of the library, a file restored by hand).
    """

    RECHECK = 1.0
    SIZE = 8

    def __init__(self, path: str) -> None:
        self.path = path
        self._map: Optional[mmap.mmap] = None
        self._inode: Optional[tuple[int, int]] = None
        self._seen: Optional[bytes] = None  # an even value, seen before an exact check
        self._checked = 0.0  # monotonic time of the last exact check

    def unchanged(self) -> bool:
        """True only when the cache surely did not change since :meth:`mark`."""
        m = self._map
        if m is None or self._seen is None:
            return False
        if m[: self.SIZE] != self._seen:
            return False
        return time.monotonic() - self._checked < self.RECHECK

    def peek(self) -> Optional[bytes]:
        """The counter now (read before an exact check), or ``None`` without a counter."""
        if self._map is None and time.monotonic() - self._tried > self.RECHECK:
            self._tried = time.monotonic()  # an open() per check would cost more than a stat
            self._open()
        m = self._map
        return None if m is None else m[: self.SIZE]

    def mark(self, value: Optional[bytes]) -> None:
        """An exact check just ran after :meth:`peek` returned ``value``."""
        self._checked = time.monotonic()
        self._seen = value if value is not None and not value[0] & 1 else None
        if self._inode is not None and self._checked - self._verified > self.RECHECK:
            self._verified = self._checked
            self._verify()

    _verified = 0.0
    _tried = -1e9

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
            if self._map is None:
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
            self._map = mmap.mmap(fd, self.SIZE, access=mmap.ACCESS_READ)
            self._inode = (st.st_dev, st.st_ino)
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
        """Unmap the counter (the next use maps it again)."""
        if self._map is not None:
            with contextlib.suppress(Exception):
                self._map.close()
        self._map, self._inode, self._seen = None, None, None
