"""Group commit (msal_keyring_cache.batch) between real, separate processes.

Writers that find the lock busy hand their change to the group's leader, which writes
them all at once. Counted here from the outside: the journal records in the file (each
one is a physical write), the entries present, and what happens when a leader is
SIGKILLed or a hostile listener holds the group's socket name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import (
    EncryptedFileStore,
    LockTimeoutError,
    PersistentTokenCache,
    Settings,
    batch,
    build_cache,
    manage,
)
from msal_keyring_cache.crypto import FernetKeys
from msal_keyring_cache.locking import CrossProcessLock
from tests.batch_child import entry
from tests.helpers import PYTHON, ROOT, child_env, file_env, require
from tests.helpers import journal_records as _records

pytestmark = pytest.mark.skipif(not batch.supported(), reason="group commit needs Linux")


def _env(path: Path, key: str, timeout: float = 60) -> dict[str, str]:
    return file_env(path, key, timeout, BATCH_NO_COMPACT="1")


def _child(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "tests.batch_child", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(child: subprocess.Popen[str]) -> str:
    """The child's first line of output (it ends within the test's bound or fails it)."""
    assert child.stdout is not None
    return child.stdout.readline().strip()


def _keys(path: Path, key: str) -> set[str]:
    cache = build_cache("t", backend="file", path=str(path), key=key)
    try:
        return set(json.loads(cache.serialize()).get("AccessToken", {}))
    finally:
        cache.close()


@pytest.fixture
def seeded(cache_path: Path, key: str) -> Path:
    """A cache file holding one entry (the first write makes the file, not a record)."""
    cache = build_cache("t", backend="file", path=str(cache_path), key=key)
    cache.merge(entry("seed"))
    cache.close()
    return cache_path


def _lines_until(child: subprocess.Popen[str], wanted: str, timeout: float = 60) -> None:
    """Read the child's output until a line ``wanted`` (or fail with its stderr)."""
    assert child.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if line.strip() == wanted:
            return
        if not line:
            break
    child.kill()
    raise AssertionError(f"no {wanted!r}: {child.communicate()[1][-2000:]}")


def _lock(path: Path) -> CrossProcessLock:
    return CrossProcessLock(str(path) + ".lock", 10)


@pytest.mark.slow
def test_contended_writers_share_writes_and_lose_nothing(seeded: Path, key: str) -> None:
    processes, each = 8, 15
    env = _env(seeded, key)
    with _lock(seeded):  # everyone's first write meets the busy lock and joins the group
        children = [_child(env, "write", str(i * each), str(each)) for i in range(processes)]
        roles = sorted(_first_line(child) for child in children)
    assert roles == ["role follower"] * (processes - 1) + ["role leader"]
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        assert out.splitlines()[-1] == "done"
    wanted = {f"k{i}" for i in range(processes * each)}
    assert _keys(seeded, key) == wanted | {"seed"}
    records = _records(seeded, key)
    written = [k for r in records for k in r.get("AccessToken", {})]
    assert sorted(written) == sorted(wanted)  # each change written exactly once
    assert len(records) < processes * each  # and several changes per physical write
    ids = [i for r in records for i in r.get("~batch", {})]
    assert ids  # followers' ids went with their changes
    assert len(ids) == len(set(ids))
    # ...and stay the library's own: what an app or an export sees is msal's document.
    reader = build_cache("t", backend="file", path=str(seeded), key=key)
    try:
        assert "~batch" not in json.loads(reader.serialize())
        settings = Settings.resolve(environ={}, backend="file", path=str(seeded), key=key)
        assert "~batch" not in manage.export(settings)
    finally:
        reader.close()


def _group(path: Path, key: str, when: str, followers: int) -> tuple[Any, list[Any]]:
    """A leader that kills itself ``when``, and followers that joined its group."""
    env = _env(path, key)
    with _lock(path):
        leader = _child(env, "lead", when, "leader")
        _lines_until(leader, "role leader")
        children = [_child(env, "follow", f"f{i}") for i in range(followers)]
        for child in children:
            _lines_until(child, "role follower")
    return leader, children


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_leader_killed_loses_no_follower_change_and_writes_none_twice(
    seeded: Path, key: str, when: str
) -> None:
    leader, children = _group(seeded, key, when, 3)
    leader.communicate(timeout=60)
    assert leader.returncode == -signal.SIGKILL
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert out.split() == ["done"]
    followers = {f"f{i}" for i in range(3)}
    present = _keys(seeded, key)
    assert followers <= present
    # the leader's own call never returned: written only if it died after writing
    assert ("leader" in present) == (when == "after")
    written = [k for r in _records(seeded, key) for k in r.get("AccessToken", {})]
    assert sorted(k for k in written if k != "leader") == sorted(followers)  # once each
    if when == "after":  # one write for all four; the followers found their ids in it
        assert len(_records(seeded, key)) == 1


def test_a_writer_killed_before_its_fsync_leaves_a_sound_file(seeded: Path, key: str) -> None:
    # The fsync runs after the lock is released: a writer SIGKILLed in between leaves its
    # complete record (the page cache survives the process), and the lock free.
    child = _child(_env(seeded, key), "unsynced", "lost-or-kept")
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    cache = build_cache("t", backend="file", path=str(seeded), key=key, lock_timeout=5)
    cache.merge(entry("next"))  # the lock was freed; the next append follows the record
    cache.close()
    assert _keys(seeded, key) == {"seed", "lost-or-kept", "next"}
    assert [sorted(r["AccessToken"]) for r in _records(seeded, key)] == [["lost-or-kept"], ["next"]]


class _Listener:
    """Someone else (of the same user) holding the group's socket name.

    It takes what a writer sends, then says nothing (``answer`` empty) or garbage.
    """

    def __init__(self, path: Path, answer: bytes) -> None:
        name = batch.address(str(path) + ".lock")
        assert name is not None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(name)
        self.sock.listen(16)
        self.answer = answer
        self.got = 0
        self.reached = threading.Event()
        self.kept: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
                self.kept.append(conn)
                self.got += len(conn.recv(65536))
                self.reached.set()
                if self.answer:
                    conn.sendall(self.answer)
            except OSError:
                return

    def close(self) -> None:
        # Wake the thread blocked in accept() and wait for it before closing: a socket
        # closed under a blocked accept() stays bound (the name), and the descriptor
        # numbers the thread used are reused by the next test's sockets.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        for conn in list(self.kept):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.sock.close()
        for conn in self.kept:
            conn.close()


@pytest.mark.parametrize("answer", [b"", b"garbage"], ids=["silent", "garbage"])
def test_a_hostile_listener_only_delays_a_writer_to_the_lock(
    seeded: Path, key: str, answer: bytes
) -> None:
    timeout = 8.0
    with _lock(seeded):
        pass  # the lock file exists: the group's name derives from it
    listener = _Listener(seeded, answer)
    try:
        with _lock(seeded):
            started = time.monotonic()
            child = _child(_env(seeded, key, timeout), "write", "0", "1")
            assert listener.reached.wait(60)  # the writer met it while the lock was busy
        out, err = child.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        listener.close()
    assert child.returncode == 0, err
    assert out.splitlines()[-1] == "done"
    assert listener.got > 0
    assert took < timeout + 5  # fell back to the lock, within its lock timeout
    assert "k0" in _keys(seeded, key)


def test_a_listener_of_another_user_gets_nothing(seeded: Path, key: str) -> None:
    require(os.getuid() == 0, "needs root to run a listener as another user")
    with _lock(seeded):
        pass
    name = batch.address(str(seeded) + ".lock")
    assert name is not None
    ready_r, ready_w = os.pipe()
    got_r, got_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other user: binds the name, reports a connection and its bytes
        try:
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(name)
            sock.listen(4)
            os.write(ready_w, b"r")
            sock.settimeout(60)
            try:
                conn, _ = sock.accept()
                os.write(got_w, b"c")
                conn.settimeout(5)
                os.write(got_w, str(len(conn.recv(65536))).encode())
            except OSError:
                os.write(got_w, b"n")
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(got_w)
    assert os.read(ready_r, 1) == b"r"
    try:
        with _lock(seeded):
            child = _child(_env(seeded, key, 10), "write", "0", "1")
            assert os.read(got_r, 1) == b"c"  # the writer met it while the lock was busy
        _, err = child.communicate(timeout=60)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert child.returncode == 0, err
    assert "k0" in _keys(seeded, key)
    assert os.read(got_r, 16) == b"0"  # it hung up at once: no change ever reached it


@pytest.mark.slow
def test_forked_writers_group_and_lose_nothing(seeded: Path, key: str) -> None:
    children, each = 6, 10
    child = _child(_env(seeded, key), "fork", str(children), str(each))
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == [0] * children
    wanted = {f"f{c}-{i}" for c in range(children) for i in range(each)}
    assert _keys(seeded, key) == wanted | {"seed", "parent"}
    written = [k for r in _records(seeded, key) for k in r.get("AccessToken", {})]
    assert sorted(k for k in written if k in wanted) == sorted(wanted)


@pytest.mark.secret_service
def test_secret_service_writers_group_and_plain_keyring_reads_the_result(
    tmp_path: Path, use_secret_service: Any
) -> None:
    path = tmp_path / "data" / "token_cache.bin"
    cache = build_cache("msal-keyring-cache-tests", path=str(path))
    assert cache.backend_info.backend == "keyring"
    cache.merge(entry("seed"))
    store: Any = cache.store
    lock_file = store.describe().lock_file
    processes, each = 6, 5
    env = child_env(MSAL_KEYRING_CACHE_PATH=str(path), MSAL_KEYRING_CACHE_LOCK_TIMEOUT="120")
    with CrossProcessLock(lock_file, 120):
        children = [_child(env, "write", str(i * each), str(each)) for i in range(processes)]
        # Every child's first write meets the busy lock and joins the group before the
        # lock frees (however slow the machine): one leader, the rest its followers.
        roles = sorted(_first_line(child) for child in children)
    assert roles == ["role follower"] * (processes - 1) + ["role leader"]
    sets = 0
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        lines = out.splitlines()
        assert lines[-2] == "done"
        sets += int(lines[-1].removeprefix("sets "))
    # The first writes of all six went in one keyring write (later ones may group too).
    assert sets <= processes * each - (processes - 1)
    wanted = {f"k{i}" for i in range(processes * each)} | {"seed"}
    # Plain keyring and msal (no library code, in a process of their own: bounded) read
    # one msal cache holding every change.
    script = (
        "import json, keyring, msal, sys\n"
        "plain = msal.SerializableTokenCache()\n"
        "plain.deserialize(keyring.get_password(sys.argv[1], sys.argv[2]))\n"
        "kind = msal.TokenCache.CredentialType.ACCESS_TOKEN\n"
        "print(json.dumps(sorted(e['target'] for e in plain.search(kind))))\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", script, store.service, store.account],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(json.loads(done.stdout)) == wanted
    cache.close()


def test_group_commit_off_writes_alone(seeded: Path, key: str) -> None:
    cache = build_cache("t", backend="file", path=str(seeded), key=key, lock_timeout=30)
    cache.group_commit = False
    listener = _Listener(seeded, b"+")  # would take (and "acknowledge") any change sent
    try:
        with _lock(seeded):
            writer = threading.Thread(target=cache.merge, args=(entry("alone"),))
            writer.start()
            time.sleep(0.5)
        writer.join(30)
    finally:
        listener.close()
    assert not writer.is_alive()
    assert listener.got == 0  # nothing was sent: it waited for the lock and wrote itself
    assert "alone" in _keys(seeded, key)
    cache.close()


def test_a_writer_that_may_not_wait_leaves_a_group_at_once_and_keeps_its_change(
    seeded: Path, key: str
) -> None:
    # A lock timeout of 0 (a store's own argument) tries the lock once: a writer that finds
    # it busy and a leader waiting for it gives up at once (not when the group is written),
    # its change pending.
    store = EncryptedFileStore(str(seeded), FernetKeys((key,)), lock_timeout=0)
    cache = PersistentTokenCache(store)
    holder = _lock(seeded).acquire()
    free = threading.Timer(5.0, holder.__exit__, (None, None, None))
    leader = _child(_env(seeded, key), "lead", "", "leader")
    try:
        _lines_until(leader, "role leader")
        free.start()
        with pytest.raises(LockTimeoutError):
            cache.merge(entry("mine"))
        assert free.is_alive()  # before the lock was free
    finally:
        free.cancel()
        free.join()
        if holder.held:
            holder.__exit__(None, None, None)
    _, err = leader.communicate(timeout=60)
    assert leader.returncode == 0, err
    assert "mine" not in _keys(seeded, key)  # the leader did not write it for us
    cache.merge(entry("later"))  # the lock is free: our pending change goes with it
    assert {"seed", "leader", "mine", "later"} <= _keys(seeded, key)
    cache.close()
