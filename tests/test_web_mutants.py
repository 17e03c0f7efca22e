"""The web core where `nox -s mutants` found no test: a session value damaged during a
request, caches holding values that are not tables of entries, and entries absorbed from a
caller's own tables."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from msal_keyring_cache import generate_key
from msal_keyring_cache.web import UserCaches, three_way_merge

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
