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
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from msal_keyring_cache.errors import ConfigError, LockTimeoutError, StoreError
from msal_keyring_cache.locking import CrossProcessLock
from tests.helpers import PYTHON, ROOT, child_env


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


def _fds_on(path: Path) -> int:
    """Descriptors of this process open on ``path`` (the kernel's view; other tests'
    objects opening or closing their own files meanwhile do not count)."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve())
        except OSError:
            continue  # closed while we looked
    return found


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
    before = _fds_on(path)
    lock = CrossProcessLock(str(path), 60)
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"No locks available; check free space"):
        lock.__enter__()
    assert time.monotonic() - start < 30  # at once, not after the 60 s timeout
    assert not lock.held
    assert _fds_on(path) == before  # the waiting thread's descriptor is closed
    assert _helpers(path) == []


def test_an_abandoned_wait_closes_its_descriptor_once_the_holder_leaves(
    held: tuple[Path, subprocess.Popen[str]],
) -> None:
    path, proc = held
    before = _fds_on(path)
    lock = CrossProcessLock(str(path), 0.2)
    with pytest.raises(LockTimeoutError):
        lock.__enter__()
    [helper] = _helpers(path)  # still blocked in the kernel for us
    assert _fds_on(path) == before + 1  # on a descriptor of its own (the observer sees it)
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    helper.join(30)
    assert not helper.is_alive()
    assert _fds_on(path) == before  # its descriptor closed, the lock let go
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
        assert _fds_on(path) == 0
