"""How many times the cache touches its store per msal operation (issue 5).

Counts, never wall-clock times: store writes per sign-in / refresh / client-credential
miss / silent hit are 1 / <= 2 / 1 / 0 on the file store, an unchanged store is never
reloaded, an expired access token msal prunes during a read rides along with the next
write, and importing the package pulls in none of the heavy optional libraries.

Writes are counted by the kernel, not by the store (issue 17): inotify reports every
close of the cache file after writing and every rename onto it, and ``os.stat`` must
change exactly when a write was counted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import PersistentTokenCache, build_cache
from msal_keyring_cache.testing import LoopbackIdentityProvider
from tests.helpers import PYTHON, child_env

USER = "alice@example.com"
SCOPES = ["api://counts/User.Read"]


def file_cache(path: Path, key: str) -> PersistentTokenCache:
    cache = build_cache("counts-test", backend="file", path=str(path), key=key)
    if str(path) in _observers:
        _observers[str(path)].caches.append(cache)
    return cache


class Writes:
    """Physical writes to one file, seen by the kernel (inotify) and by ``os.stat``."""

    IN_CLOSE_WRITE, IN_MOVED_TO = 0x8, 0x80

    def __init__(self, path: Path) -> None:
        self.path = path
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self._fd >= 0
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        mask = self.IN_CLOSE_WRITE | self.IN_MOVED_TO
        assert libc.inotify_add_watch(self._fd, str(path.parent).encode(), mask) >= 0
        self.count = 0
        self.caches: list[PersistentTokenCache] = []
        self._stat = self._look()
        self.stat_changes = 0

    def _look(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def poll(self) -> int:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            data = b""
        offset = 0
        while offset < len(data):
            _wd, mask, _cookie, size = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16 : offset + 16 + size].rstrip(b"\0").decode()
            offset += 16 + size
            if name == self.path.name and mask & (self.IN_CLOSE_WRITE | self.IN_MOVED_TO):
                self.count += 1
        now = self._look()
        if now != self._stat:
            self.stat_changes += 1
            self._stat = now
        return self.count

    def close(self) -> None:
        os.close(self._fd)


_observers: dict[str, Writes] = {}


@pytest.fixture(autouse=True)
def _observe(cache_path: Path) -> Iterator[None]:
    if not sys.platform.startswith("linux"):
        yield
        return
    _observers[str(cache_path)] = Writes(cache_path)
    yield
    _observers.pop(str(cache_path)).close()


def writes(cache: PersistentTokenCache) -> int:
    """The cache's writes; the kernel must have seen exactly the writes of all caches on it."""
    observer = _observers.get(cache.store.path)  # type: ignore[attr-defined]
    if observer is not None:
        before = observer.count
        seen = observer.poll()
        if seen != before:
            assert observer.stat_changes, "a write the file's stat does not show"
        observer.stat_changes = 0
        made = sum(c.store.stats.saves for c in observer.caches)
        assert seen == made, f"the kernel saw {seen} writes, the stores made {made}"
    return cache.store.stats.saves


def loads(cache: PersistentTokenCache) -> int:
    return cache.store.stats.loads


def sign_in(idp: LoopbackIdentityProvider, cache: PersistentTokenCache) -> Any:
    app = idp.public_app(token_cache=cache)
    result = app.acquire_token_by_username_password(USER, "pw", SCOPES)
    assert "access_token" in result, result.get("error")
    return app


@pytest.fixture
def short_lived_idp() -> Iterator[LoopbackIdentityProvider]:
    """Issues access tokens that are already expired: msal prunes them on its next read."""
    with LoopbackIdentityProvider(access_token_lifetime=-60) as provider:
        yield provider


def test_sign_in_writes_once(idp: LoopbackIdentityProvider, cache_path: Path, key: str) -> None:
    cache = file_cache(cache_path, key)
    sign_in(idp, cache)
    assert writes(cache) == 1


def test_refresh_writes_at_most_twice(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = file_cache(cache_path, key)
    app = sign_in(idp, cache)
    before = writes(cache)
    idp.reset()
    result = app.acquire_token_silent(SCOPES, app.get_accounts()[0], force_refresh=True)
    assert "access_token" in result
    assert idp.token_requests == 1  # it really refreshed
    assert 1 <= writes(cache) - before <= 2


def test_client_credential_miss_writes_once(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = file_cache(cache_path, key)
    app = idp.confidential_app(token_cache=cache)
    for n in range(3):
        result = app.acquire_token_for_client([f"api://counts/{n}/.default"])
        assert result.get("token_source") == "identity_provider"
        assert writes(cache) == n + 1


def test_every_save_is_one_physical_write_compaction_included(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = file_cache(cache_path, key)
    app = idp.confidential_app(token_cache=cache)
    inode, replaced = None, 0
    for n in range(70):  # past MAX_RECORDS: some of these writes replace the file
        app.acquire_token_for_client([f"api://counts/many/{n}/.default"])
        assert writes(cache) == n + 1
        now = os.stat(cache_path).st_ino
        replaced += now != inode
        inode = now
    assert replaced >= 2  # created, then compacted at least once
    assert cache.store.stats.appends == 70 - replaced


def test_silent_hit_neither_writes_nor_reloads(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = file_cache(cache_path, key)
    app = sign_in(idp, cache)
    account = app.get_accounts()[0]
    saved, loaded = writes(cache), loads(cache)
    idp.reset()
    for _ in range(5):
        result = app.acquire_token_silent(SCOPES, account)
        assert result["token_source"] == "cache"
    assert idp.token_requests == 0
    assert writes(cache) == saved
    assert loads(cache) == loaded  # unchanged store: no reload, no decrypt


def test_client_credential_hit_neither_writes_nor_reloads(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = file_cache(cache_path, key)
    app = idp.confidential_app(token_cache=cache)
    app.acquire_token_for_client(SCOPES)
    saved, loaded = writes(cache), loads(cache)
    for _ in range(5):
        assert app.acquire_token_for_client(SCOPES)["token_source"] == "cache"
    assert (writes(cache), loads(cache)) == (saved, loaded)


def test_fresh_process_silent_hit_loads_once_and_never_writes(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    sign_in(idp, file_cache(cache_path, key))
    reader = file_cache(cache_path, key)
    app = idp.public_app(token_cache=reader)
    account = app.get_accounts()[0]
    for _ in range(3):
        assert app.acquire_token_silent(SCOPES, account)["token_source"] == "cache"
    assert (loads(reader), writes(reader)) == (1, 0)


def test_catches_up_once_after_another_writer(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    reader = file_cache(cache_path, key)
    app = idp.confidential_app(token_cache=reader)
    app.acquire_token_for_client(SCOPES)
    base = loads(reader)

    other = file_cache(cache_path, key)  # another process, as far as the file is concerned
    idp.confidential_app(token_cache=other).acquire_token_for_client(["api://counts/other"])

    # The next read takes in the other writer's token: one full load at most (a store
    # with a journal applies just the new record instead).
    targets = {at["target"] for at in reader.search("AccessToken")}
    assert "api://counts/other" in targets
    assert loads(reader) <= base + 1
    caught_up = loads(reader)
    for _ in range(3):
        assert app.acquire_token_for_client(SCOPES)["token_source"] == "cache"
    assert loads(reader) == caught_up  # and never again while nothing changes
    assert writes(reader) == 1
    assert reader.store.changed() is False


def test_expired_token_pruned_on_read_is_folded_into_next_write(
    short_lived_idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = file_cache(cache_path, key)
    app = short_lived_idp.confidential_app(token_cache=cache)
    app.acquire_token_for_client(["api://counts/old/.default"])
    assert writes(cache) == 1

    # The next acquisition reads (msal prunes the expired token, in memory only),
    # misses, and writes once: the prune travels with that write.
    app.acquire_token_for_client(["api://counts/new/.default"])
    assert writes(cache) == 2

    stored = json.loads(file_cache(cache_path, key).serialize())
    targets = [at["target"] for at in stored.get("AccessToken", {}).values()]
    assert targets == ["api://counts/new/.default"]


def test_a_prune_alone_is_never_written(
    short_lived_idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = file_cache(cache_path, key)
    app = short_lived_idp.confidential_app(token_cache=cache)
    app.acquire_token_for_client(["api://counts/old/.default"])
    list(cache.search("AccessToken"))  # msal drops the expired token here
    assert writes(cache) == 1
    assert cache.store.changed() is False


def test_import_pulls_in_no_heavy_library() -> None:
    code = (
        "import sys, json, msal; before = set(sys.modules); import msal_keyring_cache; "
        "heavy = ('cryptography', 'keyring', 'filelock', 'secretstorage', 'jeepney', 'redis'); "
        "print(json.dumps({'loaded': [m for m in heavy if m in sys.modules], "
        "'new_third_party': sorted({m.split('.')[0] for m in set(sys.modules) - before} "
        "- set(getattr(sys, 'stdlib_module_names', sys.builtin_module_names)) "
        "- {'msal_keyring_cache'})}))"
    )
    out = subprocess.run(
        [PYTHON, "-c", code], env=child_env(), capture_output=True, text=True, check=True
    ).stdout
    found = json.loads(out)
    assert found["loaded"] == []
    if sys.version_info >= (3, 10):  # sys.stdlib_module_names is new in 3.10
        assert found["new_third_party"] == []


@pytest.mark.slow
def test_bench_quick_run_reports_the_same_counts(tmp_path: Path) -> None:
    """``bench/run.py --quick`` runs end to end and measures the counts asserted above."""
    out = tmp_path / "docs"
    figures = tmp_path / "figures.json"
    subprocess.run(
        [PYTHON, "bench/run.py", "--quick", "--out", str(out), "--json", str(figures)],
        cwd=str(Path(__file__).resolve().parent.parent),
        env=child_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    results = json.loads(figures.read_text())
    assert results["counts"]["rows"]["ours-key"] == {
        "sign_in": 1,
        "refresh": results["counts"]["rows"]["ours-key"]["refresh"],
        "cc_miss": 1,
        "silent_hit": 0,
    }
    assert results["counts"]["rows"]["ours-key"]["refresh"] <= 2
    for row in results["contention"]["rows"] + results["processes"]["rows"]:
        if row["variant"].startswith("ours-"):
            assert (row["lost"], row["errors"]) == (0, 0), row
        # Every variant's processes start the timed region alike: discovery fetched, so
        # the connection to the provider is open (this project without its http cache).
        assert row["requests_before"] == [1], row
    assert {r["variant"] for r in results["processes"]["rows"]} >= {"msal-memory", "ours-key"}
    # Every cell deleted what it kept in the run's Secret Service (bench/run.py's forget):
    # gnome-keyring rewrites its whole keyring per write, so leftovers slow later cells.
    if "ours-keyring" in results["available"] or os.environ.get("CI"):
        assert results["secret_service_items_left"] == 0
    report = (out / "performance.md").read_text()
    assert "## Against the targets" in report
    assert "## The same, as whole processes" in report
    assert (out / "performance.png").stat().st_size > 10_000


def _phases(*args: str, **env: str) -> tuple[str, list[str]]:
    """``bench/phases.py ARGS`` with extra environment ``env``: its output and its cell lines."""
    done = subprocess.run(
        [PYTHON, "bench/phases.py", *args],
        cwd=str(Path(__file__).resolve().parent.parent),
        env={**child_env(), **env},
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.stdout, [line for line in done.stdout.splitlines() if line.startswith("== ")]


@pytest.mark.slow
def test_bench_phases_reports_cpu_memory_and_faults_by_function() -> None:
    """``bench/phases.py`` (the tool docs/performance.md cites for where the CPU goes)
    runs a small cell of this project and of the floor, with every diagnostic on."""
    stdout, cells = _phases("ours-key,msal-memory", "3x2", "--phases", "cpu", "--faults")
    assert [line.split()[1] for line in cells] == ["ours-key", "msal-memory"]
    for line in cells:
        assert "errors 0," in line, line
        assert "KB of its memory" in line, line
    assert " check " in stdout  # a step of this project's write, timed in CPU seconds
    assert " catch_up " in stdout  # the sign-in written before the run, at least
    assert stdout.count("page faults: ") == stdout.count("by function:") == 2


@pytest.mark.slow
@pytest.mark.parametrize(("switch", "requests"), [("", 1), ("1", 0)])
def test_bench_http_cache_switch_changes_how_processes_start(switch: str, requests: int) -> None:
    """The N×M rows run this project without its http cache, so its processes fetch
    discovery before the start like every variant; ``BENCH_HTTP_CACHE=1`` (what
    docs/performance.md cites to measure the other start) gives it back: no request."""
    stdout, cells = _phases("ours-key", "2x1", BENCH_HTTP_CACHE=switch)
    assert len(cells) == 1, stdout
    assert f"requests before the start {requests})" in cells[0], cells[0]


@pytest.mark.slow
def test_bench_phases_apart_gives_every_process_its_own_cache(tmp_path: Path) -> None:
    """``--apart`` (persistence without sharing, docs/performance.md's comparison): each
    process writes its own cache file, so no process takes in another's records."""
    stdout, cells = _phases("ours-key", "3x2", "--apart", "--phases", "cpu", TMPDIR=str(tmp_path))
    assert len(cells) == 1, stdout
    assert "errors 0," in cells[0], stdout
    # Shared, every process takes in what others wrote (the phases test above: at least
    # the sign-in written before the run) and meets them at the lock; apart, neither.
    assert " catch_up " not in stdout, stdout
    assert " write_grouped " not in stdout, stdout
    assert " persist_locked " in stdout  # and each process did write
