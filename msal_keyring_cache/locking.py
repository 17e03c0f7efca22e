"""The cross-process lock, on a plain file (change detection: :mod:`.watch`).

* :class:`CrossProcessLock` wraps :mod:`filelock` (an OS lock on an open file: the
  kernel drops it when the holder dies, even by SIGKILL, so no stale lock is ever left
  to delete by hand). ``filelock`` is imported on first use: a process that only reads
  never pays for it.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any, Optional

from .errors import LockTimeoutError

__all__ = ["CrossProcessLock"]


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
