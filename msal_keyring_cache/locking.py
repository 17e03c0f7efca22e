"""Cross-process lock and exact change detection, both on plain files.

* :class:`CrossProcessLock` wraps :mod:`filelock` (an OS lock on an open file: the
  kernel drops it when the holder dies, even by SIGKILL, so no stale lock is ever left
  to delete by hand). ``filelock`` is imported on first use: a process that only reads
  never pays for it.
* :class:`FileIdentity` tells whether a file was replaced since we last read or
  wrote it, exactly and without reading it: files are only ever replaced whole
  (``os.replace``), so "same inode" means "same content". We keep the file we saw
  open, so its inode cannot be freed and reused by a later file — which is what makes
  an inode comparison exact where mtime (coarse ticks) and size are not.
"""

from __future__ import annotations

import contextlib
import os
from types import TracebackType
from typing import Any, Optional

from .errors import LockTimeoutError

__all__ = ["CrossProcessLock", "FileIdentity"]


class CrossProcessLock:
    """An exclusive lock shared by every process that names the same lock file.

    Re-entrant for its holder. Not thread-safe on its own: callers serialize threads.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._lock: Any = None

    def __enter__(self) -> CrossProcessLock:
        if self._lock is None:
            from filelock import FileLock

            from .files import ensure_private_dir

            ensure_private_dir(os.path.dirname(self.path) or ".")
            self._lock = FileLock(self.path, mode=0o600, thread_local=False)
        from filelock import Timeout

        try:
            self._lock.acquire(timeout=self.timeout, poll_interval=0.001)
        except Timeout:
            raise LockTimeoutError(
                f"Gave up waiting {self.timeout:g} s for the token-cache lock {self.path}: "
                "another process holds it. If that process is stuck, end it; otherwise "
                "raise the lock timeout (…_LOCK_TIMEOUT). The lock is released "
                "automatically when its holder exits.",
                self.path,
            ) from None
        except PermissionError as exc:
            raise LockTimeoutError(
                f"Cannot open the token-cache lock {self.path}: {exc.strerror}. Check the "
                "directory's owner and permissions.",
                self.path,
            ) from None
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._lock.release()

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return bool(self._lock is not None and self._lock.is_locked)


class FileIdentity:
    """Remembers which version of a file we last saw; :meth:`changed` says if it moved on."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self._id: Optional[tuple[int, ...]] = None
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
        """Close the kept file; the next :meth:`changed` reports whether a file exists."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = self._id = self._prefix = None

    @property
    def fd(self) -> Optional[int]:
        """The descriptor kept open on the remembered version (POSIX), if any."""
        return self._fd

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
        if os.name != "posix":
            return self._changed_by_prefix(), st.st_size
        return self._id != (st.st_dev, st.st_ino), st.st_size

    def _changed_by_prefix(self) -> bool:
        try:
            with open(self.path, "rb") as fh:
                return fh.read(len(self._prefix or b"") or 1) != self._prefix
        except FileNotFoundError:
            return self._prefix is not None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.forget()
