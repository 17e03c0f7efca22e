"""The Django example: the real authorization-code flow, silent tokens per request."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from typing import Any

import msal
import pytest

from msal_keyring_cache.testing import DEFAULT_CLIENT_ID, LoopbackIdentityProvider
from msal_keyring_cache.web import UserCaches
from tests.helpers import ROOT, require

STORES = [pytest.param("redis", marks=pytest.mark.redis), "sqlite", "session"]


def _example() -> Any:
    try:
        import django  # noqa: F401
    except ImportError:
        require(False, "Django is not installed (the test extra has it)")
    if "django_app" not in sys.modules:  # one Django configuration per process
        path = ROOT / "examples" / "django_app.py"
        spec = importlib.util.spec_from_file_location("django_app", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["django_app"] = module
        spec.loader.exec_module(module)
    return sys.modules["django_app"]


@pytest.fixture(params=STORES)
def web(request: pytest.FixtureRequest, idp: LoopbackIdentityProvider, key: str) -> Any:
    example = _example()
    prefix = "django" + uuid.uuid4().hex[:8]
    store = None
    if request.param == "session":
        caches = UserCaches.in_sessions(key=key, prefix=prefix)
    else:
        from tests.services_web import make_web_store

        store = make_web_store(request.param, request, request.getfixturevalue("tmp_path"))
        caches = store.caches(key, prefix=prefix)
    example.create_app(
        caches,
        client_id=DEFAULT_CLIENT_ID,
        client_credential="secret",
        authority=idp.authority,
        secret_key="test-secret-key-" + "x" * 40,
        msal_options={"http_client": idp.http_client, "instance_discovery": False},
    )
    return {"caches": caches, "store": store}


def _client() -> Any:
    from django.test import Client

    return Client()


def _sign_in(client: Any, idp: LoopbackIdentityProvider, user: str) -> None:
    response = client.get(f"/login?user={user}")
    assert response.status_code == 302
    assert response["Location"].startswith(idp.authority)
    redirect = idp.authorize(response["Location"])  # the browser, consenting
    assert redirect.startswith("http://testserver/auth/callback?")
    assert client.get(redirect).status_code == 302


def test_sign_in_then_silent_tokens_per_request(web: Any, idp: LoopbackIdentityProvider) -> None:
    client = _client()
    assert client.get("/").json() == {"signed_in": False, "login": "/login"}
    idp.reset()
    _sign_in(client, idp, "alice@example.com")
    assert len([r for r in idp.requests if r.grant_type == "authorization_code"]) == 1
    before = idp.token_requests
    for _ in range(3):
        body = client.get("/").json()
        assert body == {"signed_in": True, "user": "alice@example.com", "token_source": "cache"}
    assert idp.token_requests == before  # served from the user's cache
    # The access token expires: remove it from wherever the cache lives.
    user_id = client.session["user"]["id"]
    caches = web["caches"]
    if web["store"] is None:
        session = client.session
        with caches.for_session(session, user_id) as cache:
            for at in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                cache.remove_at(at)
        session.save()
    else:
        with caches.for_user(user_id) as cache:
            for at in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                cache.remove_at(at)
    body = client.get("/").json()
    assert body["token_source"] == "identity_provider"
    assert idp.requests[-1].grant_type == "refresh_token"
    assert client.get("/").json()["token_source"] == "cache"  # the refreshed token was saved


def test_users_isolated_sign_out_and_nothing_in_the_cookie(
    web: Any, idp: LoopbackIdentityProvider
) -> None:
    alice, bob = _client(), _client()
    _sign_in(alice, idp, "alice@example.com")
    _sign_in(bob, idp, "bob@example.com")
    assert alice.get("/").json()["user"] == "alice@example.com"
    assert bob.get("/").json()["user"] == "bob@example.com"
    for client in (alice, bob):
        cookie = client.cookies["sessionid"].value
        assert len(cookie) < 100  # Django's session id, not the cache
        page = client.get("/").content.decode()
        for secret in idp.issued:
            assert secret not in cookie
            assert secret not in page
    alice_id = alice.session["user"]["id"]
    store, caches = web["store"], web["caches"]
    if store is not None:
        assert caches.key_name(alice_id) in store.names(caches.prefix)
    assert alice.get("/logout").status_code == 302
    if store is not None:
        assert caches.key_name(alice_id) not in store.names(caches.prefix)
    assert alice.get("/").json()["signed_in"] is False
    assert bob.get("/").json()["token_source"] == "cache"


def test_callback_with_wrong_state_is_refused(web: Any, idp: LoopbackIdentityProvider) -> None:
    client = _client()
    response = client.get("/login?user=mallory@example.com")
    redirect = idp.authorize(response["Location"])
    assert client.get(redirect.replace("state=", "state=x")).status_code == 400
    assert client.get("/auth/callback").status_code == 400  # the flow was used up


def test_django_signed_cookie_sessions_are_refused(web: Any, key: str) -> None:
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    from msal_keyring_cache import ConfigError

    caches = UserCaches.in_sessions(key=key)
    with pytest.raises(ConfigError, match="signed-cookie"), caches.for_session(SessionStore(), "u"):
        pass
