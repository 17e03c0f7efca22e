"""caches.for_session(): the user's encrypted, bound cache inside a server-side session."""

from __future__ import annotations

import json
from typing import Any

import msal
import pytest

from msal_keyring_cache import ConfigError
from msal_keyring_cache.testing import LoopbackIdentityProvider
from msal_keyring_cache.web import UserCaches

AT = msal.TokenCache.CredentialType.ACCESS_TOKEN


@pytest.fixture
def caches(key: str) -> UserCaches:
    return UserCaches.in_sessions(key=key, prefix="sess")  # any use of a store: ConfigError


def _sign_in(idp: LoopbackIdentityProvider, cache: Any, user: str, scope: str) -> None:
    app = idp.confidential_app(token_cache=cache)
    assert "access_token" in app.acquire_token_by_username_password(user, "pw", scopes=[scope])


def _scopes(caches: UserCaches, session: Any, **kwargs: Any) -> set[str]:
    with caches.for_session(session, **kwargs) as cache:
        return {e["target"] for e in cache.search(AT)}


def test_the_cache_lives_encrypted_in_the_session(
    caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    session: dict[str, Any] = {}
    with caches.for_session(session) as cache:
        _sign_in(idp, cache, "sue@example.com", "api://loopback/s")
    assert set(session) == {"sess:tokens", "sess:id"}
    text = json.dumps(session)  # what a session store serializes
    for secret in idp.issued:
        assert secret not in text
    assert "sue@example.com" not in text
    assert _scopes(caches, session) == {"api://loopback/s"}
    assert caches.stats.saves == 1
    with caches.for_session(session):  # read-only: the session is not written
        pass
    assert caches.stats.saves == 1


def test_a_value_copied_into_another_session_or_user_is_refused(
    caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    alice: dict[str, Any] = {}
    with caches.for_session(alice) as cache:
        _sign_in(idp, cache, "alice@example.com", "api://loopback/a")
    mallory: dict[str, Any] = {}
    with caches.for_session(mallory):
        pass  # gets its own session id
    mallory["sess:tokens"] = alice["sess:tokens"]
    assert _scopes(caches, mallory) == set()
    assert caches.stats.refused == 1
    bound: dict[str, Any] = {}
    with caches.for_session(bound, user_id="alice-id") as cache:
        _sign_in(idp, cache, "alice@example.com", "api://loopback/bound")
    assert _scopes(caches, bound, user_id="alice-id") == {"api://loopback/bound"}
    assert _scopes(caches, bound, user_id="bob-id") == set()  # another user in that session
    assert caches.stats.refused == 2


def test_a_session_value_changed_meanwhile_is_merged(
    caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    session: dict[str, Any] = {}
    with caches.for_session(session) as first:
        _sign_in(idp, first, "max@example.com", "api://loopback/first")
        with caches.for_session(session) as second:  # e.g. a helper of the same request
            _sign_in(idp, second, "max@example.com", "api://loopback/second")
    assert _scopes(caches, session) == {"api://loopback/first", "api://loopback/second"}
    assert caches.stats.conflicts == 1


def test_a_token_acquired_in_a_block_that_raises_is_kept(
    caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    session: dict[str, Any] = {}

    def request() -> None:
        with caches.for_session(session) as cache:
            _sign_in(idp, cache, "ned@example.com", "api://loopback/kept")
            raise KeyError("later")

    with pytest.raises(KeyError):
        request()
    assert _scopes(caches, session) == {"api://loopback/kept"}


def test_a_block_that_raises_merges_only_a_session_value_changed_meanwhile(
    caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    session: dict[str, Any] = {}
    with caches.for_session(session) as cache:
        _sign_in(idp, cache, "ida@example.com", "api://loopback/before")

    def request(nested: bool) -> None:
        with caches.for_session(session) as first:
            _sign_in(idp, first, "ida@example.com", f"api://loopback/first-{nested}")
            if nested:  # e.g. a helper of the same request saves first
                with caches.for_session(session) as second:
                    _sign_in(idp, second, "ida@example.com", "api://loopback/second")
            raise KeyError("later")

    with pytest.raises(KeyError):
        request(nested=False)  # the value loaded is still there: no merge
    assert caches.stats.conflicts == 0
    with pytest.raises(KeyError):
        request(nested=True)
    assert caches.stats.conflicts == 1
    assert _scopes(caches, session) == {
        "api://loopback/before",
        "api://loopback/first-False",
        "api://loopback/first-True",
        "api://loopback/second",
    }


def test_damaged_session_values_are_an_empty_cache(caches: UserCaches) -> None:
    for value in (7, "garbage", "gAAAAA" + "x" * 100, ["list"]):
        session: dict[str, Any] = {"sess:tokens": value}
        assert _scopes(caches, session) == set()
    assert caches.stats.corrupt == 4


def test_signed_cookie_sessions_are_refused(caches: UserCaches) -> None:
    from flask.sessions import NullSession, SecureCookieSession

    for session in (SecureCookieSession(), NullSession()):
        with pytest.raises(ConfigError, match="signed-cookie"), caches.for_session(session):
            pass
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    cookie = SessionStore.__new__(SessionStore)  # the class is what matters
    with pytest.raises(ConfigError, match="travel to the browser"), caches.for_session(cookie):
        pass
    with pytest.raises(ConfigError, match="dict-like"), caches.for_session(42):  # type: ignore[arg-type]
        pass


def test_session_only_caches_refuse_store_calls(caches: UserCaches) -> None:
    with pytest.raises(ConfigError, match="in_sessions"), caches.for_user("x"):
        pass
    with pytest.raises(ConfigError, match="in_sessions"):
        caches.delete_user("x")


def test_server_side_session_classes_are_accepted(caches: UserCaches) -> None:
    from flask_session.base import ServerSideSession

    session = ServerSideSession(sid="abc")
    with caches.for_session(session) as cache:
        cache.absorb({"AppMetadata": {"k": {"client_id": "c"}}})
    assert session.modified
    assert "sess:tokens" in session
