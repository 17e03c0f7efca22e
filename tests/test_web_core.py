"""The web core (msal_keyring_cache.web.core) on a real SQLite file: what one app sees.

Written for mutants of web/core.py that no test killed. Two requests of one user are
interleaved deterministically by nesting their blocks (the inner one saves first), so
the compare-and-set conflict and its merge run every time, without thread timing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import generate_key
from msal_keyring_cache.config import MAX_TTL
from msal_keyring_cache.errors import ConfigError, StoreError
from msal_keyring_cache.web import UserCaches

RT = "RefreshToken"


def _entry(secret: str) -> dict[str, Any]:
    return {"credential_type": RT, "secret": secret, "home_account_id": "h", "environment": "e",
            "client_id": "c"}  # fmt: skip


def _msal_key(entry: dict[str, Any]) -> str:
    """The key msal files ``entry`` under (its modify() and remove find it there)."""
    import msal

    return str(msal.TokenCache().key_makers[RT](**entry))


def _doc(**entries: str) -> str:
    return json.dumps({RT: {name: _entry(secret) for name, secret in entries.items()}})


def _secrets(caches: UserCaches, user: str) -> dict[str, str]:
    with caches.for_user(user) as cache:
        return {k: v["secret"] for k, v in cache.state().get(RT, {}).items()}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tokens.db'}"


@pytest.fixture
def caches(url: str, key: str) -> Iterator[UserCaches]:
    made = UserCaches.from_url(url, key=key, prefix="app")
    yield made
    made.close()


# -- two requests of one user ------------------------------------------------------------------


def test_interleaved_requests_of_one_user_both_keep_their_changes(caches: UserCaches) -> None:
    caches.merge("ann", _doc(base="b0", gone="g0"))
    with caches.for_user("ann") as outer:
        with caches.for_user("ann") as inner:  # saves first
            inner.absorb({RT: {"inner": _entry("i1"), "base": _entry("b-inner")}})
        outer.absorb({RT: {"outer": _entry("o1")}})
        outer.state()[RT].pop("gone")  # removed by this request: stays removed
    assert _secrets(caches, "ann") == {"base": "b-inner", "inner": "i1", "outer": "o1"}
    assert caches.stats.conflicts == 1
    assert caches.stats.saves == 3


@pytest.mark.parametrize("attempts", [1, 3])
def test_a_user_whose_cache_keeps_changing_gives_up_after_max_attempts(
    url: str, key: str, attempts: int
) -> None:
    caches = UserCaches.from_url(url, key=key, prefix="app", max_attempts=attempts)
    rival = UserCaches.from_url(url, key=key, prefix="app")
    real = caches.backend.save
    wins: list[str] = []

    def save_after_a_rival(name: str, seen: str, value: bytes, ttl: int) -> bool:
        wins.append(f"r{len(wins)}")  # another request of the user saves just before
        rival.merge("bo", _doc(**{wins[-1]: "theirs"}))
        return real(name, seen, value, ttl)

    caches.backend.save = save_after_a_rival  # type: ignore[method-assign]
    with (
        pytest.raises(StoreError, match=f"after {attempts} attempts: other requests"),
        caches.for_user("bo") as cache,
    ):
        cache.absorb({RT: {"mine": _entry("o")}})
    assert caches.stats.conflicts == attempts
    assert caches.stats.saves == 0
    assert set(_secrets(rival, "bo")) == set(wins)  # the others' saves all kept
    caches.close()
    rival.close()


def test_a_request_that_changes_nothing_writes_nothing(caches: UserCaches) -> None:
    with caches.for_user("cy") as cache:
        assert cache.state() == {}
    assert caches.stats.saves == 0
    assert caches.key_name("cy") not in _names(caches)


def _names(caches: UserCaches) -> set[str]:
    import sqlite3

    path = caches.backend.engine.url.database  # type: ignore[attr-defined]
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM msal_keyring_cache")}


# -- names, bindings, keys ----------------------------------------------------------------------


def test_record_names_are_per_user_per_key_and_reveal_no_user_id(url: str, key: str) -> None:
    caches = UserCaches.from_url(url, key=key, prefix="app")
    name = caches.key_name("alice@example.com")
    assert name.startswith("app:u:{")
    assert name.endswith("}")
    assert len(name) == len("app:u:{}") + 32
    assert "alice" not in name
    assert caches.key_name("bob@example.com") != name
    again = UserCaches.from_url(url, key=key, prefix="app")
    assert again.key_name("alice@example.com") == name  # stable across processes
    other = UserCaches.from_url(url, key=generate_key(), prefix="app")
    assert other.key_name("alice@example.com") != name
    assert key not in repr(caches)
    assert "prefix='app'" in repr(caches)
    for made in (caches, again, other):
        made.close()


def test_a_rotated_key_moves_the_record_and_deletes_the_old_one(url: str, key: str) -> None:
    old = UserCaches.from_url(url, key=key, prefix="app")
    old.merge("di", _doc(a="1"))
    old_name = old.key_name("di")
    new_key = generate_key()
    rotated = UserCaches.from_url(url, key=[new_key, key], prefix="app")
    assert _secrets(rotated, "di") == {"a": "1"}  # read under the old name, moved on exit
    assert rotated.stats.migrated == 1
    assert _names(rotated) == {rotated.key_name("di")}
    assert rotated.key_name("di") != old_name
    assert _secrets(UserCaches.from_url(url, key=new_key, prefix="app"), "di") == {"a": "1"}
    old.close()
    rotated.close()


def test_a_value_encrypted_with_an_older_key_is_re_encrypted_on_read(url: str, key: str) -> None:
    old = UserCaches.from_url(url, key=key, prefix="app")
    old.merge("ed", _doc(a="1"))
    name = old.key_name("ed")
    value = old.backend.load(name)
    assert value is not None
    second = generate_key()
    # Keys [key, second]: the name is the same (first key), the value decrypts with key.
    swapped = UserCaches.from_url(url, key=[second, key], prefix="app")
    swapped.backend.save(swapped.key_name("ed"), "", value.value or b"", 60)
    assert _secrets(swapped, "ed") == {"a": "1"}
    assert swapped.stats.migrated == 1  # re-encrypted with the first key
    assert _secrets(UserCaches.from_url(url, key=second, prefix="app"), "ed") == {"a": "1"}
    assert _secrets(swapped, "ed") == {"a": "1"}
    assert swapped.stats.migrated == 1  # once only
    old.close()
    swapped.close()


def test_damaged_records_are_empty_caches_and_say_why(
    caches: UserCaches, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography.fernet import Fernet

    name = caches.key_name("fi")
    cases = {
        b"": "has no encrypted data",
        b"gAAAA-not-fernet": "does not decrypt with any configured key",
        Fernet(key).encrypt(b"[1, 2]"): "does not hold a token cache",
        Fernet(key).encrypt(b'{"u": "x", "c": []}'): "does not hold a token cache",
        Fernet(key).encrypt(b"{not json"): "does not hold a token cache",
    }
    for count, (value, why) in enumerate(cases.items(), 1):
        caches.backend.delete(name)
        assert caches.backend.save(name, "", value, 60)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="msal_keyring_cache.web"):
            assert _secrets(caches, "fi") == {}
        assert caches.stats.corrupt == count
        assert f"The value of {name} {why}; treating this user's cache as empty" in caplog.text
    caches.merge("fi", _doc(new="n"))  # the next save replaces it
    assert _secrets(caches, "fi") == {"new": "n"}


def test_delete_user_says_whether_anything_was_there(url: str, key: str) -> None:
    old = UserCaches.from_url(url, key=key, prefix="app")
    old.merge("gu", _doc(a="1"))
    rotated = UserCaches.from_url(url, key=[generate_key(), key], prefix="app")
    assert rotated.delete_user("gu")  # found under the old key's name
    assert not rotated.delete_user("gu")
    assert _secrets(old, "gu") == {}
    old.close()
    rotated.close()


# -- sessions ------------------------------------------------------------------------------------


def test_a_session_cache_is_bound_to_its_session_and_user(key: str) -> None:
    caches = UserCaches.in_sessions(key=key, prefix="sess")
    session: dict[str, Any] = {}
    with caches.for_session(session) as cache:
        cache.absorb({RT: {"a": _entry("1")}})
    sid = session["sess:id"]
    assert isinstance(sid, str)
    assert len(sid) == 24  # 16 random bytes
    assert isinstance(session["sess:tokens"], str)
    with caches.for_session(session) as cache:
        assert set(cache.state()[RT]) == {"a"}
    assert session["sess:id"] == sid  # kept
    session["sess:id"] = ""  # an id that is no id: a new one, and the old value refused
    with caches.for_session(session) as cache:
        assert cache.state() == {}
    assert session["sess:id"] not in ("", sid)
    assert caches.stats.refused == 1
    with caches.for_session(session, user_id="u1") as cache:
        assert cache.state() == {}  # bound to the session's id, not to u1
        cache.absorb({RT: {"b": _entry("2")}})
    assert caches.stats.refused == 2
    with caches.for_session(dict(session), user_id="u2") as cache:
        assert cache.state() == {}
    assert caches.stats.refused == 3
    with caches.for_session(session, user_id="u1") as cache:
        assert set(cache.state()[RT]) == {"b"}
    session["sess:tokens"] = 42
    with caches.for_session(session, user_id="u1") as cache:
        assert cache.state() == {}
    assert caches.stats.corrupt == 1


def test_a_session_cache_that_did_not_change_is_not_rewritten(key: str) -> None:
    caches = UserCaches.in_sessions(key=key, prefix="sess")
    session: dict[str, Any] = {}
    with caches.for_session(session, user_id="u"):
        pass
    assert "sess:tokens" not in session
    assert caches.stats.saves == 0


# -- arguments at their limits -------------------------------------------------------------------


def test_arguments_at_their_limits_are_accepted(url: str, key: str) -> None:
    for made in (
        UserCaches.from_url(url, key=key, prefix="p" * 64, ttl=MAX_TTL, timeout=600),
        UserCaches.from_url(url, key=(key,), prefix="a", ttl=1, timeout=0.001, max_attempts=1),
        UserCaches.from_url(url, key=[key], max_attempts=1000),
    ):
        made.merge("x" * 4096, _doc(a="1"))
        assert _secrets(made, "x" * 4096) == {"a": "1"}
        made.close()
    for attempts in (0, 1001, True, 1.0):
        with pytest.raises(ConfigError, match="max_attempts must be a whole number from 1 to 1000"):
            UserCaches.from_url(url, key=key, max_attempts=attempts)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at most 4096 characters"):
        UserCaches.from_url(url, key=key).key_name("x" * 4097)
    with pytest.raises(ConfigError, match=r"expected whole seconds from 1 to \d+ \(10 years\)"):
        UserCaches.from_url(url, key=key, ttl=MAX_TTL + 1)
    with pytest.raises(ConfigError, match=r"expected seconds > 0 and at most 600"):
        UserCaches.from_url(url, key=key, timeout=600.5)
    with pytest.raises(
        ConfigError, match=r"prefix 'p\{2\}' is not valid: expected 1 to 64 printable"
    ):
        UserCaches.from_url(url, key=key, prefix="p{2}")
    with pytest.raises(ConfigError, match=r"prefix given is not valid"):
        UserCaches.from_url(url, key=key, prefix="x" * 201)
    with pytest.raises(ConfigError, match=r"prefix 'x{200}' is not valid"):
        UserCaches.from_url(url, key=key, prefix="x" * 200)
    for braced in ("a{b", "a}b"):
        with pytest.raises(ConfigError, match=r"prefix 'a[{}]b' is not valid"):
            UserCaches.from_url(url, key=key, prefix=braced)
    for bad in ("nonsense-without-a-scheme", "://no-scheme"):
        with pytest.raises(ConfigError, match="The web cache URL is not valid"):
            UserCaches.from_url(bad, key=key)
    with pytest.raises(ConfigError, match="cluster=True is for Redis Cluster"):
        UserCaches.from_url(url, key=key, cluster=True)
    with pytest.raises(ConfigError, match="The web cache URL is empty"):
        UserCaches.from_url("  ", key=key)


def test_merge_refuses_what_is_not_a_cache(caches: UserCaches) -> None:
    with pytest.raises(ConfigError, match=r"expects a serialized msal token cache \(JSON text\)"):
        caches.merge("u", b"{}")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\(a JSON object\)"):
        caches.merge("u", "[1]")
    caches.merge("u", json.dumps({RT: {"a": _entry("1")}, "Other": [1]}))
    with caches.for_user("u") as cache:
        assert set(cache.state()) == {RT}  # not a table of entries: not taken


# -- construction ------------------------------------------------------------------------------


def test_every_constructor_applies_the_documented_defaults(url: str, key: str) -> None:
    import sqlalchemy

    from msal_keyring_cache.config import Settings

    defaults = Settings()
    engine = sqlalchemy.create_engine(url)
    made = [
        UserCaches.from_url(url, key=key),
        UserCaches.from_engine(engine, key=key),
        UserCaches.in_sessions(key=key),
    ]
    assert [c.prefix for c in made] == [defaults.web_prefix] * 3
    assert [c.ttl for c in made[:2]] == [defaults.web_ttl] * 2
    assert [c.max_attempts for c in made] == [50] * 3
    chosen = [
        UserCaches.from_url(url, key=key, prefix="a1", ttl=7, max_attempts=2),
        UserCaches.from_engine(engine, key=key, prefix="a2", ttl=8, max_attempts=3),
        UserCaches.in_sessions(key=key, prefix="a3", max_attempts=4),
    ]
    assert [(c.prefix, c.max_attempts) for c in chosen] == [("a1", 2), ("a2", 3), ("a3", 4)]
    assert [c.ttl for c in chosen[:2]] == [7, 8]
    with pytest.raises(AttributeError):
        _ = made[0].client  # an SQL store has no Redis client
    for caches in made + chosen:
        caches.close()
    engine.dispose()


def test_purging_counts_what_it_deleted(url: str, key: str, tmp_path: Path) -> None:
    import sqlite3

    with UserCaches.from_url(url, key=key, prefix="app") as caches:
        for user in ("old", "new"):
            caches.merge(user, _doc(a=user))
        with sqlite3.connect(tmp_path / "tokens.db") as conn:
            conn.execute(
                "UPDATE msal_keyring_cache SET expires_at = 0 WHERE name = ?",
                (caches.key_name("old"),),
            )
        assert caches.purge_expired() == 1
        assert caches.purge_expired() == 0
        assert caches.stats.purged == 1
        assert _secrets(caches, "new") == {"a": "new"}


# -- what a request changes ------------------------------------------------------------------


def test_every_kind_of_change_msal_makes_is_saved(caches: UserCaches) -> None:
    key = _msal_key(_entry("1"))
    with caches.for_user("ha") as cache:
        cache.deserialize(json.dumps({RT: {key: _entry("1")}}))  # replaces the whole cache
    assert _secrets(caches, "ha") == {key: "1"}
    with caches.for_user("ha") as cache:
        cache.modify(RT, _entry("1"), {"secret": "rotated"})  # how msal rotates a token
    assert _secrets(caches, "ha") == {key: "rotated"}
    assert caches.stats.saves == 2


def test_a_sign_out_during_a_request_does_not_fail_its_save(caches: UserCaches) -> None:
    caches.merge("io", _doc(a="1"))
    with caches.for_user("io") as cache:
        assert caches.delete_user("io")  # another request signs the user out meanwhile
        cache.absorb({RT: {"b": _entry("2")}})
    assert _secrets(caches, "io") == {"b": "2"}  # saved as a new record, no error


def test_a_session_changed_meanwhile_keeps_this_request_s_removal(key: str) -> None:
    caches = UserCaches.in_sessions(key=key, prefix="sess")
    session: dict[str, Any] = {}
    with caches.for_session(session, user_id="u") as cache:
        cache.absorb({RT: {_msal_key(_entry("1")): _entry("1")}})
    with caches.for_session(session, user_id="u") as outer:
        outer.modify(RT, _entry("1"))  # msal removes an entry in place
        with caches.for_session(session, user_id="u") as inner:
            inner.absorb({RT: {"b": _entry("2")}})
    with caches.for_session(session, user_id="u") as cache:
        assert set(cache.state()[RT]) == {"b"}  # the removal is not undone by the merge
    assert caches.stats.conflicts == 1


def test_a_session_value_that_is_not_ascii_text_is_an_empty_cache(
    key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msal_keyring_cache.web")
    caches = UserCaches.in_sessions(key=key, prefix="sess")
    for value, why in (("gAAAA-é", "does not decrypt with any configured key"),
                       (b"bytes", "is not a token cache")):  # fmt: skip
        session: dict[str, Any] = {"sess:tokens": value}
        caplog.clear()
        with caches.for_session(session, user_id="u") as cache:
            assert cache.state() == {}
        assert f"The value of session entry 'sess:tokens' {why}" in caplog.text
    assert caches.stats.corrupt == 2


def test_a_refused_session_value_is_named_in_the_log(
    key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msal_keyring_cache.web")
    caches = UserCaches.in_sessions(key=key, prefix="sess")
    session: dict[str, Any] = {}
    with caches.for_session(session, user_id="u1") as cache:
        cache.absorb({RT: {"a": _entry("1")}})
    with caches.for_session(session, user_id="u2"):
        pass
    assert "Refused the value of session entry 'sess:tokens'" in caplog.text
    others: dict[str, Any] = {}
    with caches.for_session(others, user_id="other") as cache:
        cache.absorb({RT: {"o": _entry("3")}})
    caplog.clear()
    with caches.for_session(session, user_id="u2") as cache:
        cache.absorb({RT: {"b": _entry("2")}})
        session["sess:tokens"] = others["sess:tokens"]  # meanwhile: another user's value
    assert "Refused the value of session entry 'sess:tokens'" in caplog.text


# -- the three-way merge on its own -----------------------------------------------------------


def test_three_way_merge_of_tables_and_of_other_values() -> None:
    from msal_keyring_cache.web import three_way_merge

    # A table removed by mine: base's entries go, theirs' own entries stay.
    assert three_way_merge({"T": {"a": 1}}, {}, {"T": {"a": 1, "b": 2}}) == {"T": {"b": 2}}
    # An entry removed on both sides.
    assert three_way_merge({"T": {"a": 1}}, {"T": {}}, {"T": {}}) == {"T": {}}
    # Values that are not tables: whole-value semantics.
    assert three_way_merge({"X": 1}, {"X": 2}, {"X": 1}) == {"X": 2}
    assert three_way_merge({"X": 1}, {"X": 1}, {"X": 3}) == {"X": 3}
    assert three_way_merge({"X": 1}, {}, {"X": 1, "Y": 0}) == {"Y": 0}
    assert three_way_merge({"X": 1}, {}, {}) == {}  # removed on both sides
    assert three_way_merge({"X": [1]}, {"X": {"k": 1}}, {"X": [1]}) == {"X": {"k": 1}}
    assert three_way_merge({}, {}, {"L": [1, 2]}) == {"L": [1, 2]}
    # A value that is not a table never stops the rest of the merge.
    base: dict[str, Any] = {"X": 1, **{f"T{i}": {} for i in range(30)}}
    mine: dict[str, Any] = {"X": 2, **{f"T{i}": {"k": i} for i in range(30)}}
    merged = three_way_merge(base, mine, base)
    assert merged == mine


# -- construction from settings and engines ---------------------------------------------------


def test_from_env_reads_the_key_file_and_takes_overrides(tmp_path: Path, url: str) -> None:
    key_file = tmp_path / "web.key"
    key = generate_key()
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    env = {"MSAL_KEYRING_CACHE_WEB_URL": url, "MSAL_KEYRING_CACHE_KEY_FILE": str(key_file)}
    with UserCaches.from_env(environ=env) as caches:
        caches.merge("jo", _doc(a="1"))
    with UserCaches.from_url(url, key=key) as caches:
        assert _secrets(caches, "jo") == {"a": "1"}  # the key file's key was used
    with UserCaches.from_env(environ=env, web_prefix="other") as caches:
        assert caches.prefix == "other"
    with pytest.raises(ConfigError, match="cluster=True is for Redis Cluster"):
        UserCaches.from_env(environ=env, cluster=True)


def test_from_engine_uses_the_table_it_is_given(tmp_path: Path, key: str) -> None:
    import sqlite3

    import sqlalchemy

    path = tmp_path / "app.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    with UserCaches.from_engine(engine, key=key, table="app_tokens") as caches:
        caches.merge("ka", _doc(a="1"))
    with UserCaches.from_url(f"sqlite:///{path}", key=key, table="url_tokens") as caches:
        caches.merge("ka", _doc(a="1"))
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"app_tokens", "url_tokens"} <= tables
        assert conn.execute("SELECT count(*) FROM app_tokens").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM url_tokens").fetchone() == (1,)
    engine.dispose()


def test_a_store_that_expires_by_itself_purges_nothing(redis_server: Any, key: str) -> None:
    with UserCaches.from_url(redis_server.url, key=key, prefix="purge") as caches:
        assert caches.purge_expired() == 0


def test_reading_a_damaged_or_refused_value_writes_nothing(url: str, key: str) -> None:
    caches = UserCaches.from_url(url, key=key, prefix="app")
    other = UserCaches.from_url(url, key=key, prefix="other-app")
    caches.merge("lu", _doc(a="1"))
    other.merge("lu", _doc(b="2"))
    name = caches.key_name("lu")
    foreign = other.backend.load(other.key_name("lu"))
    assert foreign is not None
    for value in (b"gAAAA-not-fernet", foreign.value or b""):  # damaged; another app's
        record = caches.backend.load(name)
        assert record is not None
        assert caches.backend.save(name, record.version, value, 60)
        saves = caches.stats.saves
        assert _secrets(caches, "lu") == {}
        assert caches.stats.saves == saves  # only the next real change replaces it
        assert caches.stats.migrated == 0
        assert (caches.backend.load(name) or record).value == value
    caches.close()
    other.close()


def test_a_redis_key_of_another_type_is_named_as_no_record(
    redis_server: Any, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msal_keyring_cache.web")
    with UserCaches.from_url(redis_server.url, key=key, prefix="shape") as caches:
        name = caches.key_name("mo")
        caches.client.set(name, b"not a hash")
        assert _secrets(caches, "mo") == {}
        assert f"The value of {name} is not a token cache record" in caplog.text
        caches.client.delete(name)


def test_a_cache_made_without_state_is_an_empty_msal_cache() -> None:
    from msal_keyring_cache.web import UserTokenCache

    cache = UserTokenCache()
    assert cache.state() == {}
    assert list(cache.search(RT)) == []
    assert cache.changed is False
    cache.absorb({RT: {"a": _entry("1")}})
    assert cache.changed is True
    assert [e["secret"] for e in cache.search(RT)] == ["1"]


def test_an_expired_record_under_an_older_key_s_name_does_not_hide_an_older_one(
    url: str, tmp_path: Path
) -> None:
    import sqlite3

    first, second, third = generate_key(), generate_key(), generate_key()
    with UserCaches.from_url(url, key=third, prefix="app") as oldest:
        oldest.merge("no", _doc(a="kept"))
    with UserCaches.from_url(url, key=second, prefix="app") as older:
        older.merge("no", _doc(b="expired"))
        expired = older.key_name("no")
    with sqlite3.connect(tmp_path / "tokens.db") as conn:
        conn.execute("UPDATE msal_keyring_cache SET expires_at = 0 WHERE name = ?", (expired,))
    with UserCaches.from_url(url, key=[first, second, third], prefix="app") as rotated:
        assert _secrets(rotated, "no") == {"a": "kept"}


def test_a_redis_py_client_is_wrapped_and_rediss_urls_are_redis(
    redis_server: Any, key: str
) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    caches = UserCaches(client, key=key, prefix="raw-client")
    caches.merge("pa", _doc(a="1"))
    assert _secrets(caches, "pa") == {"a": "1"}
    assert caches.client is client
    caches.delete_user("pa")
    client.close()
    for other in ("rediss://127.0.0.1:1/0", "unix:///nonexistent/redis.sock"):
        made = UserCaches.from_url(other, key=key, timeout=0.5)
        assert isinstance(made.client, redis.Redis)  # a Redis store, not an SQL dialect
        made.close()
