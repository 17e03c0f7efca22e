"""The msal adapter: threads, merges, logs, and the public helpers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from msal_keyring_cache import MemoryStore, PersistentTokenCache, build_cache
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
