"""The Flask example: real authorization-code flow, per-request silent tokens, every store."""

from __future__ import annotations

import importlib.util
import uuid
from typing import Any, Optional

import msal
import pytest

from msal_keyring_cache.testing import DEFAULT_CLIENT_ID, LoopbackIdentityProvider
from tests.helpers import ROOT, require

STORES = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgresql", marks=pytest.mark.postgres),
    "sqlite",
    "session",
]


def _example() -> Any:
    try:
        import flask  # noqa: F401
        import flask_session  # noqa: F401
    except ImportError:
        require(False, "flask and Flask-Session are not installed (the test extra has them)")
    spec = importlib.util.spec_from_file_location("flask_app", ROOT / "examples" / "flask_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Optional[Any]:
    """The WebStore of tests/services_web.py, or None for server-side sessions."""
    if request.param == "session":
        return None
    from tests.services_web import make_web_store

    return make_web_store(request.param, request, request.getfixturevalue("tmp_path"))


@pytest.fixture
def web(store: Any, idp: LoopbackIdentityProvider, key: str, tmp_path: Any) -> Any:
    return _web(store, idp, key, tmp_path)


def _web(store: Any, idp: LoopbackIdentityProvider, key: str, tmp_path: Any, **kwargs: Any) -> Any:
    example = _example()
    prefix = "flask" + uuid.uuid4().hex[:8]
    if store is None:
        from msal_keyring_cache.web import UserCaches

        caches = UserCaches.in_sessions(key=key, prefix=prefix)
    else:
        caches = store.caches(key, prefix=prefix)
    app = example.create_app(
        caches,
        client_id=DEFAULT_CLIENT_ID,
        client_credential="secret",
        authority=idp.authority,
        secret_key="test-secret-key",
        msal_options={"http_client": idp.http_client, "instance_discovery": False},
        session_dir=str(tmp_path / "sessions"),
        **kwargs,
    )
    app.config["TESTING"] = True
    app.caches = caches
    app.store = store
    app.sessions = tmp_path / "sessions"
    return app


def _sign_in(client: Any, idp: LoopbackIdentityProvider, user: str) -> None:
    response = client.get(f"/login?user={user}")
    assert response.status_code == 302
    assert response.headers["Location"].startswith(idp.authority)
    redirect = idp.authorize(response.headers["Location"])  # the browser, consenting
    assert redirect.startswith("http://localhost/auth/callback?")
    response = client.get(redirect)
    assert response.status_code == 302


def _user_id(client: Any) -> str:
    with client.session_transaction() as session:
        return str(session["user"]["id"])


def _expire_access_tokens(web: Any, client: Any) -> None:
    user_id = _user_id(client)
    if web.store is None:
        with (
            client.session_transaction() as session,
            web.caches.for_session(session, user_id) as cache,
        ):
            for at in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                cache.remove_at(at)
        return
    with web.caches.for_user(user_id) as cache:
        for at in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(at)


def test_sign_in_then_silent_tokens_per_request(web: Any, idp: LoopbackIdentityProvider) -> None:
    client = web.test_client()
    assert client.get("/").json == {"signed_in": False, "login": "/login"}
    idp.reset()
    _sign_in(client, idp, "alice@example.com")
    codes = [r for r in idp.requests if r.grant_type == "authorization_code"]
    assert len(codes) == 1
    before = idp.token_requests
    for _ in range(3):
        body = client.get("/").json
        assert body == {"signed_in": True, "user": "alice@example.com", "token_source": "cache"}
    assert idp.token_requests == before  # served from the user's cache

    _expire_access_tokens(web, client)
    body = client.get("/").json
    assert body["token_source"] == "identity_provider"
    assert idp.requests[-1].grant_type == "refresh_token"
    assert client.get("/").json["token_source"] == "cache"  # the refreshed token was saved


def _stored(web: Any) -> bytes:
    if web.store is None:  # the server-side session files
        return b"".join(p.read_bytes() for p in web.sessions.rglob("*") if p.is_file())
    return bytes(web.store.dump())


def test_users_isolated_sign_out_and_nothing_leaks(web: Any, idp: LoopbackIdentityProvider) -> None:
    alice, bob = web.test_client(), web.test_client()
    _sign_in(alice, idp, "alice@example.com")
    _sign_in(bob, idp, "bob@example.com")
    assert alice.get("/").json["user"] == "alice@example.com"
    assert bob.get("/").json["user"] == "bob@example.com"
    stored = _stored(web)
    assert stored
    for client in (alice, bob):
        cookie = client.get_cookie("session").value
        page = client.get("/").get_data(as_text=True)
        for secret in idp.issued:
            assert secret not in cookie
            assert secret not in page
            assert secret.encode() not in stored
    assert len(alice.get_cookie("session").value) < 200  # an id, not the cache
    alice_id = _user_id(alice)
    if web.store is not None:
        assert web.caches.key_name(alice_id) in web.store.names(web.caches.prefix)
    assert alice.get("/logout").status_code == 302
    if web.store is not None:
        assert web.caches.key_name(alice_id) not in web.store.names(web.caches.prefix)
    assert alice.get("/").json["signed_in"] is False
    assert bob.get("/").json["token_source"] == "cache"


def test_callback_with_wrong_state_is_refused(web: Any, idp: LoopbackIdentityProvider) -> None:
    client = web.test_client()
    response = client.get("/login?user=mallory@example.com")
    redirect = idp.authorize(response.headers["Location"])
    forged = redirect.replace("state=", "state=x")
    assert client.get(forged).status_code == 400
    assert client.get("/auth/callback").status_code == 400  # the flow was used up


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_form_post_sign_in(
    store: Any, idp: LoopbackIdentityProvider, key: str, tmp_path: Any
) -> None:
    web = _web(store, idp, key, tmp_path, response_mode="form_post")
    client = web.test_client()
    response = client.get("/login?user=zoe@example.com", base_url="https://localhost")
    url, fields = idp.authorize_form_post(response.headers["Location"])
    assert url == "https://localhost/auth/callback"
    assert set(fields) == {"code", "state"}
    assert client.post(url, data=fields).status_code == 302
    body = client.get("/", base_url="https://localhost").json
    assert body == {"signed_in": True, "user": "zoe@example.com", "token_source": "cache"}


def test_signed_cookie_session_is_refused(key: str) -> None:
    from flask import Flask, session

    from msal_keyring_cache import ConfigError
    from msal_keyring_cache.web import UserCaches

    _example()
    app = Flask(__name__)
    app.secret_key = "k"
    caches = UserCaches.in_sessions(key=key)
    refused = pytest.raises(ConfigError, match="signed-cookie")
    with app.test_request_context("/"), refused, caches.for_session(session, "user"):
        pass
