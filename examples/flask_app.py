"""A Flask web app that signs users in and keeps each user's tokens encrypted, server-side.

* ``/login`` starts the authorization-code flow (PKCE, state and nonce by msal).
* ``/auth/callback`` redeems the code, learns who signed in and stores the tokens in
  that user's cache (:meth:`UserCaches.merge`).
* ``/`` gets a token silently on every request through ``caches.for_user(...)``: from
  the cache while it is valid, else by refresh token (the cache is then saved).
* ``/logout`` deletes the user's cache (:meth:`UserCaches.delete_user`).

``--store`` picks where the caches live: ``redis://…``, ``postgresql://…``,
``sqlite:///PATH`` (one cache per user in that store), or ``session`` (each user's cache
inside a server-side Flask-Session session, through ``caches.for_session(...)``).
Run it against the loopback identity provider::

    MSAL_KEYRING_CACHE_KEY=$(msal-keyring-cache generate-key) \\
    python examples/flask_app.py --store sqlite:////tmp/tokens.db
    # then open http://127.0.0.1:5000/login

Set ``AUTHORITY``, ``CLIENT_ID`` and ``CLIENT_SECRET`` to use Microsoft Entra ID instead.
The browser session holds only the user's id and name (and, during sign-in, msal's
flow state); tokens never leave the server.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

import msal
from flask import Flask, abort, jsonify, redirect, request, session, url_for

from msal_keyring_cache.web import UserCaches, UserTokenCache

SCOPES = ["User.Read"]


def create_app(
    caches: UserCaches,
    *,
    client_id: str,
    client_credential: str,
    authority: str,
    secret_key: str,
    scopes: Optional[list[str]] = None,
    msal_options: Optional[dict[str, Any]] = None,
    authorize: Optional[Callable[[str], str]] = None,
    response_mode: str = "query",
    session_dir: Optional[str] = None,
) -> Flask:
    """The app. ``msal_options`` go to every ``ConfidentialClientApplication``.

    ``response_mode="form_post"`` (RFC 9700's advice: the code is not in a URL) makes
    the provider POST to the callback from its own site, so the session cookie must be
    ``SameSite=None; Secure`` (HTTPS): the app sets that. ``query`` works with the
    default ``SameSite=Lax`` cookie.

    ``authorize`` (demo only) follows the authorization URL on the server and returns
    the redirect, for the loopback identity provider a browser cannot reach.
    """
    scopes = scopes or SCOPES
    app = Flask(__name__)
    app.secret_key = secret_key
    in_session = caches.backend.kind == "session"
    if in_session:  # server-side sessions: the browser gets only a session id
        from cachelib.file import FileSystemCache
        from flask_session import Session

        folder = session_dir or tempfile.mkdtemp(prefix="flask-sessions-")
        app.config.update(SESSION_TYPE="cachelib", SESSION_CACHELIB=FileSystemCache(folder))
        Session(app)

    @contextmanager
    def user_cache(user_id: str) -> Iterator[UserTokenCache]:
        if in_session:
            with caches.for_session(session, user_id) as cache:
                yield cache
        else:
            with caches.for_user(user_id) as cache:
                yield cache

    if response_mode == "form_post":
        app.config.update(SESSION_COOKIE_SAMESITE="None", SESSION_COOKIE_SECURE=True)
    # msal caches discovery documents here, so a new msal app per request is cheap.
    options: dict[str, Any] = {"http_cache": {}, **(msal_options or {})}

    def msal_app(token_cache: Optional[msal.TokenCache] = None) -> Any:
        return msal.ConfidentialClientApplication(
            client_id,
            client_credential=client_credential,
            authority=authority,
            token_cache=token_cache,
            **options,
        )

    @app.get("/login")
    def login() -> Any:
        with warnings.catch_warnings():  # msal warns unless form_post: see response_mode
            warnings.simplefilter("ignore", UserWarning)
            flow = msal_app().initiate_auth_code_flow(
                scopes,
                redirect_uri=url_for("callback", _external=True),
                login_hint=request.args.get("user"),
                response_mode=response_mode,
            )
        session["flow"] = flow
        return redirect(authorize(flow["auth_uri"]) if authorize else flow["auth_uri"])

    @app.route("/auth/callback", methods=["GET", "POST"])
    def callback() -> Any:
        flow = session.pop("flow", None)
        if flow is None:
            abort(400, "No sign-in in progress; start at /login.")
        signed_in = msal.SerializableTokenCache()  # until we know who signed in
        reply = request.form if request.method == "POST" else request.args
        try:
            result = msal_app(signed_in).acquire_token_by_auth_code_flow(flow, reply.to_dict())
        except ValueError:  # msal: state mismatch or a reply to another sign-in (CSRF)
            abort(400, "This sign-in reply does not match the sign-in in progress.")
        if "error" in result:
            return jsonify(error=result["error"]), 400
        claims = result["id_token_claims"]
        user_id = f"{claims['oid']}.{claims['tid']}"  # msal's home_account_id
        if in_session:
            with caches.for_session(session, user_id) as cache:
                cache.absorb(json.loads(signed_in.serialize()))
        else:
            caches.merge(user_id, signed_in.serialize())
        session["user"] = {"id": user_id, "name": claims.get("preferred_username")}
        return redirect(url_for("index"))

    @app.get("/")
    def index() -> Any:
        user = session.get("user")
        if not user:
            return jsonify(signed_in=False, login=url_for("login"))
        with user_cache(user["id"]) as cache:
            client = msal_app(cache)
            accounts = client.get_accounts()
            result = client.acquire_token_silent(scopes, account=accounts[0]) if accounts else None
        if not result or "access_token" not in result:
            session.pop("user", None)
            return jsonify(signed_in=False, error="Sign in again", login=url_for("login")), 401
        # A real app would call its API with result["access_token"] here.
        return jsonify(signed_in=True, user=user["name"], token_source=result.get("token_source"))

    @app.get("/logout")
    def logout() -> Any:
        user = session.pop("user", None)
        if in_session:
            session.clear()  # the cache goes with the session
        elif user:
            caches.delete_user(user["id"])
        return redirect(url_for("index"))

    return app


def make_caches(store: Optional[str]) -> UserCaches:
    """The caches for ``--store``: a URL, ``session``, or (None) the environment's settings."""
    if store == "session":
        return UserCaches.in_sessions(key=os.environ["MSAL_KEYRING_CACHE_KEY"].split(","))
    return UserCaches.from_env(**({"web_url": store} if store else {}))


def _demo(store: Optional[str]) -> tuple[UserCaches, dict[str, Any], Callable[[], None]]:
    """Settings from the environment; the loopback identity provider when none is set."""
    caches = make_caches(store)
    if os.environ.get("AUTHORITY"):
        return caches, {
            "client_id": os.environ["CLIENT_ID"],
            "client_credential": os.environ["CLIENT_SECRET"],
            "authority": os.environ["AUTHORITY"],
        }, lambda: None  # fmt: skip
    from msal_keyring_cache.testing import LoopbackIdentityProvider

    idp = LoopbackIdentityProvider().start()
    return caches, {
        "client_id": "00000000-0000-0000-0000-00000000c11d",
        "client_credential": "secret",
        "authority": idp.authority,
        "msal_options": {"http_client": idp.http_client, "instance_discovery": False},
        "authorize": idp.authorize,
    }, idp.stop  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The Flask example of msal-keyring-cache.")
    parser.add_argument(
        "--store",
        help="redis://…, postgresql://…, sqlite:///PATH or session "
        "(default: MSAL_KEYRING_CACHE_WEB_URL)",
    )
    caches, settings, stop = _demo(parser.parse_args().store)
    try:
        create_app(caches, secret_key=secrets.token_hex(32), **settings).run("127.0.0.1", 5000)
    finally:
        stop()
