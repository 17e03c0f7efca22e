"""The cross-process lock, on a plain file (change detection: :mod:`.watch`).

:class:`CrossProcessLock` — why we own it, and why it is correct
-----------------------------------------------------------------

``filelock`` (and msal-extensions' portalocker) *poll*: a waiter tries a non-blocking
lock, sleeps, tries again. With dozens of processes on few cores the polling waiters
take the CPU from the one process that holds the lock, and a long poll interval
(msal-extensions: 0.25 s) adds idle time to every hand-over. Here a waiter sleeps in the
kernel and is woken when the lock is released:

* **POSIX**: ``flock(LOCK_EX)`` on our own open file description of ``path``. The
  uncontended case is one non-blocking ``flock`` and no thread. A contended waiter
  hands the *blocking* ``flock`` to a helper thread, on a descriptor of its own, and
  waits on a condition with the remaining timeout. Every step of the hand-over happens
  under that condition's mutex, so exactly one of two things happens: the caller sees
  "locked" before its deadline and takes the descriptor, or it marks the wait
  *abandoned* — and then the helper, when its ``flock`` returns, unlocks and closes at
  once. A caller therefore gives up at ``timeout`` (not later: the condition wait is
  bounded; not sooner: it waits for the full remaining time), and an abandoned wait
  never keeps the lock from others. A later attempt by the same object re-attaches to
  a helper that is still blocked, so repeated timeouts cost one thread, not one each.
  (Signals cannot do this: ``SIGALRM`` works only in the main thread and would take the
  application's own alarm.)
* The kernel drops a ``flock`` when the last descriptor of its open file description
  closes, so a holder that dies — even by SIGKILL — frees the lock, and no stale lock
  file ever needs deleting. Lock files are never deleted; a waiter that finds the
  file was replaced while it waited locks the new one.
* **fork**: a child gets copies of the parent's descriptors, which share the parent's
  lock. :func:`os.register_at_fork` resets every lock in the child: inherited
  descriptors are closed *without* unlocking (that would free the parent's lock), and
  the child's next acquisition opens the file anew and waits its turn like any other
  process. Descriptors are opened ``O_CLOEXEC``, so programs started with ``exec`` never
  hold them.
* **Fairness**: a release wakes the kernel's blocked waiters and one of them wins; no
  process is favoured, and a holder does msal's work between two acquisitions, so no
  waiter starves (tests/test_locking.py runs a greedy holder against waiters).
* **Hostile paths**: the lock file is opened ``O_NOFOLLOW`` and must be a regular file
  (a symlink, a directory or a FIFO at the lock path is a :class:`ConfigError`); it is
  created 0600, and missing directories 0700, whatever the umask. A read-only file
  system or a permission error is a :class:`StoreError` that says what to do; an
  existing lock file on a read-only file system is still locked (read-only).
* **Windows** keeps ``filelock`` (``msvcrt.locking``, polled): a ``LockFileEx`` port
  could not be tested here, and an untested lock is worse than a polling one.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
import sys
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Optional

from .errors import ConfigError, LockTimeoutError, StoreError

__all__ = ["CrossProcessLock"]

_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_FLAGS |= getattr(os, "O_NONBLOCK", 0)  # a FIFO at the lock path must not block open()

# Helper-thread states (guarded by the lock's condition).
_WAITING, _ABANDONED, _LOCKED, _CLOSED, _FAILED = range(5)


class _Waiter:
    """A helper thread blocked in ``flock(LOCK_EX)`` on its own descriptor."""

    def __init__(self, fd: int, cond: threading.Condition, name: str) -> None:
        self.fd = fd
        self.cond = cond
        self.state = _WAITING
        self.error: Optional[OSError] = None
        thread = threading.Thread(target=self._run, name=name, daemon=True)
        thread.start()

    def _run(self) -> None:
        import fcntl

        error: Optional[OSError] = None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            error = exc
        with self.cond:
            if error is not None:
                self.error, self.state = error, _FAILED
                os.close(self.fd)
            elif self.state == _ABANDONED:
                _unlock(self.fd)  # nobody wants it any more: free it for the others at once
                self.state = _CLOSED  # before close: a forked child must not close a reused fd
                os.close(self.fd)
            else:
                self.state = _LOCKED
            self.cond.notify_all()


_LIVE: weakref.WeakSet[CrossProcessLock] = weakref.WeakSet()


class CrossProcessLock:
    """An exclusive lock shared by every process that names the same lock file.

    ``with lock:`` waits at most :attr:`timeout` seconds, then raises
    :class:`~msal_keyring_cache.LockTimeoutError`. Re-entrant for its holder. One
    object is used by one thread at a time (callers serialize their threads); two
    objects on the same file exclude each other, in one process or in several.

    :param path: the lock file; created (0600) if missing, never deleted.
    :param timeout: seconds to wait; 0 tries once. Every wait is bounded: a negative,
        infinite or non-numeric timeout is a :class:`ConfigError`.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self._fd: Optional[int] = None
        self.timeout = _bounded(timeout)
        self.path = path
        self._depth = 0
        self._cond = threading.Condition(threading.Lock())
        self._waiter: Optional[_Waiter] = None
        self._win: Any = None  # the filelock object on Windows
        _LIVE.add(self)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._holds()

    def _holds(self) -> bool:  # a plain method: mutmut mutates no decorated function
        return self._depth > 0

    def __enter__(self) -> CrossProcessLock:
        return self.acquire()

    def acquire(self, timeout: Optional[float] = None) -> CrossProcessLock:
        """What ``with`` does, waiting at most ``timeout`` seconds (default :attr:`timeout`)."""
        if self._depth:
            self._depth += 1
            return self
        limit = self.timeout if timeout is None else _bounded(timeout)
        if os.name == "posix":
            self._fd = self._acquire(limit)
        else:
            self._acquire_windows(limit)
        self._depth = 1
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if not self._depth:  # a forked child leaving a block its parent entered
            return
        self._depth -= 1
        if self._depth:
            return
        if self._win is not None:
            self._win.release()
            return
        fd, self._fd = self._fd, None
        if fd is not None:
            _unlock(fd)
            os.close(fd)

    def attempt(self) -> bool:
        """Take the lock only if it is free right now (no wait); whether it was taken.

        ``False`` also when this object has a wait pending from an earlier timeout, and
        always on Windows. Release a lock taken this way with ``__exit__``, as after
        ``with``. OS errors propagate as from ``with`` (:class:`StoreError` …).
        """
        if self._depth:
            self._depth += 1
            return True
        if os.name != "posix":
            return False
        import fcntl

        with self._cond:
            if self._waiter is not None and self._waiter.state not in (_CLOSED, _FAILED):
                return False
            self._waiter = None
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise self._os_error(exc) from None
        if not self._current(fd):
            return False
        self._fd, self._depth = fd, 1
        return True

    # -- POSIX ---------------------------------------------------------------------

    def _acquire(self, timeout: float) -> int:
        import fcntl

        deadline = time.monotonic() + timeout  # finite: checked by _bounded()
        while True:
            with self._cond:
                waiter = self._waiter
                if waiter is not None and waiter.state in (_CLOSED, _FAILED):
                    self._waiter = waiter = None  # it finished after an earlier timeout
            if waiter is None:
                fd = self._open()
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    waiter = self._waiter = _Waiter(fd, self._cond, f"lock-wait {self.path}")
                except OSError as exc:
                    os.close(fd)
                    raise self._os_error(exc) from None
                else:
                    if self._current(fd):
                        return fd
            if waiter is not None:
                fd = self._wait(waiter, deadline)
                if self._current(fd):
                    return fd
            if time.monotonic() >= deadline:  # replaced again and again: still bounded
                raise self._timeout()

    def _wait(self, waiter: _Waiter, deadline: float) -> int:
        with self._cond:
            if waiter.state == _ABANDONED:
                waiter.state = _WAITING  # re-attach to a wait an earlier attempt gave up
            left = deadline - time.monotonic()
            try:
                self._cond.wait_for(lambda: waiter.state != _WAITING, max(0.0, left))
            finally:
                if waiter.state == _WAITING:  # timed out, or interrupted (Ctrl-C)
                    waiter.state = _ABANDONED
            if waiter.state == _LOCKED:
                self._waiter = None
                return waiter.fd
            error = waiter.error  # set exactly when the state is _FAILED
            if error is not None:
                self._waiter = None
                raise self._os_error(error)
        raise self._timeout()

    def _timeout(self) -> LockTimeoutError:
        return LockTimeoutError(
            f"Gave up waiting {self.timeout:g} s for the token-cache lock {self.path}: "
            "another process holds it. If that process is stuck, end it; otherwise "
            "raise the lock timeout (MSAL_KEYRING_CACHE_LOCK_TIMEOUT or lock_timeout=). "
            "The lock is released automatically when its holder exits.",
            self.path,
        )

    def _open(self) -> int:
        self._make_dir(os.path.dirname(self.path) or ".")
        try:
            fd = os.open(self.path, _FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            fd = self._open_existing()
        except OSError as exc:
            raise self._os_error(exc) from None
        else:
            try:
                os.fchmod(fd, 0o600)  # the umask may have taken bits we want, or left some
            except OSError as exc:  # a file system that refuses chmod
                os.close(fd)
                raise self._os_error(exc) from None
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            os.close(fd)
            raise self._os_error(exc) from None
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise self._not_a_file("is not a regular file")
        return fd

    def _open_existing(self) -> int:
        try:
            return os.open(self.path, _FLAGS)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES):
                raise self._os_error(exc) from None
            first = exc
        try:  # a read-only lock file (or file system) can still be flock'ed
            return os.open(self.path, _FLAGS & ~os.O_RDWR | os.O_RDONLY)
        except OSError:
            raise self._os_error(first) from None

    def _make_dir(self, directory: str) -> None:
        if os.path.isdir(directory):
            return
        parent = os.path.dirname(directory)
        if parent and parent != directory:
            self._make_dir(parent)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            return
        except OSError as exc:
            raise StoreError(
                f"Cannot create the directory {directory} for the token-cache lock: "
                f"{exc.strerror}. Create it (mode 0700) or point the cache at a writable "
                "location (MSAL_KEYRING_CACHE_PATH)."
            ) from None
        os.chmod(directory, 0o700)  # mkdir's mode is cut by the umask

    def _current(self, fd: int) -> bool:
        """Whether the locked ``fd`` is the file now at the path; if not, let it go.

        A lock file deleted or replaced while we waited is not the lock any more: the
        caller then locks the file now at the path.
        """
        try:
            now = os.stat(self.path, follow_symlinks=False)
            held = os.fstat(fd)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return True
        except FileNotFoundError:
            pass
        except OSError as exc:
            _unlock(fd)
            os.close(fd)
            raise self._os_error(exc) from None
        _unlock(fd)
        os.close(fd)
        return False

    def _not_a_file(self, what: str) -> ConfigError:
        return ConfigError(
            f"The token-cache lock path {self.path} {what}; refusing to use it (a lock "
            "must be a plain file the library creates). Remove it, or point the cache at "
            "another path."
        )

    def _os_error(self, exc: OSError) -> Exception:
        if exc.errno == errno.ELOOP:
            return self._not_a_file("is a symbolic link")
        if exc.errno == errno.EISDIR:
            return self._not_a_file("is a directory")
        if exc.errno in (errno.ENXIO, errno.ENODEV):
            return self._not_a_file("is not a regular file")
        hint = {
            errno.EROFS: "the file system is read-only: point the cache at a writable "
            "location (MSAL_KEYRING_CACHE_PATH)",
            errno.EACCES: "check the owner and permissions of the file and its directory, "
            "or point the cache at a location you own (MSAL_KEYRING_CACHE_PATH)",
            errno.EPERM: "check the owner and permissions of the file and its directory",
        }.get(exc.errno or 0, "check free space, permissions and the path")
        return StoreError(f"Cannot open the token-cache lock {self.path}: {exc.strerror}; {hint}.")

    def _reset_in_child(self) -> None:
        """After fork: drop (never unlock) what the parent holds or waits for."""
        fds = [self._fd]
        waiter = self._waiter
        if waiter is not None and waiter.state not in (_CLOSED, _FAILED):
            fds.append(waiter.fd)  # its thread does not exist in the child
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the parent's descriptor keeps the parent's lock
        self._fd, self._waiter, self._depth = None, None, 0
        self._cond = threading.Condition(threading.Lock())

    # Calls nothing of this module: a finalizer runs wherever the garbage collector does
    # (mutmut's call tracking, for one, breaks there), so it is not mutated either.
    def __del__(self) -> None:  # pragma: no mutate block
        fd, self._fd = self._fd, None
        if fd is not None:  # dropped while held: free the lock for the others
            with contextlib.suppress(Exception):
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    # -- Windows -------------------------------------------------------------------

    # Not mutated either: a mutation run here cannot execute it.
    def _acquire_windows(self, timeout: float) -> None:  # pragma: no cover, no mutate block
        from filelock import FileLock, Timeout

        if self._win is None:
            self._make_dir(os.path.dirname(self.path) or ".")
            self._win = FileLock(self.path, mode=0o600, thread_local=False)
        try:
            self._win.acquire(timeout=timeout, poll_interval=0.005)
        except Timeout:
            raise LockTimeoutError(
                f"Gave up waiting {self.timeout:g} s for the token-cache lock {self.path}: "
                "another process holds it. If that process is stuck, end it; otherwise "
                "raise the lock timeout (MSAL_KEYRING_CACHE_LOCK_TIMEOUT or lock_timeout=).",
                self.path,
            ) from None
        except OSError as exc:
            raise self._os_error(exc) from None


def _bounded(timeout: Any) -> float:
    """``timeout`` if it is seconds from 0 upwards; every wait is bounded (ConfigError)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigError(f"The lock timeout {timeout!r} is not a number of seconds.")
    if not (math.isfinite(timeout) and timeout >= 0):
        raise ConfigError(
            f"The lock timeout {timeout!r} is not valid: expected seconds from 0 (try "
            "once) upwards; every wait is bounded."
        )
    return float(timeout)


def _unlock(fd: int) -> None:
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)


_FORKING: list[threading.Condition] = []


def _before_fork() -> None:
    for lock in list(_LIVE):
        lock._cond.acquire()  # hand-overs are never half-done in the child
        _FORKING.append(lock._cond)


def _after_fork_parent() -> None:
    while _FORKING:  # exactly those taken above (a lock made meanwhile was not)
        _FORKING.pop().release()


def _after_fork_child() -> None:
    _FORKING.clear()
    for lock in list(_LIVE):
        lock._reset_in_child()


if sys.platform != "win32":
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_parent,
        after_in_child=_after_fork_child,
    )
