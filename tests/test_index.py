"""The scope index (msal_keyring_cache.index): msal's search over a Table gives what msal's
own full scan gives — the same entries, in the same order, deleting the same expired
tokens — and a miss no longer looks at every token."""

from __future__ import annotations

import contextlib
import copy
import json
import pickle
import time
from pathlib import Path
from typing import Any, Optional

import msal
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msal_keyring_cache import EncryptedFileStore, MemoryStore, PersistentTokenCache, generate_key
from msal_keyring_cache.crypto import FernetKeys
from msal_keyring_cache.index import MARGIN, Table, _describe, candidates
from msal_keyring_cache.testing import LoopbackIdentityProvider

AT = "AccessToken"
NOW = 1_900_000_000
SCOPES = ["a", "b", "c", "User.Read", "https://x/.default"]


def entry(
    target: Any = "a",
    expires: Any = NOW + 3600,
    client: str = "c1",
    realm: str = "t1",
    environment: str = "login.example",
    home: Optional[str] = None,
    **extra: Any,
) -> dict[str, Any]:
    doc = {
        "credential_type": AT,
        "secret": "not-a-real-token",
        "home_account_id": home,
        "environment": environment,
        "client_id": client,
        "realm": realm,
        "target": target,
        "token_type": "Bearer",
        "cached_at": str(NOW - 10),
        "expires_on": expires if expires is None else str(expires),
        **extra,
    }
    if expires is None:
        del doc["expires_on"]
    return doc


def persistent() -> PersistentTokenCache:
    return PersistentTokenCache(MemoryStore())


def msal_search(table: dict[str, Any], *args: Any, **kwargs: Any) -> tuple[list[Any], list[Any]]:
    """msal's own search over a plain copy: (results, the table's items afterwards)."""
    plain = msal.TokenCache()
    plain._cache = {AT: copy.deepcopy(dict(table))}
    found = list(plain.search(AT, *args, **kwargs))
    return found, list(plain._cache[AT].items())


def our_search(
    cache: PersistentTokenCache, *args: Any, **kwargs: Any
) -> tuple[list[Any], list[Any]]:
    found = list(cache.search(AT, *args, **kwargs))
    return found, list(cache._cache[AT].items())


# -- msal's search, exactly -----------------------------------------------------------

targets = st.lists(st.sampled_from(SCOPES), max_size=3).map(" ".join)
expiries = st.one_of(
    st.integers(NOW - 100, NOW + 100),  # expired, expiring within the margin, or soon after
    st.just(NOW + 3600),
    st.sampled_from([None, "soon", 1.5]),  # not msal's shape: the full scan decides
)
entries = st.builds(
    entry,
    target=st.one_of(targets, st.just(None)),
    expires=expiries,
    client=st.sampled_from(["c1", "c2"]),
    realm=st.sampled_from(["t1", "t2"]),
    environment=st.sampled_from(["login.example", "Login.Example"]),
    home=st.sampled_from([None, "u1"]),
)
keys = st.sampled_from([f"k{i}" for i in range(8)])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys, entries),
        st.tuples(st.just("pop"), keys),
        st.tuples(st.just("del"), keys),
        st.tuples(st.just("setdefault"), keys, entries),
        st.tuples(st.just("update"), st.dictionaries(keys, entries, max_size=3)),
        st.tuples(st.just("ior"), st.dictionaries(keys, entries, max_size=3)),
        st.tuples(st.just("popitem")),
        st.tuples(st.just("modify"), entries),  # msal's own way in (add, update, remove)
        st.tuples(st.just("remove"), keys),
        st.tuples(st.just("clear")),
        st.tuples(st.just("search")),  # turns the table into a Table (again after clear)
    ),
    max_size=12,
)
queries = st.fixed_dictionaries(
    {},
    optional={
        "client_id": st.sampled_from(["c1", "c2"]),
        "realm": st.sampled_from(["t1", "t2"]),
        "environment": st.sampled_from(["login.example", "LOGIN.example"]),
        "home_account_id": st.sampled_from([None, "u1"]),
    },
)


def apply(cache: PersistentTokenCache, op: tuple[Any, ...]) -> None:
    table = cache._cache.setdefault(AT, {})
    name = op[0]
    if name == "set":
        table[op[1]] = op[2]
    elif name in ("pop", "remove"):
        table.pop(op[1], None)
    elif name == "del" and op[1] in table:
        del table[op[1]]
    elif name == "setdefault":
        table.setdefault(op[1], op[2])
    elif name == "update":
        table.update(op[1])
    elif name == "ior":
        table |= op[1]
    elif name == "popitem" and table:
        table.popitem()
    elif name == "modify":
        new = op[1]
        if isinstance(new["target"], str):
            cache.modify(AT, new, new)
    elif name == "clear":
        table.clear()
    elif name == "search":
        with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
            list(cache.search(AT, ["a"], {}, now=NOW))  # msal cannot read every entry


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=operations,
    target=st.lists(st.sampled_from([*SCOPES, "unknown"]), max_size=3),
    query=queries,
    when=st.sampled_from([NOW - 50, NOW, NOW + 50, NOW + 200]),
)
def test_search_gives_what_msal_full_scan_gives(
    ops: list[tuple[Any, ...]], target: list[str], query: dict[str, Any], when: int
) -> None:
    cache = persistent()
    for op in ops:
        apply(cache, op)
    table = cache._cache.setdefault(AT, {})
    try:
        expected = msal_search(table, target, query, now=when)
    except Exception as exc:  # an entry msal itself cannot read: ours must fail alike
        with pytest.raises(type(exc)):
            our_search(cache, target, query, now=when)
        return
    assert our_search(cache, target, query, now=when) == expected
    # The index followed every change: a Table built afresh from the same entries agrees.
    if isinstance(cache._cache[AT], Table):
        rebuilt = Table(cache._cache[AT])
        assert rebuilt._scopes == cache._cache[AT]._scopes
        assert rebuilt._broken == cache._cache[AT]._broken
        assert rebuilt.fresh_until() == cache._cache[AT].fresh_until()


def test_apps_find_their_tokens_through_the_index(idp: LoopbackIdentityProvider) -> None:
    idp.reset()  # the provider is shared by the session: count this test's requests only
    cache = persistent()
    app = idp.confidential_app(token_cache=cache)
    scopes = [[f"api://{i}/.default"] for i in range(20)]
    for scope in scopes:
        assert "access_token" in app.acquire_token_for_client(scope)
    assert idp.token_requests == 20
    assert type(cache._cache[AT]) is Table
    for scope in scopes:  # every one a hit, found through the index
        assert app.acquire_token_for_client(scope)["token_source"] == "cache"
    assert idp.token_requests == 20
    cache.reload()  # a plain table again: indexed anew by the next scan, not by a hit
    assert app.acquire_token_for_client(scopes[3])["token_source"] == "cache"
    assert type(cache._cache[AT]) is dict
    assert list(cache.search(AT, ["never-seen"], {})) == []
    assert type(cache._cache[AT]) is Table
    assert idp.token_requests == 20


# -- a miss scans nothing ----------------------------------------------------------------


@pytest.fixture
def matching_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = msal.TokenCache._is_matching

    def counted(*args: Any, **kwargs: Any) -> bool:
        calls[0] += 1
        return bool(original(*args, **kwargs))

    monkeypatch.setattr(msal.TokenCache, "_is_matching", staticmethod(counted))
    return calls


def big_cache(count: int) -> PersistentTokenCache:
    cache = persistent()
    future = int(time.time()) + 3600
    cache._cache[AT] = {f"k{i}": entry(f"scope{i} common", future) for i in range(count)}
    return cache


def test_a_miss_does_not_look_at_every_token(matching_calls: list[int]) -> None:
    cache = big_cache(1000)
    query = {"client_id": "c1", "environment": "login.example", "realm": "t1"}
    assert list(cache.search(AT, ["scope-never-seen"], query)) == []
    assert matching_calls[0] == 0
    found = list(cache.search(AT, ["scope7"], query))
    assert [e["target"] for e in found] == ["scope7 common"]
    assert matching_calls[0] == 1  # the one candidate
    # A scope every token names: each is a candidate, as in msal's scan.
    assert len(list(cache.search(AT, ["common"], query))) == 1000
    assert matching_calls[0] == 1001


def test_a_hit_neither_builds_nor_reads_the_index(matching_calls: list[int]) -> None:
    cache = big_cache(1000)
    hit = entry("common scope7", int(time.time()) + 3600, home="u1")
    cache._cache[AT][cache.key_makers[AT](**hit)] = hit  # under msal's own key
    query = {"home_account_id": "u1", "environment": "login.example", "client_id": "c1"}
    query["realm"] = "t1"
    assert next(cache.search(AT, ["scope7", "common"], query)) == hit  # as msal reads it
    assert matching_calls[0] == 1  # msal's check of the entry it found by key
    assert type(cache._cache[AT]) is dict  # no scan: no index built


def test_the_warm_path_of_a_shared_file_cache_is_indexed_too(
    tmp_path: Path, matching_calls: list[int]
) -> None:
    # A file cache has a shared change counter: once it vouched, search() skips the check
    # and runs msal's search at once (the warm path) — over the index as well.
    store = EncryptedFileStore(str(tmp_path / "c.bin"), FernetKeys((generate_key(),)))
    cache = PersistentTokenCache(store)
    future = int(time.time()) + 3600
    rt = {"credential_type": "RefreshToken", "secret": "rt", "client_id": "c1", "target": "scope7"}
    made = [entry(f"scope{i}", future) for i in range(50)]
    tokens = {cache.key_makers[AT](**e): e for e in made}  # msal's own keys: it deletes by them
    cache.merge(json.dumps({AT: tokens, "RefreshToken": {"r": rt}}))
    query = {"client_id": "c1", "environment": "login.example", "realm": "t1"}
    assert list(cache.search(AT, ["scope-never-seen"], query)) == []  # checks, then vouches
    gen = cache._generation
    assert gen.view[0] == gen.seen  # the counter vouches: the next search is the warm one
    matching_calls[0] = 0
    assert list(cache.search(AT, ["scope-never-seen"], query)) == []
    assert matching_calls[0] == 0
    found = list(cache.search(AT, ["scope7"], query, now=future - 100))
    assert [e["target"] for e in found] == ["scope7"]
    assert list(cache.search("RefreshToken", ["scope7"], {})) == [rt]  # msal's own search
    assert list(cache.search(AT, ["scope7"], query, now=future + 1)) == []  # msal's now:
    assert cache._cache[AT] == {}  # every token has expired then, and msal deleted them all
    cache.close()


def test_the_warm_path_filters_by_scope_when_the_index_cannot_vouch(tmp_path: Path) -> None:
    # A token about to expire makes the index step aside (msal's full scan, which may
    # delete it): on the warm path too, msal's own filter by scope must then apply.
    store = EncryptedFileStore(str(tmp_path / "c.bin"), FernetKeys((generate_key(),)))
    cache = PersistentTokenCache(store)
    future = int(time.time()) + 3600
    made = [entry(f"scope{i}", future) for i in range(5)]
    made.append(entry("other", int(time.time()) + MARGIN - 1))
    cache.merge(json.dumps({AT: {cache.key_makers[AT](**e): e for e in made}}))
    query = {"client_id": "c1", "environment": "login.example", "realm": "t1"}
    assert list(cache.search(AT, ["scope-never-seen"], query)) == []  # checks, then vouches
    gen = cache._generation
    assert gen.view[0] == gen.seen  # the next search is the warm one
    assert [e["target"] for e in cache.search(AT, ["scope3"], query)] == ["scope3"]
    cache.close()


def test_a_search_made_while_the_cache_is_held_is_indexed_and_exact(
    matching_calls: list[int],
) -> None:
    # msal iterating a search, or a write transaction, holds the cache's lock: a search
    # made then takes no catch-up, and is still msal's search over the index.
    cache = big_cache(100)
    query = {"client_id": "c1", "environment": "login.example", "realm": "t1"}
    with cache._lock:
        found = list(cache.search(AT, ["scope7"], query))
    assert [e["target"] for e in found] == ["scope7 common"]
    assert matching_calls[0] == 1
    cache._cache[AT]["soon"] = entry("other", int(time.time()) + 1)  # no index: a full scan
    with cache._lock:
        found = list(cache.search(AT, ["scope7"], query))
    assert [e["target"] for e in found] == ["scope7 common"]  # msal's own filter by scope


def test_the_index_is_built_once_then_kept_and_a_search_adds_no_table() -> None:
    cache = big_cache(100)
    query = {"client_id": "c1", "environment": "login.example", "realm": "t1"}
    assert [e["target"] for e in cache.search(AT, ["scope7"], query)] == ["scope7 common"]
    table = cache._cache[AT]
    assert type(table) is Table
    assert [e["target"] for e in cache.search(AT, ["scope8"], query)] == ["scope8 common"]
    assert cache._cache[AT] is table  # kept current, not built again (O(n)) per search
    empty = persistent()
    assert list(empty.search(AT, ["scope7"], query)) == []
    assert json.loads(empty.serialize()) == {}  # a search wrote nothing into the cache


def test_msal_scans_everything_without_the_index(matching_calls: list[int]) -> None:
    plain = msal.TokenCache()
    plain._cache = big_cache(1000)._cache
    list(plain.search(AT, ["scope-never-seen"], {"client_id": "c1"}))
    assert matching_calls[0] == 1000  # what the index saves


def test_a_token_about_to_expire_gets_the_full_scan(matching_calls: list[int]) -> None:
    cache = big_cache(10)
    soon = int(time.time()) + MARGIN - 1
    cache._cache[AT]["soon"] = entry("other", soon)
    list(cache.search(AT, ["scope-never-seen"], {}))
    assert matching_calls[0] == 11  # everything, as msal: it may delete the expiring one
    expired = entry("other", int(time.time()) - 1)
    key = cache.key_makers[AT](**expired)  # the key msal deletes it by
    cache._cache[AT][key] = expired
    list(cache.search(AT, ["scope-never-seen"], {}))
    assert key not in cache._cache[AT]  # msal deleted it, as its own scan does
    del cache._cache[AT]["soon"]
    matching_calls[0] = 0
    list(cache.search(AT, ["scope-never-seen"], {}))
    assert matching_calls[0] == 0  # the soonest expiry was recomputed: indexed again


def test_other_credential_types_and_empty_targets_are_msal_scans(
    matching_calls: list[int],
) -> None:
    cache = big_cache(5)
    list(cache.search(AT, [], {}))
    list(cache.search(AT, None, {}))
    assert matching_calls[0] == 10
    rt = {"credential_type": "RefreshToken", "secret": "rt", "client_id": "c1", "target": "a"}
    cache._cache["RefreshToken"] = {"r": rt}
    list(cache.search(AT, ["scope1"], {}))  # the access tokens are an indexed table now
    assert list(cache.search("RefreshToken", ["a"], {})) == [rt]  # found by msal's own search
    assert list(cache.search("RefreshToken", None, {"client_id": "c1"})) == [rt]


# -- the Table itself ---------------------------------------------------------------------


def test_table_is_a_dict_in_every_way_that_reads() -> None:
    table = Table({"k1": entry("a b"), "k2": entry("b")})
    assert table == {"k1": entry("a b"), "k2": entry("b")}
    assert isinstance(table, dict)
    assert type(copy.copy(table)) is dict
    assert copy.copy(table) == table
    assert type(copy.deepcopy(table)) is dict
    assert copy.deepcopy(table) == table
    assert type(pickle.loads(pickle.dumps(table))) is dict  # noqa: S301 - our own bytes
    assert table.having(["b"]) == ["k1", "k2"]
    assert table.having(["a", "b"]) == ["k1"]  # the rarer scope's entries
    assert table.having([]) == []
    assert table.having(["z"]) == []


def test_table_changes_keep_the_index_and_the_order() -> None:
    table = Table()
    table["k1"] = entry("a", NOW + 10)
    table["k2"] = entry("a", NOW + 5)
    table["k3"] = entry("a b", NOW + 20)
    assert table.fresh_until() == NOW + 5
    table["k1"] = entry("a c", NOW + 30)  # replaced in place: keeps its position
    assert table.having(["a"]) == ["k1", "k2", "k3"] == list(table)
    del table["k2"]
    assert table.fresh_until() == NOW + 20  # the soonest left: recomputed
    table["k2"] = entry("a")  # back at the end, as in a dict
    assert table.having(["a"]) == ["k1", "k3", "k2"] == list(table)
    assert table.popitem()[0] == "k2"
    assert table.pop("k3")["target"] == "a b"
    assert table.pop("missing", "default") == "default"
    with pytest.raises(KeyError) as missing:
        table.pop("missing")
    assert missing.value.args == ("missing",)  # as a dict says it
    assert table.setdefault("k1", entry("z")) is table["k1"]
    added = entry("z")
    assert table.setdefault("k9", added) is added
    assert table["k9"] is added
    assert table.having(["z"]) == ["k9"]
    del table["k9"]
    table.update({"k4": entry("d")}, k5=entry("d"))
    table |= {"k6": entry("d")}
    assert table.having(["d"]) == ["k4", "k5", "k6"]
    assert table.having(["c"]) == ["k1"]
    table.clear()
    assert table == {}
    assert table.having(["a"]) == []
    assert table.fresh_until() is None
    with pytest.raises(KeyError):
        table.popitem()


def test_replacing_the_soonest_entry_keeps_the_others_expiry() -> None:
    # Found by the property test: two entries share the soonest expiry; replacing one of
    # them with a later expiry must leave the other's as the soonest (not the new one's),
    # or the index would vouch for a table holding a token about to expire.
    table = Table({"k0": entry("a", NOW + 10), "k2": entry("b", NOW + 10)})
    table["k0"] = entry("a", NOW + 100)
    assert table.fresh_until() == NOW + 10
    assert candidates(table, ["a"], NOW + 10 - MARGIN + 1) is None
    del table["k2"]
    assert table.fresh_until() == NOW + 100


def test_an_entry_changed_in_place_cannot_unbalance_the_index() -> None:
    table = Table({"k1": entry("a")})
    table["k1"]["target"] = "b"  # by hand, not through the table
    del table["k1"]  # removed as it was indexed
    assert table._scopes == {}
    assert table.fresh_until() is None


@pytest.mark.parametrize(
    "bad",
    [
        entry(None),
        entry(["a"]),
        entry("a", expires=None),
        entry("a", expires="never"),
        {**entry("a"), "expires_on": ["1"]},  # int() raises TypeError
        {**entry("a"), "expires_on": float("inf")},  # int() raises OverflowError
        "not an entry",
    ],
)
def test_entries_the_index_cannot_read_mean_full_scans(bad: Any) -> None:
    table = Table({"k1": entry("a"), "bad": bad})
    assert candidates(table, ["a"], NOW) is None
    del table["bad"]
    assert candidates(table, ["a"], NOW) == {"k1": table["k1"]}


def test_candidates_refuses_what_it_cannot_vouch_for() -> None:
    table = Table({"k1": entry("a", NOW + 3600)})
    assert candidates({"k1": entry("a")}, ["a"], NOW) is None  # a plain dict
    assert candidates(table, [], NOW) is None
    assert candidates(table, None, NOW) is None
    assert candidates(table, [1], NOW) is None
    assert candidates(table, ["a"], NOW + 3600 - MARGIN + 1) is None  # expiring soon
    assert candidates(table, ["a"], NOW + 3600 - MARGIN) == {"k1": table["k1"]}
    assert candidates(Table(), ["a"], NOW) == {}


def test_what_the_index_reads_of_an_entry() -> None:
    untargeted = {k: v for k, v in entry("a", NOW + 60).items() if k != "target"}
    assert _describe(untargeted) == (frozenset(), NOW + 60)  # msal reads it as no scope
    assert _describe(entry("b a b", NOW)) == (frozenset({"a", "b"}), NOW)
    table = Table({"k1": untargeted})
    assert table._scopes == {}
    assert candidates(table, ["a"], NOW) == {}
    assert table.setdefault("k2") is None  # a dict's default
    assert table["k2"] is None
