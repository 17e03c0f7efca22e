"""What ``status`` can tell about a store without reading the cache."""

from __future__ import annotations

import json
from pathlib import Path

from msal_keyring_cache import MemoryStore, PersistentTokenCache
from msal_keyring_cache.stores.credential import KeyringStore
from tests.fakes import ScopedKeyring, WindowsLikeKeyring
from tests.test_keyring_store import memory_keyring  # noqa: F401 - the fixture, shared


def test_a_memory_cache_tells_whether_it_holds_anything_and_how_much() -> None:
    store = MemoryStore()
    cache = PersistentTokenCache(store)
    empty = store.describe()
    assert (empty.exists, empty.size) == (False, 0)
    cache.merge(
        json.dumps(
            {"RefreshToken": {"k": {"credential_type": "RefreshToken", "secret": "status-secret"}}}
        )
    )
    held = store.load()
    assert held is not None
    full = store.describe()
    assert (full.exists, full.size) == (True, len(held))
    cache.clear()
    cleared = store.describe()
    assert (cleared.exists, cleared.size) == (False, 0)


def test_a_keyring_store_describes_where_and_how_without_resolving_the_backend(
    tmp_path: Path,
    memory_keyring: type[ScopedKeyring],  # noqa: F811
) -> None:
    store = KeyringStore("svc-status", "acct", lock_path=str(tmp_path / "k.lock"))
    facts = store.describe()
    assert facts.extra["keyring_backend"] == "not resolved yet"
    assert facts.extra["direct_reads"] is False
    assert facts.extra["chunking"] == "none"
    assert ScopedKeyring.calls == {"get": 0, "set": 0, "delete": 0}  # status asked nothing
    doc = facts.as_dict()
    assert (doc["service"], doc["account"]) == ("svc-status", "acct")
    assert doc["stamp_file"] == str(tmp_path / "k.stamp")
    assert doc["lock_file"] == str(tmp_path / "k.lock")
    assert doc["protection_level"] == "credential_store"


def test_a_keyring_store_says_when_values_are_split(
    tmp_path: Path,
    memory_keyring: type[ScopedKeyring],  # noqa: F811
) -> None:
    given = KeyringStore(
        "svc", "a", lock_path=str(tmp_path / "k.lock"), keyring=ScopedKeyring(),
        max_value_length=500,
    )  # fmt: skip
    assert given.describe().extra["chunking"] == "values over 500 characters are split"
    learnt = KeyringStore(
        "svc", "a", lock_path=str(tmp_path / "k.lock"), keyring=WindowsLikeKeyring()
    )
    with learnt.lock():
        learnt.save(json.dumps({"RefreshToken": {"k": {"secret": "x" * 3000}}}).encode())
    assert learnt.describe().extra["chunking"].startswith("values over ")
    assert learnt.describe().extra["resolved_by"] == "given"
    assert learnt.describe().extra["keyring_backend"] == "tests.fakes.WindowsLikeKeyring"


def test_a_read_only_keyring_store_has_no_lock_file(
    tmp_path: Path,
    memory_keyring: type[ScopedKeyring],  # noqa: F811
) -> None:
    store = KeyringStore(
        "svc", "a", lock_path=str(tmp_path / "k.lock"), keyring=ScopedKeyring(), read_only=True
    )
    assert store.describe().lock_file is None
