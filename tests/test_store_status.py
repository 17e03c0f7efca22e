"""What ``status`` can tell about a store without reading the cache."""

from __future__ import annotations

import json

from msal_keyring_cache import MemoryStore, PersistentTokenCache


def test_a_memory_cache_tells_whether_it_holds_anything_and_how_much() -> None:
    store = MemoryStore()
    cache = PersistentTokenCache(store)
    empty = store.describe()
    assert (empty.exists, empty.size) == (False, 0)
    cache.merge(json.dumps({"RefreshToken": {"k": {"secret": "status-secret"}}}))
    held = store.load()
    assert held is not None
    full = store.describe()
    assert (full.exists, full.size) == (True, len(held))
    cache.clear()
    cleared = store.describe()
    assert (cleared.exists, cleared.size) == (False, 0)
