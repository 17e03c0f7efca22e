"""Hypothesis over the web caches' parsers: any stored value, any session value, any
serialized cache handed to merge(), and the three-way merge's promise."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msal_keyring_cache import ConfigError, generate_key
from msal_keyring_cache.crypto import encrypt_record
from msal_keyring_cache.web import UserCaches, three_way_merge
from msal_keyring_cache.web.base import Backend, Record

KEY = generate_key()
EXAMPLES = settings(max_examples=1000, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


class OneValue(Backend):
    """A store holding one value under every name (what an attacker may write there)."""

    kind = "fuzz"

    def __init__(self) -> None:
        self.value: bytes = b""
        self.saved: list[bytes] = []

    def load(self, name: str) -> Record:
        return Record("1", self.value)

    def save(self, name: str, seen: str, value: bytes, ttl: int) -> bool:
        self.saved.append(value)
        return True

    def delete(self, name: str) -> bool:
        return True

    def close(self) -> None:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


@EXAMPLES
@given(st.binary(max_size=300))
def test_any_stored_bytes_are_an_empty_cache(data: bytes) -> None:
    store = OneValue()
    store.value = data
    caches = UserCaches(store, key=KEY, prefix="fuzz")
    with caches.for_user("u") as cache:
        assert cache.state() == {}
    assert caches.stats.corrupt + caches.stats.refused == 1


@EXAMPLES
@given(json_values)
def test_any_decrypted_document_is_served_only_when_it_is_this_users_cache(doc: Any) -> None:
    store = OneValue()
    caches = UserCaches(store, key=KEY, prefix="fuzz")
    store.value = encrypt_record(json.dumps(doc).encode(), KEY)[:-1]
    with caches.for_user("u") as cache:
        assert cache.state() == {}  # never this user's: no binding can match by chance
    real = {"u": caches._binding("u"), "c": doc}
    store.value = encrypt_record(json.dumps(real).encode(), KEY)[:-1]
    with caches.for_user("u") as cache:
        assert cache.state() == (doc if isinstance(doc, dict) else {})


@EXAMPLES
@given(st.one_of(st.text(max_size=40), st.binary(max_size=20), json_values))
def test_any_session_value_is_an_empty_cache_or_refused(value: Any) -> None:
    caches = UserCaches.in_sessions(key=KEY, prefix="fuzz")
    session = {"fuzz:tokens": value, "fuzz:id": "sid"}
    with caches.for_session(session) as cache:
        assert cache.state() == {}


@EXAMPLES
@given(st.text(max_size=60))
def test_merge_takes_only_a_json_object(serialized: str) -> None:
    store = OneValue()
    caches = UserCaches(store, key=KEY, prefix="fuzz")
    try:
        parsed = json.loads(serialized)
    except ValueError:
        parsed = None
    try:
        caches.merge("u", serialized)
    except ConfigError:
        assert serialized
        assert not isinstance(parsed, dict)
    else:
        assert not serialized or isinstance(parsed, dict)


tables = st.dictionaries(
    st.sampled_from(["AccessToken", "RefreshToken", "Account"]),
    st.dictionaries(st.sampled_from("abcde"), st.integers(0, 3), max_size=4),
    max_size=3,
)


@EXAMPLES
@given(tables, tables, tables)
def test_three_way_merge_applies_my_changes_on_theirs(
    base: dict[str, Any], mine: dict[str, Any], theirs: dict[str, Any]
) -> None:
    merged = three_way_merge(base, mine, theirs)
    for kind in set(base) | set(mine) | set(theirs):
        old, new, other = base.get(kind, {}), mine.get(kind, {}), theirs.get(kind, {})
        result = merged.get(kind, {})
        for key in set(old) | set(new) | set(other):
            if key in new and new[key] != old.get(key):
                assert result[key] == new[key]  # my change wins
            elif key in old and key not in new:
                assert key not in result  # my removal holds
            elif key in other:
                assert result[key] == other[key]  # the rest is theirs
            else:
                assert key not in result
