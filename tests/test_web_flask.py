"""The Flask example: real authorization-code flow, per-request silent tokens via Redis."""

from __future__ import annotations

import importlib.util
from typing import Any

import msal
import pytest

from msal_keyring_cache.testing import DEFAULT_CLIENT_ID, LoopbackIdentityProvider
from tests.helpers import ROOT

pytestmark = pytest.mark.redis


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("flask_app", ROOT / "examples" / "flask_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def web(redis_backend: Any, idp: LoopbackIdentityProvider, key: str) -> Any:
    return _web(redis_backend, idp, key)


def _web(redis_backend: Any, idp: LoopbackIdentityProvider, key: str, **kwargs: Any) -> Any:
    pytest.importorskip("flask")
    import uuid

    caches = redis_backend.caches(key, prefix="flask" + uuid.uuid4().hex[:8])
    app = _example().create_app(
        caches,
        client_id=DEFAULT_CLIENT_ID,
        client_credential="secret",
        authority=idp.authority,
        secret_key="test-secret-key",
        msal_options={"http_client": idp.http_client, "instance_discovery": False},
        **kwargs,
    )
    app.config["TESTING"] = True
    app.caches = caches
    return app


def _sign_in(client: Any, idp: LoopbackIdentityProvider, user: str) -> None:
    response = client.get(f"/login?user={user}")
    assert response.status_code == 302
    assert response.headers["Location"].startswith(idp.authority)
    redirect = idp.authorize(response.headers["Location"])  # the browser, consenting
    assert redirect.startswith("http://localhost/auth/callback?")
    response = client.get(redirect)
    assert response.status_code == 302


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
    assert idp.token_requests == before  # served from the user's Redis cache

    user_id = _user_id(client)
    with web.caches.for_user(user_id) as cache:  # the access token expires
        for at in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(at)
    body = client.get("/").json
    assert body["token_source"] == "identity_provider"
    assert idp.requests[-1].grant_type == "refresh_token"
    assert client.get("/").json["token_source"] == "cache"  # the refreshed token was saved


def _user_id(client: Any) -> str:
    with client.session_transaction() as session:
        return str(session["user"]["id"])


def test_users_isolated_sign_out_and_nothing_leaks(
    web: Any, idp: LoopbackIdentityProvider, redis_backend: Any
) -> None:
    alice, bob = web.test_client(), web.test_client()
    _sign_in(alice, idp, "alice@example.com")
    _sign_in(bob, idp, "bob@example.com")
    assert alice.get("/").json["user"] == "alice@example.com"
    assert bob.get("/").json["user"] == "bob@example.com"
    for client in (alice, bob):
        cookie = client.get_cookie("session").value
        page = client.get("/").get_data(as_text=True)
        for secret in idp.issued:
            assert secret not in cookie
            assert secret not in page
    alice_id = _user_id(alice)
    raw = redis_backend.client()
    assert raw.exists(web.caches.key_name(alice_id)) == 1
    assert alice.get("/logout").status_code == 302
    assert raw.exists(web.caches.key_name(alice_id)) == 0
    raw.close()
    assert alice.get("/").json["signed_in"] is False
    assert bob.get("/").json["token_source"] == "cache"


def test_callback_with_wrong_state_is_refused(web: Any, idp: LoopbackIdentityProvider) -> None:
    client = web.test_client()
    response = client.get("/login?user=mallory@example.com")
    redirect = idp.authorize(response.headers["Location"])
    forged = redirect.replace("state=", "state=x")
    assert client.get(forged).status_code == 400
    assert client.get("/auth/callback").status_code == 400  # the flow was used up


def test_form_post_sign_in(redis_backend: Any, idp: LoopbackIdentityProvider, key: str) -> None:
    web = _web(redis_backend, idp, key, response_mode="form_post")
    client = web.test_client()
    response = client.get("/login?user=zoe@example.com", base_url="https://localhost")
    url, fields = idp.authorize_form_post(response.headers["Location"])
    assert url == "https://localhost/auth/callback"
    assert set(fields) == {"code", "state"}
    assert client.post(url, data=fields).status_code == 302
    body = client.get("/", base_url="https://localhost").json
    assert body == {"signed_in": True, "user": "zoe@example.com", "token_source": "cache"}
