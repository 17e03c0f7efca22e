"""The msal adapter: threads, merges, logs, and the public helpers."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from msal_keyring_cache import MemoryStore, PersistentTokenCache, build_cache, crypto
from msal_keyring_cache.testing import LoopbackIdentityProvider

APP = "msal-keyring-cache-tests"


def test_threads_and_two_cache_objects_in_one_process_lose_nothing(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    caches = [build_cache(APP, backend="file", path=str(cache_path), key=key) for _ in range(2)]
    apps = [idp.confidential_app(token_cache=c) for c in caches]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(15):
                result = apps[n % 2].acquire_token_for_client([f"api://t/thread{n}-{i}/.default"])
                assert "access_token" in result
                apps[n % 2].acquire_token_for_client([f"api://t/thread{n}-{i}/.default"])  # hit
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    fresh = build_cache(APP, backend="file", path=str(cache_path), key=key)
    targets = {e["target"] for e in json.loads(fresh.serialize())["AccessToken"].values()}
    assert targets == {f"api://t/thread{n}-{i}/.default" for n in range(6) for i in range(15)}


def test_no_token_text_in_debug_logs_over_sign_in_and_refresh(
    cache_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, msal's, filelock's, urllib3's
    with LoopbackIdentityProvider(access_token_lifetime=3600) as idp:
        cache = build_cache(APP, backend="file", path=str(cache_path), key=key)
        app = idp.public_app(token_cache=cache)
        app.acquire_token_by_username_password("alice@example.com", "pw-secret", ["User.Read"])
        account = app.get_accounts()[0]
        result = app.acquire_token_silent(["User.Read"], account=account, force_refresh=True)
        assert result
        assert result["token_source"] == "identity_provider"
        issued = list(idp.issued)
    text = "\n".join(r.getMessage() for r in caplog.records)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("msal_keyring"))
    assert "Saved the token cache" in ours
    _assert_no_token_text(text, issued)
    assert key not in text
    assert "pw-secret" not in ours


def _assert_no_token_text(text: str, issued: list[str]) -> None:
    assert issued
    for token in issued:
        for part in token.split("."):
            if len(part) > 20:
                assert part not in text


def test_no_token_text_in_debug_logs_while_loading_an_existing_cache(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    idp.reset()
    writer = build_cache(APP, backend="file", path=str(cache_path), key=key)
    app = idp.public_app(token_cache=writer)
    app.acquire_token_by_username_password("alice@example.com", "pw", ["User.Read"])
    caplog.set_level(logging.DEBUG)
    # A fresh cache loads the file (snapshot + journal), then takes in another's append.
    reader = build_cache(APP, backend="file", path=str(cache_path), key=key)
    reader_app = idp.public_app(token_cache=reader)
    (account,) = reader_app.get_accounts()
    assert reader_app.acquire_token_silent(["User.Read"], account)
    app.acquire_token_by_username_password("bob@example.com", "pw", ["User.Read"])
    assert len(reader_app.get_accounts()) == 2
    reader.reload()
    ours = [r for r in caplog.records if r.name.startswith("msal_keyring")]
    assert any("Loaded the token cache" in r.getMessage() for r in ours)
    assert any("Applied" in r.getMessage() for r in ours)
    _assert_no_token_text("\n".join(r.getMessage() for r in ours), list(idp.issued))


def test_merge_keeps_the_newer_entry_and_deserialize_replaces(
    idp: LoopbackIdentityProvider,
) -> None:
    cache = PersistentTokenCache(MemoryStore())
    idp.confidential_app(token_cache=cache).acquire_token_for_client(["api://t/a/.default"])
    other = PersistentTokenCache(MemoryStore())
    idp.confidential_app(token_cache=other).acquire_token_for_client(["api://t/b/.default"])
    added = cache.merge(other.serialize())
    assert added == 1  # b's access token; the app metadata is the same
    targets = {e["target"] for e in json.loads(cache.serialize())["AccessToken"].values()}
    assert targets == {"api://t/a/.default", "api://t/b/.default"}
    saves = cache.store.stats.saves
    assert cache.merge(other.serialize()) == 0
    assert cache.store.stats.saves == saves
    cache.deserialize("{}")
    assert json.loads(cache.serialize()) == {}
    with pytest.raises(ValueError, match="JSON object"):
        cache.merge("[1, 2]")


def test_clear_removes_everything_for_every_process(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    one = build_cache(APP, backend="file", path=str(cache_path), key=key)
    two = build_cache(APP, backend="file", path=str(cache_path), key=key)
    idp.confidential_app(token_cache=one).acquire_token_for_client(["api://t/a/.default"])
    assert json.loads(two.serialize())["AccessToken"]
    one.clear()
    assert not cache_path.exists()
    assert json.loads(two.serialize()) == {}


def test_memory_store_cache_works_as_a_plain_msal_cache(idp: LoopbackIdentityProvider) -> None:
    cache = PersistentTokenCache(MemoryStore())
    app = idp.public_app(token_cache=cache)
    app.acquire_token_by_username_password("alice@example.com", "pw", ["User.Read"])
    assert [a["username"] for a in app.get_accounts()] == ["alice@example.com"]
    app.remove_account(app.get_accounts()[0])
    assert app.get_accounts() == []
    assert "memory" in repr(cache)


_REPLACER = r"""
import sys
from msal_keyring_cache import EncryptedFileStore, PersistentTokenCache, crypto
path, key = sys.argv[1], sys.argv[2]
store = EncryptedFileStore(path, crypto.FernetKeys((key,)))
with store.lock():
    print("locked", flush=True)
    assert sys.stdin.readline() == "go\n"
    store.save(b'{"Account": {"k": {"home_account_id": "h", "environment": "e", '
               b'"realm": "r", "username": "replacer@example.com"}}}')
print("done", flush=True)
"""


def test_good_file_written_just_before_the_set_aside_stays(
    cache_path: Path, key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader finds a damaged file; before it can set it aside, another process replaces it
    with a good one. The good file must stay (issue 17). Ordered by pipes, no sleeps."""
    import subprocess

    from msal_keyring_cache.stores import file as file_store
    from tests.helpers import PYTHON, child_env

    cache_path.parent.mkdir(mode=0o700)
    cache_path.write_bytes(b"garbage that is no cache\n")
    cache_path.chmod(0o600)
    replacer = subprocess.Popen(
        [PYTHON, "-c", _REPLACER, str(cache_path), key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env(),
        text=True,
    )
    assert replacer.stdin is not None
    assert replacer.stdout is not None
    assert replacer.stdout.readline() == "locked\n"
    real_read = file_store._read_keep_open
    reads = []

    def observed(path: str) -> object:
        found = real_read(path)
        reads.append(found[0] if found else None)
        if len(reads) == 1:  # the damaged file was read: now let the replacer write
            replacer.stdin.write("go\n")  # type: ignore[union-attr]
            replacer.stdin.flush()  # type: ignore[union-attr]
        return found

    monkeypatch.setattr(file_store, "_read_keep_open", observed)
    reader = PersistentTokenCache(
        file_store.EncryptedFileStore(str(cache_path), crypto.FernetKeys((key,)))
    )
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        doc = json.loads(reader.serialize())  # blocks on the lock until the replacer is done
    assert replacer.stdout.readline() == "done\n"
    assert replacer.wait(timeout=30) == 0
    assert reads[0] == b"garbage that is no cache\n"
    assert [a["username"] for a in doc["Account"].values()] == ["replacer@example.com"]
    assert not list(cache_path.parent.glob(cache_path.name + ".corrupt-*"))
    assert "moved aside" not in caplog.text


# -- the read path: the shared counter, one lock -------------------------------------------


def test_readers_never_miss_a_write_that_returned_before_their_read(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    # Two cache objects on one file (as two processes would be): reader threads take the
    # warm path (the counter vouches, no lock, no stat) and must still see every write that
    # returned before their read began.
    writer = build_cache(APP, backend="file", path=str(cache_path), key=key)
    reader = build_cache(APP, backend="file", path=str(cache_path), key=key)
    wapp = idp.confidential_app(token_cache=writer)
    wapp.acquire_token_for_client(["api://t/0/.default"])
    assert (
        idp.confidential_app(token_cache=reader).acquire_token_for_client(["api://t/0/.default"])[
            "token_source"
        ]
        == "cache"
    )
    returned = [0]  # writes that returned, published after each one
    reads = [0]
    misses: list[tuple[int, list[int]]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            done = returned[0]
            found = {e["target"] for e in reader.search("AccessToken")}
            reads[0] += 1
            missing = [i for i in range(done + 1) if f"api://t/{i}/.default" not in found]
            if missing:
                misses.append((done, missing))
                return

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 31):
            wapp.acquire_token_for_client([f"api://t/{i}/.default"])
            returned[0] = i
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert misses == []
    assert reads[0] > 60
    # Most reads were answered by the counter: an exact check (a stat) only after a write
    # (and at most once a second otherwise), not one per read.
    assert reader.store.stats.checks < reads[0] / 2


def test_a_change_made_while_iterating_a_search_is_written_by_the_next_write(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = build_cache(APP, backend="file", path=str(cache_path), key=key)
    app = idp.public_app(token_cache=cache)
    app.acquire_token_by_username_password("alice@example.com", "pw", ["User.Read"])
    (token,) = list(cache.search("AccessToken"))
    saves = cache.store.stats.saves
    for _account in cache.search("Account"):  # msal holds its lock while this loop runs
        cache.remove_at(token)  # so this stays in memory: writing now could deadlock
    assert cache.store.stats.saves == saves
    assert list(cache.search("AccessToken")) == []
    idp.confidential_app(token_cache=cache).acquire_token_for_client(["api://t/a/.default"])
    assert cache.store.stats.saves == saves + 1  # the next write carries it
    fresh = build_cache(APP, backend="file", path=str(cache_path), key=key)
    assert [e["target"] for e in fresh.search("AccessToken")] == ["api://t/a/.default"]


def test_a_write_waits_for_a_search_being_iterated_and_nothing_deadlocks(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = build_cache(APP, backend="file", path=str(cache_path), key=key)
    app = idp.public_app(token_cache=cache)
    app.acquire_token_by_username_password("alice@example.com", "pw", ["User.Read"])
    capp = idp.confidential_app(token_cache=cache)
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            capp.acquire_token_for_client(["api://t/other/.default"])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    found = cache.search("Account")
    next(found)  # msal now holds the cache's one in-process lock for this thread
    writer = threading.Thread(target=other_thread)
    writer.start()
    writer.join(0.3)
    assert writer.is_alive()  # it waits for the lock (the only thing it can wait for)
    # This thread writes too while it holds the lock: the same lock, taken again, so it
    # neither waits for the other writer nor takes the locks in another order.
    capp.acquire_token_for_client(["api://t/mine/.default"])
    found.close()  # msal lets go of the lock
    writer.join(60)
    assert not writer.is_alive()
    assert errors == []
    fresh = build_cache(APP, backend="file", path=str(cache_path), key=key)
    targets = {e["target"] for e in fresh.search("AccessToken")}
    assert {"api://t/other/.default", "api://t/mine/.default"} <= targets
