"""The cross-process lock, with real processes: exclusion, exact timeout, crashes, fork, paths."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from msal_keyring_cache.errors import ConfigError, LockTimeoutError
from msal_keyring_cache.locking import CrossProcessLock
from tests.helpers import PYTHON, ROOT, child_env, require

#: How late a timed-out waiter may return. Generous for a loaded 2-core machine, yet
#: smaller than the gap between the two timeouts tested, so a lock that used another
#: timeout (fixed, doubled, or off by a second) fails one of them.
SLACK = 0.75


def _worker(*args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "tests.lock_worker", *args],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,  # type: ignore[call-overload]
    )


def _run(*args: str, timeout: float = 120, **env: str) -> dict[str, object]:
    done = subprocess.run(
        [PYTHON, "-m", "tests.lock_worker", *args],
        cwd=ROOT,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr  # e.g. in a fork hook
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "locks" / "cache.lock"


@pytest.fixture
def holder(lock_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock until a line arrives on its stdin."""
    proc = _worker("hold", str(lock_path))
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "released\n"


def _timed_wait(lock: CrossProcessLock) -> float:
    start = time.monotonic()
    with pytest.raises(LockTimeoutError) as info:
        lock.__enter__()
    waited = time.monotonic() - start
    assert info.value.lock_file == lock.path
    assert f"{lock.timeout:g} s" in str(info.value)
    return waited


def _within(waited: float, timeout: float) -> bool:
    return timeout - 0.005 <= waited < timeout + SLACK


# -- surface -------------------------------------------------------------------------


def test_surface_and_reentrance(lock_path: Path) -> None:
    lock = CrossProcessLock(str(lock_path), 5.0)
    assert (lock.path, lock.timeout, lock.held) == (str(lock_path), 5.0, False)
    with lock:
        assert lock.held
        with lock:  # re-entrant for its holder
            assert lock.held
        assert lock.held  # the inner exit did not release …
        other = CrossProcessLock(str(lock_path), 0.05)
        with pytest.raises(LockTimeoutError):  # … for real: nobody else gets in
            other.__enter__()
        assert other.held is False
    assert not lock.held
    # Released: anyone may take it. (Not with timeout 0: the abandoned wait of `other`
    # may hold the lock for an instant when it is released, then lets it go at once.)
    with CrossProcessLock(str(lock_path), 5.0) as again:
        assert again.held


def test_filelock_holders_and_ours_exclude_each_other(lock_path: Path) -> None:
    # Earlier releases locked with filelock: during an upgrade both kinds of process run.
    from filelock import FileLock, Timeout

    lock_path.parent.mkdir(mode=0o700)
    theirs, ours = FileLock(str(lock_path)), CrossProcessLock(str(lock_path), 0.2)
    with theirs, pytest.raises(LockTimeoutError):
        ours.__enter__()
    with ours, pytest.raises(Timeout):
        theirs.acquire(timeout=0.2)


def test_a_lock_file_replaced_at_every_attempt_still_ends_at_the_timeout(
    lock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the path shows another file each time we look (a real file
    # system cannot be made to do this on cue). The lock must not spin past its timeout.
    real = os.stat

    def moving(path: object, *args: object, **kwargs: object) -> os.stat_result:
        found = real(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path) != str(lock_path):
            return found
        fields = list(found[:10])
        fields[1] += 1  # another inode
        return os.stat_result(fields)

    monkeypatch.setattr(os, "stat", moving)
    assert _within(_timed_wait(CrossProcessLock(str(lock_path), 0.3)), 0.3)


def test_two_objects_exclude_each_other_even_in_one_process(lock_path: Path) -> None:
    first, second = CrossProcessLock(str(lock_path), 5), CrossProcessLock(str(lock_path), 0.1)
    with first, pytest.raises(LockTimeoutError):
        second.__enter__()
    with second:
        assert second.held


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_created_0600_in_0700_directories_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "a" / "b" / "cache.lock"
    old = os.umask(umask)
    try:
        with CrossProcessLock(str(path), 1):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    with CrossProcessLock(str(tmp_path / "cache.lock"), 1):
        pass
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # the user's choice, not ours


# -- the timeout -------------------------------------------------------------------


def test_the_check_would_catch_a_wrong_timeout() -> None:
    # The bounds used below reject what a lock with another timeout would measure.
    assert _within(0.5, 0.5)
    assert _within(2.5 + SLACK - 0.01, 2.5)
    assert not _within(0.4, 0.5)  # gave up early
    assert not _within(2.5, 0.5)  # used 2.5 where 0.5 was configured
    assert not _within(0.5, 2.5)  # used 0.5 where 2.5 was configured
    assert not _within(1.5, 0.5)  # off by a second
    assert not _within(60, 2.5)  # the default instead of the setting


def test_a_waiter_gives_up_at_its_timeout_not_sooner_not_later(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    for timeout in (0.5, 2.5):
        waited = _timed_wait(CrossProcessLock(str(lock_path), timeout))
        assert _within(waited, timeout), (timeout, waited)
    # The same from a separate process (its own interpreter and clock).
    out = _run("try", str(lock_path), "0.5")
    assert out["ok"] is False
    assert out["error"] == "LockTimeoutError"
    assert _within(float(out["waited"]), 0.5)  # type: ignore[arg-type]


def test_timeout_zero_tries_once(lock_path: Path, holder: subprocess.Popen[str]) -> None:
    assert _within(_timed_wait(CrossProcessLock(str(lock_path), 0)), 0)


def test_a_waiter_is_woken_by_the_release(lock_path: Path, holder: subprocess.Popen[str]) -> None:
    lock = CrossProcessLock(str(lock_path), 60)
    got = threading.Event()

    def wait() -> None:
        with lock:
            got.set()

    thread = threading.Thread(target=wait)
    thread.start()
    assert not got.wait(0.3)  # still held by the other process
    _release(holder)
    assert got.wait(30)  # woken, well before its own 60 s timeout
    thread.join(30)


def test_a_timed_out_wait_never_keeps_the_lock_from_others(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    lock = CrossProcessLock(str(lock_path), 0.3)
    for _ in range(3):  # each later attempt waits its full timeout again
        assert _within(_timed_wait(lock), 0.3)
    helpers = [t for t in threading.enumerate() if t.name.startswith("lock-wait")]
    assert len(helpers) <= 1  # repeated timeouts re-attach to one helper thread
    _release(holder)
    # The helper gets the lock when the holder lets go, and frees it at once:
    out = _run("try", str(lock_path), "30")
    assert out["ok"] is True
    lock.timeout = 30
    with lock:  # and the object that timed out works again
        assert lock.held
    for thread in helpers:
        thread.join(30)
        assert not thread.is_alive()


# -- crashes and fork -------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_of_the_holder_frees_its_waiters(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(LockTimeoutError):  # it really holds it
        CrossProcessLock(str(lock_path), 0).__enter__()
    waiters = [_worker("try", str(lock_path), "60") for _ in range(4)]
    local = CrossProcessLock(str(lock_path), 60)
    got = threading.Event()
    thread = threading.Thread(target=lambda: local.__enter__() and got.set())
    thread.start()
    assert not got.wait(0.3)
    holder.send_signal(signal.SIGKILL)
    assert got.wait(30)  # no stale lock: the kernel dropped it with the process
    local.__exit__(None, None, None)
    thread.join(30)
    for proc in waiters:
        out, err = proc.communicate(timeout=60)
        assert json.loads(out)["ok"] is True, err


def test_forked_children_hold_nothing_and_take_the_lock_in_turn(lock_path: Path) -> None:
    checks = _run("fork", str(lock_path))
    assert checks
    assert all(checks.values()), checks


# -- many processes -------------------------------------------------------------------------


@pytest.mark.slow
def test_eighty_processes_exclude_each_other_and_all_finish(tmp_path: Path) -> None:
    processes, each = 80, 25
    out = _run("stress", str(tmp_path / "s.lock"), str(processes), str(each), str(tmp_path / "n"))
    assert out["crashes"] == []
    assert out["errors"] == 0
    assert out["min_done"] == each  # nobody starved into a timeout
    # A read-modify-write of a file inside the lock loses counts unless it excludes:
    assert out["counter"] == out["done"] == processes * each


@pytest.mark.slow
def test_a_greedy_holder_does_not_starve_waiters(tmp_path: Path) -> None:
    path = str(tmp_path / "g.lock")
    greedy = _worker("greedy", path, "20")
    assert greedy.stdout is not None
    assert greedy.stdout.readline() == "started\n"
    try:
        # Each waiter gives up after 5 s: a starved one would show as an error.
        out = _run("stress", path, "8", "40", str(tmp_path / "n"), LOCK_WORKER_TIMEOUT="5")
        assert greedy.poll() is None  # the greedy loop was running the whole time
    finally:
        greedy.kill()
        greedy.communicate(timeout=30)
    assert out["errors"] == 0
    assert out["counter"] == 8 * 40


# -- hostile and impossible paths ----------------------------------------------------------


def test_a_symlink_at_the_lock_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    link = tmp_path / "cache.lock"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=r"symbolic link.*Remove it"):
        CrossProcessLock(str(link), 1).__enter__()
    assert target.read_bytes() == b"keep"
    dangling = tmp_path / "other.lock"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="symbolic link"):
        CrossProcessLock(str(dangling), 1).__enter__()
    assert not (tmp_path / "nowhere").exists()  # nothing created through the link


def test_a_directory_or_fifo_at_the_lock_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.lock").mkdir()
    with pytest.raises(ConfigError, match=r"is a directory.*Remove it"):
        CrossProcessLock(str(tmp_path / "dir.lock"), 1).__enter__()
    os.mkfifo(tmp_path / "fifo.lock")
    with pytest.raises(ConfigError, match="not a regular file"):
        CrossProcessLock(str(tmp_path / "fifo.lock"), 1).__enter__()


def test_an_unwritable_directory_is_a_store_error() -> None:
    # root may write anywhere: as root the check runs without the capabilities that
    # bypass file permissions (setpriv), in a directory its owner cannot write.
    prefix: list[str] = []
    if os.geteuid() == 0:
        require(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    base = Path(tempfile.mkdtemp(prefix="lock-eacces-"))
    try:
        area = base / "area"
        area.mkdir()
        area.chmod(0o555)
        code = (
            "from msal_keyring_cache.locking import CrossProcessLock\n"
            "from msal_keyring_cache.errors import StoreError\n"
            "import sys\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        CrossProcessLock(path, 1).__enter__()\n"
            "    except StoreError as exc:\n"
            "        print(exc)\n"
        )
        args = [str(area / "cache.lock"), str(area / "sub" / "cache.lock")]
        done = subprocess.run(
            [*prefix, sys.executable, "-c", code, *args],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    assert "Permission denied" in lines[0]
    assert (
        "check the owner and permissions of the file and its directory, or point the cache "
        "at a location you own (MSAL_KEYRING_CACHE_PATH)"
    ) in lines[0]
    assert "Permission denied" in lines[1]
    assert "Create it" in lines[1]


def test_a_read_only_file_system_is_a_store_error(tmp_path: Path) -> None:
    require(shutil.which("unshare") is not None, "unshare (util-linux) is not installed")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    code = (
        "from msal_keyring_cache.locking import CrossProcessLock\n"
        "from msal_keyring_cache.errors import StoreError\n"
        "import sys\n"
        "try:\n"
        "    CrossProcessLock(sys.argv[1] + '/new.lock', 1).__enter__()\n"
        "except StoreError as exc:\n"
        "    print('refused:', exc)\n"
        "with CrossProcessLock(sys.argv[1] + '/old.lock', 1) as lock:\n"
        "    print('locked existing:', lock.held)\n"
    )
    script = (
        'mount -t tmpfs tmpfs "$1" && touch "$1/old.lock" && mount -o remount,ro "$1" '
        '&& exec "$2" -c "$3" "$1"'
    )
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    require(probe.returncode == 0, "unshare cannot make a mount namespace here")
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(mnt), sys.executable, code],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    refused, existing = done.stdout.splitlines()
    assert refused.startswith("refused:")
    assert "Read-only file system" in refused
    assert (
        "the file system is read-only: point the cache at a writable location "
        "(MSAL_KEYRING_CACHE_PATH)"
    ) in refused
    assert existing == "locked existing: True"  # an existing lock file still locks


def test_a_lock_file_replaced_while_waiting_is_locked_anew(lock_path: Path) -> None:
    first = CrossProcessLock(str(lock_path), 5)
    waiter = CrossProcessLock(str(lock_path), 30)
    got = threading.Event()
    with first:

        def wait() -> None:
            with waiter:
                got.set()
                release.wait(30)

        release = threading.Event()
        thread = threading.Thread(target=wait)
        thread.start()
        assert not got.wait(0.2)
        os.unlink(lock_path)  # someone deletes the lock file; a newcomer makes a new one
        newcomer = CrossProcessLock(str(lock_path), 5)
        newcomer.__enter__()
    # `first` let go of the old file: the waiter must not count that as the lock.
    assert not got.wait(0.5)
    newcomer.__exit__(None, None, None)
    assert got.wait(30)
    release.set()
    thread.join(30)


def test_attempt_takes_a_free_lock_only_and_acquire_takes_its_own_timeout(
    lock_path: Path,
) -> None:
    first, second = CrossProcessLock(str(lock_path), 5), CrossProcessLock(str(lock_path), 5)
    assert first.attempt()
    assert first.held
    assert first.attempt()  # re-entrant, like ``with``
    first.__exit__(None, None, None)
    assert not second.attempt()  # busy: no wait, nothing held
    assert not second.held
    started = time.monotonic()
    with pytest.raises(LockTimeoutError):
        second.acquire(0.2)  # its own bound, not the object's 5 s
    assert time.monotonic() - started < 4
    first.__exit__(None, None, None)
    # The timed-out wait's helper thread takes and frees the lock as it wakes; until then
    # attempt() says no rather than start a second wait.
    deadline = time.monotonic() + 10
    while not second.attempt():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second.__exit__(None, None, None)
    assert not second.held
