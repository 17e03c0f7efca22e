"""Behaviours of the core (cache.py, locking.py, watch.py, files.py) that surviving mutants
showed no test pinned down: group commit with a live leader (what one write holds, a
malformed or stale follower change, the table of writer ids and its bound), followers
whose leader never answers (bounded by the lock timeout, the lock never leaked), a
leader whose write or fsync fails, a whole rewrite under contention, fork with locks
held or awaited, and the messages and fsyncs of the file helpers.

Each test uses real separate processes (tests/core_child.py) against a real cache file
and counts from the outside: the journal records in the file, the entries present, the
kernel's lock table (/proc/locks).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import pytest

from msal_keyring_cache import (
    ConfigError,
    LockTimeoutError,
    StoreError,
    batch,
    build_cache,
)
from msal_keyring_cache import cache as cache_module
from msal_keyring_cache.locking import CrossProcessLock
from tests.core_child import entry, fields, refresh
from tests.core_child import key as at
from tests.helpers import PYTHON, ROOT, child_env
from tests.helpers import file_env as _env
from tests.helpers import journal_records as _records

group = pytest.mark.skipif(not batch.supported(), reason="group commit needs Linux")
BATCH = "~batch"


# -- helpers -------------------------------------------------------------------------------


class Child:
    """A tests.core_child process; its report lines are read as they come (never blocking
    the test past a timeout, whatever the child does)."""

    def __init__(self, env: dict[str, str], *ops: str, module: str = "tests.core_child") -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", module, *ops],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._queue: queue.Queue[Optional[str]] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.strip())
        self._queue.put(None)

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        self.errors.extend(self.proc.stderr)

    def _stop(self) -> str:
        self.proc.kill()
        self.proc.wait()
        for reader in self._readers:
            reader.join(30)
        return "".join(self.errors)[-3000:]

    def until(self, prefix: str, timeout: float = 60) -> list[str]:
        """Read lines until one starts with ``prefix``; that line's words."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no {prefix!r} in {self.lines}: {self._stop()}")
            self.lines.append(line)
            if line and line.startswith(prefix):  # (a blank line: two processes' output)
                return line.split()

    def role(self) -> tuple[str, str]:
        words = self.until("role ")
        return words[1], words[2]

    def send(self, line: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60) -> list[list[str]]:
        """Wait for the exit; the report lines of every op (``ok``/``error``)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"child hung: {self.lines} {self._stop()}") from None
        for reader in self._readers:
            reader.join(30)
        while True:
            line = self._queue.get_nowait() if not self._queue.empty() else None
            if line is None:
                break
            self.lines.append(line)
        assert self.proc.returncode == 0, "".join(self.errors)[-3000:]
        return [line.split() for line in self.lines if line.startswith(("ok ", "error "))]


def _seed(path: Path, secret: str, doc: str) -> None:
    """The file's first content: a whole snapshot (the journal records come after)."""
    cache = build_cache("t", backend="file", path=str(path), key=secret)
    cache.deserialize(doc)
    cache.close()


def _state(path: Path, secret: str) -> dict[str, Any]:
    cache = build_cache("t", backend="file", path=str(path), key=secret)
    try:
        cache.reload()
        with cache._lock:
            return json.loads(cache._dump())  # with the library's own table of ids
    finally:
        cache.close()


def _lock(path: Path, timeout: float = 10) -> CrossProcessLock:
    return CrossProcessLock(str(path) + ".lock", timeout)


def _blocked_on(lock_file: str) -> int:
    """How many flock waiters the kernel has queued on ``lock_file`` (/proc/locks)."""
    inode = os.stat(lock_file).st_ino
    count = 0
    with open("/proc/locks") as table:
        for line in table:
            words = line.split()
            blocked = "->" in words and words[words.index("->") + 1] == "FLOCK"
            if blocked and words[-3].rsplit(":", 1)[-1] == str(inode):
                count += 1
    return count


def _until_blocked(
    lock_file: str, waiters: int = 1, timeout: float = 60, writer: Optional[threading.Thread] = None
) -> None:
    deadline = time.monotonic() + timeout
    while _blocked_on(lock_file) < waiters:
        assert writer is None or writer.is_alive(), "the writer ended without waiting"
        assert time.monotonic() < deadline, "nobody queued for the lock"
        time.sleep(0.01)


@contextmanager
def _listener(
    path: Path, listen: bool = True, lock_file: str = ""
) -> Iterator[list[socket.socket]]:
    """Someone of the same user holding the group's name, never answering (or, with
    ``listen=False``, bound without accepting: every connection is refused)."""
    lock_file = lock_file or str(path) + ".lock"
    with CrossProcessLock(lock_file, 10):
        pass  # the lock file exists: the group's name derives from it
    name = batch.address(lock_file)
    assert name is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(name)
    kept: list[socket.socket] = []
    if listen:
        sock.listen(16)

        def serve() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                kept.append(conn)

        threading.Thread(target=serve, daemon=True).start()
    try:
        yield kept
    finally:
        sock.close()
        for conn in kept:
            conn.close()


def _send_raw(path: Path, ident: str, body: bytes) -> socket.socket:
    """A hand-made follower: sends ``body`` as its change to the group's leader."""
    name = batch.address(str(path) + ".lock")
    assert name is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(name)
    message = ident.encode() + body
    sock.sendall(struct.pack(">I", len(message)) + message)
    return sock


def _ok(reports: list[list[str]]) -> None:
    assert [r[0] for r in reports] == ["ok"] * len(reports), reports


# -- a live leader ---------------------------------------------------------------------------
#
# The leader, or the follower under test, runs in this process (on a thread): mutmut tracks
# which tests reach a function in the test's own process only, and the mutant is active in
# the child processes too (they inherit its environment).

OLD_IDS = [f"{i:032x}" for i in range(512)]  # a full table of earlier writers' ids


class Writer(threading.Thread):
    """One write in this process, on a thread: its exception and how long it took."""

    def __init__(self, write: Any) -> None:
        super().__init__(daemon=True)
        self.write = write
        self.error: Optional[BaseException] = None
        self.took = -1.0
        self.start()

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.write()
        except BaseException as exc:
            self.error = exc
        self.took = time.monotonic() - started

    def result(self, timeout: float = 60) -> Optional[BaseException]:
        self.join(timeout)
        assert not self.is_alive(), "the write did not return"
        return self.error


class Roles:
    """The group-commit role of each write that met a busy lock in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._seen: queue.Queue[str] = queue.Queue()
        self.ids: list[str] = []
        join = batch.join

        def recording(meet: str, ident: str, change: bytes) -> Any:
            role = join(meet, ident, change)
            name = {batch.Leader: "leader", batch.Ticket: "follower"}.get(type(role), "alone")
            self.ids.append(ident)
            self._seen.put(name)
            return role

        monkeypatch.setattr(batch, "join", recording)

    def next(self, timeout: float = 60) -> str:
        return self._seen.get(timeout=timeout)


def _cache(path: Path, secret: str, timeout: float = 60) -> Any:
    return build_cache("t", backend="file", path=str(path), key=secret, lock_timeout=timeout)


@group
def test_a_live_leader_writes_every_follower_change_in_one_record(
    cache_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file holds "seed" and "gone", and a full table of earlier writers' ids.
    seed = json.loads(entry("seed", "gone"))
    seed[BATCH] = {ident: {} for ident in OLD_IDS}
    _seed(cache_path, key, json.dumps(seed))
    roles = Roles(monkeypatch)
    # Followers wait for the leader and never try the lock themselves here: a follower's
    # try can win the lock from the woken leader (flock does not queue), and then it
    # writes itself — correct, but not the one write for all that this test reads.
    monkeypatch.setattr(cache_module, "_GRACE", 600.0)
    env = _env(cache_path, key, CORE_GRACE="600")
    mine, lead, here = (_cache(cache_path, key) for _ in range(3))
    with mine.store.lock():  # everyone meets a busy lock
        leader = Writer(lambda: lead.merge(entry("lead")))
        assert roles.next() == "leader"
        followers = {
            "new": Child(env, "merge:new"),
            "fresh-delete": Child(env, "delete:seed"),
            "stale-add": Child(env, "merge:dup"),
            "stale-delete": Child(env, "delete:gone"),
            "other-kind": Child(env, "rt:r1"),
        }
        ids = {}
        for name, child in followers.items():
            role, ids[name] = child.role()
            assert role == "follower"
        follower = Writer(lambda: here.merge(entry("here")))  # one in this process too
        assert roles.next() == "follower"
        ids["here"] = roles.ids[-1]
        # Meanwhile (this process holds the lock) the same "dup" is added and "gone"
        # deleted here: two followers' changes are stale, already in the store.
        mine.merge(entry("dup"))
        mine.modify("AccessToken", fields("gone"), None)
    assert leader.result() is None
    assert follower.result() is None
    for child in followers.values():
        _ok(child.finish())
    here.merge(entry("after"))  # its next write holds only what is new
    for cache in (mine, lead, here):
        cache.close()
    records = _records(cache_path, key)
    assert len(records) == 4  # ours (2), the leader's one write for all seven, "after"
    assert records[2] == {
        "AccessToken": {
            at("lead"): fields("lead"),
            at("new"): fields("new"),
            at("here"): fields("here"),
            at("seed"): None,
        },
        "RefreshToken": {"rt-r1": refresh("r1")},
        # every follower's id; the oldest ids dropped to keep 512
        BATCH: {**dict.fromkeys(OLD_IDS[:6]), **{i: {} for i in ids.values()}},
    }
    assert records[3] == {"AccessToken": {at("after"): fields("after")}}
    state = _state(cache_path, key)
    assert set(state["AccessToken"]) == {at(n) for n in ("lead", "new", "here", "dup", "after")}
    assert set(state["RefreshToken"]) == {"rt-r1"}
    assert list(state[BATCH])[:506] == OLD_IDS[6:]  # the oldest went first
    assert set(list(state[BATCH])[506:]) == set(ids.values())


@group
def test_a_leader_refuses_malformed_changes_and_still_writes_its_own(
    cache_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(cache_path, key, entry("seed"))
    roles = Roles(monkeypatch)
    lead = _cache(cache_path, key)
    with _lock(cache_path):
        leader = Writer(lambda: lead.merge(entry("lead")))
        assert roles.next() == "leader"
        bodies = [b"not json", b'{"AccessToken": 5}', b'{"AccessToken": {"k": 5}}', b"[1]"]
        bad = [_send_raw(cache_path, f"{i:032x}", body) for i, body in enumerate(bodies)]
    answers = [sock.recv(1) for sock in bad]
    for sock in bad:
        sock.close()
    assert leader.result() is None
    lead.close()
    assert answers == [b"-"] * len(bodies)  # "not written": never a false "+"
    assert _records(cache_path, key) == [{"AccessToken": {at("lead"): fields("lead")}}]


@group
@pytest.mark.parametrize("table", [True, False], ids=["ids", "no-ids"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_follower_whose_leader_died_writes_its_change_exactly_once(
    cache_path: Path, key: str, when: str, table: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import batch_child

    # The leader (a child) is SIGKILLed before its write, or after it (before answering):
    # the follower here writes its change itself, or finds it written (its id is there).
    _seed(cache_path, key, json.dumps({BATCH: {OLD_IDS[0]: {}}} if table else {}))
    roles = Roles(monkeypatch)
    follower_cache = _cache(cache_path, key)
    synced: list[int] = []  # inodes this process fsynced: the follower's, not the leader's
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with _lock(cache_path):
        leader = Child(_env(cache_path, key, BATCH_NO_COMPACT="1"), "lead", when, "leader",
                       module="tests.batch_child")  # fmt: skip
        leader.until("role leader")
        follower = Writer(lambda: follower_cache.merge(batch_child.entry("f")))
        assert roles.next() == "follower"
    assert follower.result() is None
    leader.proc.wait(60)
    assert leader.proc.returncode == -signal.SIGKILL
    # Durable before the follower returned, also when the dead leader wrote it (and may
    # have died before its own fsync): the follower fsynced the file holding it.
    assert os.stat(cache_path).st_ino in synced
    follower_cache.close()
    written = [sorted(r.get("AccessToken", {})) for r in _records(cache_path, key)]
    assert written == ([["f"]] if when == "before" else [["f", "leader"]])  # f once


# -- writers whose leader never answers ----------------------------------------------------------


@group
@pytest.mark.parametrize("listen", [True, False], ids=["silent-leader", "no-group"])
def test_a_waiting_writer_gives_up_at_its_lock_timeout(
    cache_path: Path, key: str, listen: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(cache_path, key, entry("seed"))
    roles = Roles(monkeypatch)
    cache = _cache(cache_path, key, timeout=2)
    with _listener(cache_path, listen), _lock(cache_path):  # held until the writer returns
        writer = Writer(lambda: cache.merge(entry("f")))
        error = writer.result(30)
    assert roles.next() == ("follower" if listen else "alone")
    assert isinstance(error, LockTimeoutError), error
    assert writer.took < 2 + 1.5  # the lock timeout bounds the whole call
    cache.close()
    assert _records(cache_path, key) == []
    assert set(_state(cache_path, key)["AccessToken"]) == {at("seed")}


@group
def test_with_a_short_lock_timeout_a_contended_write_fails_in_time(
    cache_path: Path, key: str
) -> None:
    _seed(cache_path, key, entry("seed"))
    cache = _cache(cache_path, key, timeout=0.1)
    with _listener(cache_path), _lock(cache_path):
        follower = Writer(lambda: cache.merge(entry("f")))  # a follower of a silent leader
        follower.result(30)
        alone = Writer(lambda: cache.deserialize(entry("a")))  # a whole rewrite, alone
        alone.result(30)
    cache.close()
    assert isinstance(follower.error, LockTimeoutError), follower.error
    assert isinstance(alone.error, LockTimeoutError), alone.error
    # Within the timeout (+ slack): not the follower's grace or poll interval (1 s).
    assert follower.took < 0.8
    assert alone.took < 0.8


@group
def test_a_waiting_writer_reports_a_lock_path_that_became_unusable(
    cache_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(cache_path, key, entry("seed"))
    roles = Roles(monkeypatch)
    cache = _cache(cache_path, key, timeout=10)
    lock_file = str(cache_path) + ".lock"
    with _listener(cache_path), _lock(cache_path):
        writer = Writer(lambda: cache.merge(entry("f")))
        assert roles.next() == "follower"
        os.rename(lock_file, lock_file + ".old")
        os.mkdir(lock_file)  # what its next try of the lock finds
        error = writer.result(30)
    cache.close()
    assert isinstance(error, ConfigError), error  # never a silent success
    assert set(_state(cache_path, key)["AccessToken"]) == {at("seed")}


@group
def test_a_follower_of_a_silent_leader_writes_itself_when_the_lock_frees(
    cache_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(cache_path, key, entry("seed"))
    roles = Roles(monkeypatch)
    cache = _cache(cache_path, key, timeout=30)
    _fsync_fails_once(monkeypatch)
    with _listener(cache_path):
        with _lock(cache_path):
            writer = Writer(lambda: cache.merge(entry("f")))
            assert roles.next() == "follower"
            time.sleep(1.5)  # past its grace: it tries the lock now and then, busy
        error = writer.result()
        with _lock(cache_path, timeout=5):  # it did not keep the lock
            pass
        cache.merge(entry("g"))  # the next write stores what the failed one kept pending
    cache.close()
    assert isinstance(error, StoreError), error  # its write's fsync failed: the caller is told
    assert set(_state(cache_path, key)["AccessToken"]) == {at("seed"), at("f"), at("g")}


@group
def test_a_follower_past_its_grace_tries_the_lock_and_never_queues_for_it(
    cache_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The leader waits for the lock far longer than a follower's grace. The follower then
    # tries the lock now and then (never queueing in the kernel behind its leader) and
    # keeps its ticket: its change stays the live leader's to write.
    _seed(cache_path, key, entry("seed"))
    roles = Roles(monkeypatch)
    monkeypatch.setattr(cache_module, "_GRACE", 0.1)
    monkeypatch.setattr(cache_module, "_POLL", 0.05)
    lead, here = _cache(cache_path, key), _cache(cache_path, key)
    lock_file = str(cache_path) + ".lock"
    with _lock(cache_path):
        leader = Writer(lambda: lead.merge(entry("lead")))
        assert roles.next() == "leader"
        _until_blocked(lock_file, 1, writer=leader)
        follower = Writer(lambda: here.merge(entry("here")))
        assert roles.next() == "follower"
        time.sleep(1.0)  # ten graces: it has found the lock busy many times by now
        assert follower.is_alive()
        assert _blocked_on(lock_file) == 1  # the leader alone waits in the kernel
    assert leader.result() is None
    assert follower.result() is None
    for cache in (lead, here):
        cache.close()
    state = _state(cache_path, key)
    assert set(state["AccessToken"]) == {at("seed"), at("lead"), at("here")}


def _fsync_fails_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fsync, failed = os.fsync, []

    def failing_once(fd: int) -> None:
        if not failed:
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_once)


# -- a leader whose write fails ----------------------------------------------------------------


@group
@pytest.mark.parametrize("fault", ["append", "fsync"])
def test_a_leader_whose_write_fails_says_so_and_loses_nothing(
    cache_path: Path, key: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(cache_path, key, entry("seed"))
    roles = Roles(monkeypatch)
    lead = _cache(cache_path, key)
    if fault == "append":
        append, failed = lead.store.append, []

        def append_fails_once(*args: Any) -> None:
            if not failed:
                failed.append(1)
                raise StoreError("injected: the disk is gone")
            append(*args)

        monkeypatch.setattr(lead.store, "append", append_fails_once)
    else:
        _fsync_fails_once(monkeypatch)
    with _lock(cache_path):
        leader = Writer(lambda: lead.merge(entry("lead")))
        assert roles.next() == "leader"
        follower = Child(_env(cache_path, key), "merge:f")
        assert follower.role()[0] == "follower"
    error = leader.result()
    _ok(follower.finish())
    lead.merge(entry("lead2"))  # stores what the failed call kept pending
    lead.close()
    assert isinstance(error, StoreError), error  # the injected failure, nothing else
    if fault == "append":  # the follower, told "not written", wrote its change itself
        assert _records(cache_path, key) == [
            {"AccessToken": {at("f"): fields("f")}},
            {"AccessToken": {at("lead"): fields("lead"), at("lead2"): fields("lead2")}},
        ]
    state = _state(cache_path, key)
    assert set(state["AccessToken"]) == {at(n) for n in ("seed", "lead", "f", "lead2")}


# -- fork ----------------------------------------------------------------------------------------
#
# The at-fork hooks run in the forked child; each test first runs its hook here too (the
# same effect, observable in this process), so that mutmut's in-process call tracking
# selects the test; the forked child then shows the real thing.


def _fork_child(mode: str, path: Path, env: Optional[dict[str, str]] = None) -> Child:
    return Child(env or child_env(), mode, str(path), module="tests.fork_child")


def _take_while_the_forked_child_lives(child: Child, lock_file: Path) -> None:
    """SIGKILL the parent holding the lock: the lock is free though its forked child lives."""
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait(30)
    try:
        with CrossProcessLock(str(lock_file), 5):
            pass  # a holder that died frees the lock: the child kept no copy of it
    finally:
        assert child.proc.stdin is not None
        child.proc.stdin.close()  # the forked child exits


def _reset_drops_a_held_lock(lock_file: Path) -> None:
    """The child's reset, here: the holder's descriptor is closed and it holds nothing."""
    lock = CrossProcessLock(str(lock_file), 5)
    lock.acquire()
    lock._reset_in_child()
    assert not lock.held
    with CrossProcessLock(str(lock_file), 1):  # its descriptor, the lock's only one, is closed
        pass
    lock.acquire(1)  # and it takes the lock anew, like any other process
    lock.__exit__(None, None, None)


def test_a_forked_child_neither_holds_nor_keeps_its_parents_lock(tmp_path: Path) -> None:
    lock_file = tmp_path / "held.lock"
    _reset_drops_a_held_lock(lock_file)
    child = _fork_child("held", lock_file)
    seen = {" ".join(child.until("")) for _ in range(2)}
    assert seen == {"child refused", "forked"}  # it waits its turn like any other process
    _take_while_the_forked_child_lives(child, lock_file)


def test_a_forked_child_keeps_no_copy_of_a_lock_its_parent_awaits(tmp_path: Path) -> None:
    lock_file = tmp_path / "awaited.lock"
    _reset_drops_a_held_lock(lock_file)
    with CrossProcessLock(str(lock_file), 5):
        child = _fork_child("awaited", lock_file)
        seen = {child.until("")[0] for _ in range(2)}  # (two processes, either order)
        assert seen == {"child", "attaching"}
    child.until("held")  # through the wait it had before the fork
    _take_while_the_forked_child_lives(child, lock_file)


def test_fork_waits_for_a_lock_hand_over_in_progress(tmp_path: Path) -> None:
    from msal_keyring_cache import locking

    # Here: the hook before fork returns only once a hand-over in progress is done.
    lock = CrossProcessLock(str(tmp_path / "here.lock"), 5)
    inside, steps = threading.Event(), []

    def hand_over() -> None:
        with lock._cond:
            inside.set()
            time.sleep(0.5)
            steps.append(1)

    thread = threading.Thread(target=hand_over)
    thread.start()
    inside.wait()
    locking._before_fork()
    try:
        assert steps == [1]
    finally:
        locking._after_fork_parent()
        thread.join()
    # In a real fork:
    child = _fork_child("handover", tmp_path / "x.lock")
    assert child.until("steps") == ["steps", "1"]  # never a half-done hand-over in the child
    child.finish()


def test_a_forked_child_writes_though_a_parent_thread_held_the_cache(
    cache_path: Path, key: str
) -> None:
    from msal_keyring_cache import cache as cache_module

    # Here: after the hook, this thread writes though another thread holds the old lock.
    cache = _cache(cache_path, key)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with cache._lock:
            holding.set()
            done.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    try:
        cache_module._after_fork()
        assert Writer(lambda: cache.merge(entry("here"))).result(30) is None
    finally:
        done.set()
        thread.join()
    cache.close()
    # In a real fork:
    child = _fork_child("cache", cache_path, _env(cache_path, key))
    assert child.until("")[0] in ("0", "1", "hung")
    assert child.lines[-1] == "0"  # it wrote (not hung on a lock its parent's thread held)
    wanted = {at("here"), at("parent"), at("child")}
    assert set(_state(cache_path, key)["AccessToken"]) == wanted


# -- reads and merges --------------------------------------------------------------------------


def test_find_sees_another_writers_entries_and_filters_as_msal(cache_path: Path, key: str) -> None:
    writer = build_cache("t", backend="file", path=str(cache_path), key=key)
    reader = build_cache("t", backend="file", path=str(cache_path), key=key)
    reader.serialize()  # loaded while still empty
    entries = {}
    for target, client in (("a", "c"), ("b", "c"), ("a", "other")):
        entries[f"-127.0.0.1-accesstoken-{client}-t-{target}"] = dict(
            fields(target), client_id=client
        )
    writer.merge(json.dumps({"AccessToken": entries}))
    with pytest.warns(
        DeprecationWarning, match="search"
    ):  # msal deprecates find() for list(search())
        found = reader.find("AccessToken", ["a"], query={"client_id": "c"})
    assert found == [entries["-127.0.0.1-accesstoken-c-t-a"]]
    writer.close()
    reader.close()


def test_a_direct_lookup_sees_another_writers_entry_at_once(cache_path: Path, key: str) -> None:
    # msal's O(1) lookups (_get_access_token, _get_app_metadata) go through _get: the
    # shared change counter moved, so it takes in the change now, not a second later.
    reader, writer = _cache(cache_path, key), _cache(cache_path, key)
    writer.merge(entry("first"))
    assert reader._get("AccessToken", at("first")) == fields("first")  # loaded, vouched for
    writer.merge(entry("second"))
    assert reader._get("AccessToken", at("second")) == fields("second")
    assert reader._get("AccessToken", at("missing"), "none here") == "none here"
    reader.close()
    writer.close()


def test_search_passes_target_query_and_now_on_every_path(cache_path: Path, key: str) -> None:
    # A search runs one of three ways: checked (the counter does not vouch), the warm hit,
    # or inside a write or msal's own iteration (no catch-up); each must filter as msal.
    reader, writer = _cache(cache_path, key), _cache(cache_path, key)
    entries = {}
    for target, client in (("a", "c"), ("b", "c"), ("a", "other")):
        # Expired by the clock, not at the "now" passed below: "now" must reach msal.
        entries[f"-127.0.0.1-accesstoken-{client}-t-{target}"] = dict(
            fields(target), client_id=client, expires_on="2000"
        )
    writer.merge(json.dumps({"AccessToken": entries}))

    def found() -> list[str]:
        hits = reader.search("AccessToken", ["a"], query={"client_id": "c"}, now=1000)
        return [f"{e['client_id']}/{e['target']}" for e in hits]

    assert found() == ["c/a"]  # checked
    assert found() == ["c/a"]  # the warm hit
    with reader._lock:  # (as inside msal's own code)
        writer.merge(entry("other"))  # the counter moves: no warm hit
        assert found() == ["c/a"]
    reader.close()
    writer.close()


def test_merge_replaces_what_is_not_an_entry_in_the_store(cache_path: Path, key: str) -> None:
    # Another program left a section that is not a table and an entry that is not an
    # object: merge replaces both (they carry no time, so anything valid is newer).
    writer = build_cache("t", backend="file", path=str(cache_path), key=key)
    with writer.store.lock():
        writer.store.save(
            json.dumps({"AccessToken": {at("k"): "junk"}, "RefreshToken": 7}).encode()
        )
    writer.close()
    cache = build_cache("t", backend="file", path=str(cache_path), key=key)
    incoming = {"AccessToken": {at("k"): fields("k")}, "RefreshToken": {"rt-r": refresh("r")}}
    assert cache.merge(json.dumps(incoming)) == 2
    assert {k: v for k, v in json.loads(cache.serialize()).items() if v} == incoming
    cache.close()


def test_merge_takes_a_new_entry_whatever_its_time(cache_path: Path, key: str) -> None:
    cache = build_cache("t", backend="file", path=str(cache_path), key=key)
    odd = dict(refresh("odd"), last_modification_time="-5")  # int() takes it, as msal does
    assert cache.merge(json.dumps({"RefreshToken": {"rt-odd": odd}})) == 1
    assert json.loads(cache.serialize())["RefreshToken"] == {"rt-odd": odd}
    cache.close()


# -- file helpers ------------------------------------------------------------------------------


def test_moving_a_damaged_file_aside_fsyncs_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from msal_keyring_cache import files

    synced: list[int] = []
    fsync = os.fsync

    def observed(fd: int) -> None:  # the real fsync, noting which file it made durable
        synced.append(os.fstat(fd).st_ino)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", observed)
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "bad").write_bytes(b"x")
    files.move_aside(str(directory / "bad"), "a test")
    assert synced == [directory.stat().st_ino]  # the rename is durable
    monkeypatch.chdir(directory)  # a bare name: the current directory
    (directory / "bad2").write_bytes(b"y")
    synced.clear()
    assert files.move_aside("bad2", "a test")
    assert synced == [directory.stat().st_ino]
    assert sorted(p.name.split(".corrupt-")[0] for p in directory.iterdir()) == ["bad", "bad2"]


def test_a_lock_the_user_may_not_create_says_to_check_permissions() -> None:
    from tests.helpers import require

    require(os.getuid() == 0, "needs root to try the lock as another user")
    place = Path(tempfile.mkdtemp(prefix="mkc-perm-"))
    with pytest.raises(ConfigError, match="is a directory; refusing to use it"):
        CrossProcessLock(
            str(place), 1
        ).acquire()  # (here: a directory at the lock path)  # under /tmp, which others can reach
    try:
        _lock_as_another_user(place)
    finally:
        shutil.rmtree(place)


def _lock_as_another_user(place: Path) -> None:
    (place / "theirs").mkdir()
    for directory in (place, place / "theirs"):
        os.chmod(directory, 0o755)  # noqa: S103 - others may look, not write
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other user
        message = b""
        try:
            os.setgid(65534)
            os.setuid(65534)
            CrossProcessLock(str(place / "theirs" / "x.lock"), 1).acquire()
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".encode()
        finally:
            os.write(w, message)
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as got:
        message = got.read().decode()
    assert message.startswith("StoreError: Cannot open the token-cache lock"), message
    assert "Permission denied" in message
    assert (
        "check the owner and permissions of the file and its directory, or point the cache "
        "at a location you own (MSAL_KEYRING_CACHE_PATH)"
    ) in message


# -- a whole rewrite under contention ------------------------------------------------------------


@pytest.mark.secret_service
@pytest.mark.parametrize("how", ["rewrite", "leader", "no-group"])
def test_a_keyring_write_waits_for_a_busy_lock_then_writes(
    tmp_path: Path, use_secret_service: Any, how: str
) -> None:
    # The keyring store's lock is the plain CrossProcessLock (the file store wraps it): a
    # whole rewrite (alone), a group's leader, and a writer that finds no group (its name
    # taken by someone who does not listen) each wait in the kernel, then write.
    path = tmp_path / "data" / "token_cache.bin"
    app = "msal-keyring-cache-core-tests"  # its own keyring entry, cleared at the end
    cache = build_cache(app, path=str(path), lock_timeout=30)
    assert cache.backend_info.backend == "keyring"
    mine = [f"{name}-{os.urandom(4).hex()}" for name in ("seed", "a", "b")]  # (a shared keyring)
    cache.merge(entry(mine[0]))
    lock_file = cache.store.describe().lock_file
    failures: list[BaseException] = []

    def write() -> None:
        try:
            if how == "rewrite":
                cache.deserialize(entry(*mine[1:]))
            else:
                cache.merge(entry(mine[1]))
        except BaseException as exc:
            failures.append(exc)

    squatter = _listener(path, listen=False, lock_file=lock_file)
    with squatter if how == "no-group" else contextlib.nullcontext():
        with CrossProcessLock(lock_file, 10):
            writer = threading.Thread(target=write)
            writer.start()
            _until_blocked(lock_file, writer=writer)  # it waits in the kernel for our lock
        writer.join(60)
    assert failures == []
    assert not writer.is_alive()
    with CrossProcessLock(lock_file, 5):
        pass  # and it let the lock go
    reader = build_cache(app, path=str(path))
    stored = set(json.loads(reader.serialize())["AccessToken"])
    if how == "rewrite":
        assert stored == {at(n) for n in mine[1:]}
    else:
        assert {at(n) for n in mine[:2]} <= stored
    reader.close()
    cache.clear()
    cache.close()


def test_an_immutable_lock_file_says_to_check_permissions(tmp_path: Path) -> None:
    from msal_keyring_cache import StoreError
    from tests.helpers import require, require_tool

    require_tool("chattr")
    require(os.getuid() == 0, "needs root to make a file immutable")
    lock_file = tmp_path / "x.lock"
    lock_file.touch()
    done = subprocess.run(["chattr", "+i", str(lock_file)], capture_output=True, check=False)
    require(done.returncode == 0, "this file system cannot make a file immutable")
    try:
        with pytest.raises(StoreError) as caught:
            CrossProcessLock(str(lock_file), 1).acquire()
    finally:
        subprocess.run(["chattr", "-i", str(lock_file)], check=False)
    assert str(caught.value).endswith(
        ": Operation not permitted; check the owner and permissions of the file and its directory."
    )


def test_a_lock_on_a_read_only_file_system_says_so(tmp_path: Path) -> None:
    from msal_keyring_cache import StoreError
    from tests.helpers import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "ro") as mnt:
        remounted = subprocess.run(
            ["mount", "-o", "remount,ro", str(mnt)], capture_output=True, check=False
        )
        assert remounted.returncode == 0, remounted.stderr
        with pytest.raises(StoreError) as caught:
            CrossProcessLock(str(mnt / "new.lock"), 1).acquire()
    assert str(caught.value).endswith(
        ": Read-only file system; the file system is read-only: point the cache at a writable "
        "location (MSAL_KEYRING_CACHE_PATH)."
    )


# -- exact change detection: what msal calls without changing anything writes nothing --------


def _size(path: Path) -> tuple[int, int]:
    """The file as the file system sees it (a write appends a record or replaces it)."""
    found = os.stat(path)
    return found.st_ino, found.st_size


def test_a_modify_that_changes_nothing_writes_nothing(cache_path: Path, key: str) -> None:
    cache = _cache(cache_path, key)
    try:
        cache.merge(entry("a"))
        before = _size(cache_path)
        cache.modify("AccessToken", fields("a"), {"secret": "secret-a"})  # the value it has
        cache.modify("AccessToken", fields("never"), None)  # removing what is not there
        assert _size(cache_path) == before
        cache.modify("AccessToken", fields("a"), {"secret": "secret-b"})  # a real change
        assert _size(cache_path) != before
    finally:
        cache.close()


def test_serialize_clears_has_state_changed_as_msal_documents(cache_path: Path, key: str) -> None:
    cache = _cache(cache_path, key)
    try:
        cache.merge(entry("a"))
        assert cache.has_state_changed is True
        cache.serialize()
        assert cache.has_state_changed is False
    finally:
        cache.close()


def test_add_passes_msal_its_clock(cache_path: Path, key: str) -> None:
    cache = _cache(cache_path, key)
    try:
        event = {
            "client_id": "c",
            "scope": ["s"],
            "token_endpoint": "https://127.0.0.1/t/oauth2/v2.0/token",
            "response": {"access_token": "at", "expires_in": 3600, "token_type": "Bearer"},
            "data": {},
        }
        cache.add(event, now=1000)
        (found,) = cache.search("AccessToken", now=1000)
        assert (found["cached_at"], found["expires_on"]) == ("1000", "4600")
    finally:
        cache.close()


def test_serialize_gives_the_text_msal_itself_would(cache_path: Path, key: str) -> None:
    import msal

    cache = _cache(cache_path, key)
    try:
        cache.merge(entry("a", "b"))
        plain = msal.SerializableTokenCache()
        plain.deserialize(cache.serialize())
        assert cache.serialize() == plain.serialize()  # byte for byte: tools may diff them
    finally:
        cache.close()
