"""The web core where `nox -s mutants` found no test: a session value damaged during a
request, caches holding values that are not tables of entries, and entries absorbed from a
caller's own tables."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import generate_key
from msal_keyring_cache.crypto import encrypt_record
from msal_keyring_cache.errors import ConfigError, StoreError
from msal_keyring_cache.web import UserCaches, UserTokenCache, three_way_merge

KEY = generate_key()


@pytest.fixture
def caches() -> UserCaches:
    return UserCaches.in_sessions(key=KEY, prefix="app")


def _at(secret: str) -> dict[str, Any]:
    return {"credential_type": "AccessToken", "secret": secret, "expires_on": "4102444800"}


def test_a_session_value_damaged_during_the_request_is_named_and_replaced(
    caches: UserCaches, caplog: pytest.LogCaptureFixture
) -> None:
    session: dict[str, Any] = {}
    with caches.for_session(session, user_id="alice") as cache:
        cache.absorb({"AccessToken": {"a": _at("one")}})
    caplog.set_level(logging.WARNING, "msal_keyring_cache.web")
    with caches.for_session(session, user_id="alice") as cache:
        cache.absorb({"AccessToken": {"b": _at("two")}})
        session["app:tokens"] = 12345  # another part of the app wrote junk there
    assert "session entry 'app:tokens'" in caplog.text  # which value, not just "a value"
    assert caches.stats.conflicts == 1
    with caches.for_session(session, user_id="alice") as cache:
        kept = json.loads(cache.serialize())
    # The junk is replaced by this request's own change on top of an empty cache (the
    # old entry went with the value the junk overwrote).
    assert set(kept["AccessToken"]) == {"b"}


def test_a_cache_with_values_that_are_not_tables_round_trips_through_a_session(
    caches: UserCaches,
) -> None:
    # msal's deserialize() takes any JSON object: a cache written by another tool may carry
    # a plain value, or a table whose entries are not objects. Loading it must not fail.
    odd = {"AccessToken": {"a": _at("one")}, "Version": 2, "Notes": {"k": "text", "n": 5}}
    session: dict[str, Any] = {}
    with caches.for_session(session, user_id="alice") as cache:
        cache.deserialize(json.dumps(odd))
    for _ in range(2):  # loaded, changed, saved; then loaded again
        with caches.for_session(session, user_id="alice") as cache:
            state = json.loads(cache.serialize())
            cache.absorb({"AccessToken": {"b": _at("two")}})
    assert state["Version"] == 2
    assert state["Notes"] == {"k": "text", "n": 5}
    assert set(state["AccessToken"]) == {"a", "b"}


def test_absorbed_entries_are_copies_of_the_callers_tables(caches: UserCaches) -> None:
    incoming = {"AccessToken": {"a": _at("original")}}
    session: dict[str, Any] = {}
    with caches.for_session(session, user_id="alice") as cache:
        cache.absorb(incoming)
        incoming["AccessToken"]["a"]["secret"] = "changed by the caller afterwards"
    with caches.for_session(session, user_id="alice") as cache:
        saved = json.loads(cache.serialize())
    assert saved["AccessToken"]["a"]["secret"] == "original"


def test_a_merge_applies_every_table_whatever_order_the_kinds_come_in() -> None:
    # A value that is not a table (msal writes none, other tools may) sits beside the
    # tables: the merge must still apply this request's change to every table. The
    # order of the kinds in a set varies with the string hash: many rounds with other
    # names cover both orders.
    for i in range(64):
        plain, table = f"version-{i}", f"AccessToken-{i}"
        base = {plain: 1, table: {"old": {"secret": "old"}}}
        mine = {plain: 1, table: {"old": {"secret": "old"}, "new": {"secret": "new"}}}
        theirs = {plain: 1, table: {"old": {"secret": "old"}, "theirs": {"secret": "t"}}}
        merged = three_way_merge(base, mine, theirs)
        assert set(merged[table]) == {"old", "new", "theirs"}, (plain, table)
        assert merged[plain] == 1


# -- on a real SQLite file -------------------------------------------------------------------


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tokens.db'}"


def _rows(caches: UserCaches) -> dict[str, tuple[Any, Any]]:
    """Every row as the database holds it: name -> (version, value)."""
    path = caches.backend.engine.url.database  # type: ignore[attr-defined]
    with sqlite3.connect(path) as conn:
        return {n: (ver, val) for n, ver, val in conn.execute(
            "SELECT name, version, value FROM msal_keyring_cache")}  # fmt: skip


def _tokens(caches: UserCaches, user: str) -> set[str]:
    with caches.for_user(user) as cache:
        return set(cache.state().get("AccessToken", {}))


def test_a_removal_racing_a_key_rotation_stays_removed(url: str) -> None:
    # Two requests of one user both load the value under the old key's name. One removes
    # an entry and saves (moving the value to the new key's name); the other adds one.
    # Its merge must start from what it loaded, or the removed entry comes back.
    old, new = generate_key(), generate_key()
    with UserCaches.from_url(url, key=old, prefix="app") as before:
        before.merge("ann", json.dumps({"AccessToken": {"x": _at("x"), "y": _at("y")}}))
    with UserCaches.from_url(url, key=[new, old], prefix="app") as caches:
        with caches.for_user("ann") as adding:
            with caches.for_user("ann") as removing:  # saves first
                removing.deserialize(json.dumps({"AccessToken": {"x": _at("x")}}))
            adding.absorb({"AccessToken": {"z": _at("z")}})
        assert caches.stats.conflicts == 1
        assert _tokens(caches, "ann") == {"x", "z"}
        assert set(_rows(caches)) == {caches.key_name("ann")}  # the old name is gone


def test_a_damaged_value_met_in_a_conflict_is_named_and_replaced(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "msal_keyring_cache.web")
    with UserCaches.from_url(url, key=KEY, prefix="app") as caches:
        name = caches.key_name("bo")
        with caches.for_user("bo") as cache:
            cache.absorb({"AccessToken": {"b": _at("b")}})
            assert caches.backend.save(name, "", b"bm90IGEgdG9rZW4=", 60)  # junk lands first
        assert f"The value of {name} does not decrypt" in caplog.text
        assert caches.stats.conflicts == 1
        assert _tokens(caches, "bo") == {"b"}


@pytest.mark.parametrize("value", ["empty", "not a cache"])
def test_a_read_only_request_leaves_an_unusable_value_alone(url: str, value: str) -> None:
    # An unusable value is an empty cache; a request that changes nothing writes nothing,
    # so the value (and its version) stay as they were until a real change replaces them.
    with UserCaches.from_url(url, key=KEY, prefix="app") as caches:
        name = caches.key_name("cy")
        junk = b"" if value == "empty" else encrypt_record(b'{"u": "x", "c": 5}', KEY)[:-1]
        assert caches.backend.save(name, "", junk, 60)
        before = _rows(caches)
        with caches.for_user("cy") as cache:
            assert cache.state() == {}
        assert _rows(caches) == before
        assert caches.stats.saves == 0
        assert caches.stats.corrupt == 1


def test_a_save_that_keeps_losing_gives_up_within_its_bounded_back_off(url: str) -> None:
    # Every attempt loses to another request: 50 attempts, each waiting at most 50 ms of
    # jitter, then StoreError. Bounded: well under a second per attempt.
    caches = UserCaches.from_url(url, key=KEY, prefix="app")
    rival = UserCaches.from_url(url, key=KEY, prefix="app")
    real = caches.backend.save
    count = {"n": 0}

    def save_after_a_rival(name: str, seen: str, value: bytes, ttl: int) -> bool:
        count["n"] += 1
        rival.merge("dee", json.dumps({"AccessToken": {f"r{count['n']}": _at("r")}}))
        return real(name, seen, value, ttl)

    caches.backend.save = save_after_a_rival  # type: ignore[method-assign]
    started = time.monotonic()
    with pytest.raises(StoreError, match="after 50 attempts"), caches.for_user("dee") as cache:
        cache.absorb({"AccessToken": {"mine": _at("m")}})
    # 50 × 50 ms of sleep at most, plus 100 SQLite writes; slack for a loaded machine.
    assert time.monotonic() - started < 50 * 0.05 + 8
    assert count["n"] == 50
    caches.close()
    rival.close()


def test_a_redis_url_whose_password_holds_the_scheme_separator_is_still_redis() -> None:
    # The scheme is what comes before the first "://": a password may contain one too.
    with pytest.raises(ConfigError, match="table= is for SQL databases, not Redis"):
        UserCaches.from_url("redis://:pa://ss@127.0.0.1:1/0", key=KEY, table="tokens")


def test_a_plain_redis_named_as_several_nodes_is_refused(redis_server: Any) -> None:
    # (Not "cluster" in the name: the mutation run deselects -k cluster, the six-node tests.)
    with pytest.raises(StoreError, match="Redis Cluster"):
        UserCaches.from_url(redis_server.url, key=KEY, cluster=True, timeout=2)


def test_add_keeps_the_time_the_caller_gives() -> None:
    # msal's add(event, now=…) dates the tokens it stores; the per-request cache passes it on.
    cache = UserTokenCache()
    cache.add(
        {
            "client_id": "c",
            "scope": ["s"],
            "token_endpoint": "https://login.example.com/t/oauth2/v2.0/token",
            "response": {"access_token": "at", "expires_in": 3600, "token_type": "Bearer"},
            "params": {},
            "data": {},
        },
        now=1000,
    )
    [entry] = cache.state()["AccessToken"].values()
    assert (entry["cached_at"], entry["expires_on"]) == ("1000", "4600")
    assert cache.changed


def test_record_names_keep_their_scheme_across_releases() -> None:
    # A name is where a user's record is found: if the scheme changed, every stored cache
    # would be lost on upgrade. Pinned for one key, prefix and user.
    caches = UserCaches.in_sessions(key="A" * 43 + "=", prefix="app")
    assert caches.key_name("alice@example.com") == "app:u:{5a4c56519c60f6bd8e58a91787a71ee0}"


@pytest.mark.parametrize("bad", [42, [], ["not a key"], [KEY, 5], "short"])
def test_keys_that_are_not_fernet_keys_are_refused_with_what_to_do(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"one or more Fernet keys .* generate-key"):
        UserCaches.in_sessions(key=bad)
