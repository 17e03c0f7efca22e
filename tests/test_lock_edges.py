"""The cross-process lock at its edges: what a user reads when the lock path is unusable.

Written for mutants of locking.py that no test killed. Errors that need a dropped
capability or a mount namespace run in a child (tests/test_locking.py); these run in
this process, so the mutation run sees them.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache.errors import ConfigError, LockTimeoutError, StoreError
from msal_keyring_cache.locking import CrossProcessLock
from tests.helpers import PYTHON, ROOT, child_env, open_descriptors


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the socket file stays


def _enter(path: Path) -> None:
    CrossProcessLock(str(path), 1).__enter__()


def test_a_lock_path_under_a_plain_file_says_to_check_the_path(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"")
    path = tmp_path / "plain" / "cache.lock"
    with pytest.raises(StoreError) as info:
        _enter(path)
    assert str(info.value) == (
        f"Cannot open the token-cache lock {path}: Not a directory; "
        "check free space, permissions and the path."
    )


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: p.symlink_to(p.parent / "elsewhere"), "is a symbolic link"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: os.mkfifo(p), "is not a regular file"),
        (_socket, "is not a regular file"),  # open() of a socket: ENXIO
    ],
)
def test_an_unusable_lock_path_is_named_with_what_is_there(
    tmp_path: Path, make: object, what: str
) -> None:
    path = tmp_path / "cache.lock"
    make(path)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        _enter(path)
    assert str(info.value) == (
        f"The token-cache lock path {path} {what}; refusing to use it (a lock must be a "
        "plain file the library creates). Remove it, or point the cache at another path."
    )


def test_relative_lock_paths_make_only_the_lock_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with CrossProcessLock("cache.lock", 1):  # no directory part: the current directory
        pass
    assert os.listdir(tmp_path) == ["cache.lock"]  # nothing made elsewhere on the way
    with CrossProcessLock(os.path.join("sub", "cache.lock"), 1):  # one missing, relative
        pass
    assert sorted(os.listdir(tmp_path)) == ["cache.lock", "sub"]
    assert os.listdir(tmp_path / "sub") == ["cache.lock"]
    assert stat.S_IMODE(os.stat(tmp_path / "sub").st_mode) == 0o700


def test_a_lock_path_that_cannot_be_checked_once_locked_is_an_error_and_frees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: after the flock, the check that the path still names the locked
    # file (a stat of the path itself) is refused. The caller is told, and holds nothing.
    path = tmp_path / "cache.lock"
    real = os.stat

    def refusing(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if not kwargs.get("follow_symlinks", True) and os.fspath(target) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(os, "stat", refusing)
    lock = CrossProcessLock(str(path), 1)
    with pytest.raises(StoreError, match=r"Permission denied; check the owner"):
        lock.__enter__()
    monkeypatch.undo()
    assert not lock.held
    assert open_descriptors(path) == 0
    with CrossProcessLock(str(path), 0):  # not kept locked
        pass


def _writes_refused(path: Path, monkeypatch: pytest.MonkeyPatch, *, reads: bool) -> list[int]:
    """Fault injection: opening ``path`` for writing fails with EROFS (a read-only file
    system), and so does reading if ``reads`` is False. The flags of each open it let by."""
    real, opened = os.open, []

    def refusing(target: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(target) == str(path) and not flags & os.O_CREAT:  # (EEXIST first)
            if reads is False or flags & os.O_ACCMODE != os.O_RDONLY:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            opened.append(flags)
        return real(target, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    return opened


def test_an_existing_lock_file_on_a_read_only_file_system_is_still_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cache.lock"
    path.write_bytes(b"")
    opened = _writes_refused(path, monkeypatch, reads=True)
    lock = CrossProcessLock(str(path), 1)
    with lock:
        assert lock.held
        assert not CrossProcessLock(str(path), 1).attempt()  # really locked: excluded
    assert opened
    for flags in opened:  # read-only, and still never through a link, nor inherited
        assert flags & os.O_ACCMODE == os.O_RDONLY
        assert flags & os.O_NOFOLLOW
        assert flags & os.O_CLOEXEC
    assert open_descriptors(path) == 0


def test_a_lock_file_that_opens_neither_way_says_the_file_system_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cache.lock"
    path.write_bytes(b"")
    _writes_refused(path, monkeypatch, reads=False)
    with pytest.raises(StoreError) as info:
        CrossProcessLock(str(path), 1).__enter__()
    assert str(info.value) == (
        f"Cannot open the token-cache lock {path}: Read-only file system; the file system "
        "is read-only: point the cache at a writable location (MSAL_KEYRING_CACHE_PATH)."
    )


def test_a_lock_file_whose_status_cannot_be_read_is_an_error_and_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: fstat of the lock file's new descriptor fails (an I/O error).
    path = tmp_path / "cache.lock"
    real = os.fstat

    def failing(fd: int) -> os.stat_result:
        result = real(fd)  # (a descriptor that is not open fails here, as it would)
        if os.readlink(f"/proc/self/fd/{fd}") == str(path):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return result

    monkeypatch.setattr(os, "fstat", failing)
    with pytest.raises(StoreError, match=r"Input/output error; check free space"):
        CrossProcessLock(str(path), 1).__enter__()
    assert open_descriptors(path) == 0


# -- a wait that fails or is abandoned leaves nothing behind ---------------------------------


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A lock file held by another real process until a line arrives on its stdin."""
    path = tmp_path / "cache.lock"
    proc = subprocess.Popen(
        [PYTHON, "-m", "tests.lock_worker", "hold", str(path)],
        cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    yield path, proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def _helpers(path: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"lock-wait {path}"]


def test_a_kernel_refusal_while_waiting_is_reported_at_once_and_leaks_nothing(
    held: tuple[Path, subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the blocking flock of the waiting thread fails (ENOLCK, as on some
    # network file systems). The caller must get the error now, not at its timeout.
    path, _ = held
    real = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    before = open_descriptors(path)
    lock = CrossProcessLock(str(path), 60)
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"No locks available; check free space"):
        lock.__enter__()
    assert time.monotonic() - start < 30  # at once, not after the 60 s timeout
    assert not lock.held
    assert open_descriptors(path) == before  # the waiting thread's descriptor is closed
    assert _helpers(path) == []
    # The failed wait is forgotten: once the kernel allows it and the holder leaves, the
    # same object waits for the lock and takes it like any other.
    monkeypatch.undo()
    proc = held[1]
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    with lock:
        assert lock.held
    assert not lock.held


def test_a_refused_unlock_neither_raises_nor_keeps_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the kernel refuses LOCK_UN (as a network file system may). Leaving
    # the block must not raise, and the descriptor is closed anyway: that frees the lock.
    path = tmp_path / "cache.lock"
    real = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_UN:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        real(fd, op)

    lock = CrossProcessLock(str(path), 1)
    with lock:
        monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.undo()
    assert not lock.held
    assert open_descriptors(path) == 0
    with CrossProcessLock(str(path), 0):  # free for another object at once
        pass


@pytest.mark.parametrize("take", ["__enter__", "attempt"])
def test_a_kernel_refusal_of_the_first_try_is_reported_and_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, take: str
) -> None:
    # Fault injection: the non-blocking flock that starts every acquisition (and is all of
    # attempt()) fails (ENOLCK), not with "busy": the caller is told at once, and no
    # descriptor or thread is left.
    path = tmp_path / "cache.lock"
    real = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX | fcntl.LOCK_NB:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    lock = CrossProcessLock(str(path), 60)
    with pytest.raises(StoreError, match=r"No locks available; check free space"):
        getattr(lock, take)()
    assert not lock.held
    assert open_descriptors(path) == 0
    assert _helpers(path) == []


def test_an_abandoned_wait_closes_its_descriptor_once_the_holder_leaves(
    held: tuple[Path, subprocess.Popen[str]],
) -> None:
    path, proc = held
    before = open_descriptors(path)
    lock = CrossProcessLock(str(path), 0.2)
    with pytest.raises(LockTimeoutError):
        lock.__enter__()
    [helper] = _helpers(path)  # still blocked in the kernel for us
    assert open_descriptors(path) == before + 1  # on a descriptor of its own (the observer sees it)
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    helper.join(30)
    assert not helper.is_alive()
    assert open_descriptors(path) == before  # its descriptor closed, the lock let go
    with CrossProcessLock(str(path), 0):
        pass
    with lock:  # the same object takes it normally afterwards
        assert lock.held


@pytest.mark.parametrize("timeout", [-1, -0.5, float("inf"), float("nan"), True, "5", None])
def test_a_wait_without_a_bound_is_refused(tmp_path: Path, timeout: object) -> None:
    # Every external call is bounded: a store made with lock_timeout=-1 must not wait forever.
    with pytest.raises(ConfigError, match=r"lock timeout .* (not valid|not a number)"):
        CrossProcessLock(str(tmp_path / "cache.lock"), timeout)  # type: ignore[arg-type]
    assert not (tmp_path / "cache.lock").exists()


def test_a_lock_dropped_while_held_is_free_for_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "cache.lock"
    lock = CrossProcessLock(str(path), 1)
    lock.__enter__()
    del lock
    gc.collect()
    done = subprocess.run(
        [PYTHON, "-m", "tests.lock_worker", "try", str(path), "0"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout.splitlines()[-1])["ok"] is True


# -- attempt(): no wait, and a True is the lock held ------------------------------------------


def test_attempt_says_no_while_a_wait_is_pending_and_yes_once_it_is_over(tmp_path: Path) -> None:
    path = tmp_path / "cache.lock"
    holder, waiter = CrossProcessLock(str(path), 5), CrossProcessLock(str(path), 5)
    holder.__enter__()
    with pytest.raises(LockTimeoutError):
        waiter.acquire(0.1)  # leaves its helper thread blocked in the kernel
    [helper] = _helpers(path)
    assert not waiter.attempt()  # a wait is pending: no, and no second wait
    assert not waiter.held
    with pytest.raises(LockTimeoutError):
        waiter.acquire(0.1)  # and the pending wait is still the one a retry re-attaches to
    assert _helpers(path) == [helper]  # one thread, however many tries
    holder.__exit__(None, None, None)
    helper.join(30)
    assert not helper.is_alive()  # it took the lock as it woke and let it go
    assert waiter.attempt()  # the finished wait is forgotten
    assert waiter.held
    assert not CrossProcessLock(str(path), 5).attempt()
    waiter.__exit__(None, None, None)
    assert open_descriptors(path) == 0


def test_a_lock_file_replaced_as_attempt_locks_it_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process replaces the lock file between our open and our flock: what we
    # locked is not the lock any more, so attempt() says no and keeps nothing.
    path = tmp_path / "cache.lock"
    real = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX | fcntl.LOCK_NB:
            fresh = tmp_path / "fresh"
            fresh.write_bytes(b"")
            os.replace(fresh, path)
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    lock = CrossProcessLock(str(path), 1)
    assert not lock.attempt()
    monkeypatch.undo()
    assert not lock.held
    with CrossProcessLock(str(path), 0):  # the file now at the path is free
        pass


def test_a_lock_file_that_cannot_be_made_private_is_reported_and_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: a file system that refuses chmod (vfat, some network mounts)
    # fails the 0600 of a newly made lock file. The caller gets the library's error,
    # and the descriptor opened on the new file is closed.
    path = tmp_path / "c.lock"

    def fchmod(fd: int, mode: int) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "fchmod", fchmod)
    for take in ("attempt", "acquire"):
        path.unlink(missing_ok=True)
        lock = CrossProcessLock(str(path), 1)
        with pytest.raises(StoreError, match=r"Operation not permitted; check the owner"):
            getattr(lock, take)()
        assert not lock.held
        assert open_descriptors(path) == 0
