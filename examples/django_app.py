"""A one-file Django app that signs users in and keeps each user's tokens encrypted, server-side.

The same routes as the Flask example (``/login``, ``/auth/callback``, ``/``, ``/logout``):
the authorization-code flow with msal, then a silent token on every request from the
user's cache. ``--store`` picks where the caches live: ``redis://…``, ``postgresql://…``,
``sqlite:///PATH``, or ``session`` (inside Django's server-side session, here the cache
session engine; any engine but ``signed_cookies`` works). The browser's cookie holds only
Django's session id.

Run it against the loopback identity provider::

    MSAL_KEYRING_CACHE_KEY=$(msal-keyring-cache generate-key) \\
    python examples/django_app.py --store sqlite:////tmp/tokens.db
    # then open http://127.0.0.1:8000/login

Set ``AUTHORITY``, ``CLIENT_ID`` and ``CLIENT_SECRET`` to use Microsoft Entra ID instead.
In a real project the views go in ``views.py`` and the settings in ``settings.py``; make
one ``UserCaches`` per process at start-up (e.g. in ``AppConfig.ready``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Optional

import msal

from msal_keyring_cache.web import UserCaches, UserTokenCache

SCOPES = ["User.Read"]
#: What the views use; create_app() fills it (one app per process in real life).
STATE: dict[str, Any] = {}


class URLCONF:
    """The URL configuration (ROOT_URLCONF may be any object with ``urlpatterns``)."""

    urlpatterns: ClassVar[list[Any]] = []


def _settings(secret_key: str) -> None:
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY=secret_key,
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        ROOT_URLCONF=URLCONF,
        INSTALLED_APPS=["django.contrib.sessions"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        # A server-side session (the cookie holds only its id). Production: "db" or a
        # shared cache (Redis, memcached) so every worker sees the same sessions.
        SESSION_ENGINE="django.contrib.sessions.backends.cache",
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    django.setup()


def _msal_app(token_cache: Optional[msal.TokenCache] = None) -> Any:
    return msal.ConfidentialClientApplication(
        STATE["client_id"],
        client_credential=STATE["client_credential"],
        authority=STATE["authority"],
        token_cache=token_cache,
        **STATE["options"],
    )


@contextmanager
def _user_cache(request: Any, user_id: str) -> Iterator[UserTokenCache]:
    caches: UserCaches = STATE["caches"]
    if caches.backend.kind == "session":
        with caches.for_session(request.session, user_id) as cache:
            yield cache
    else:
        with caches.for_user(user_id) as cache:
            yield cache


def login(request: Any) -> Any:
    from django.shortcuts import redirect

    with warnings.catch_warnings():  # msal warns unless form_post (see the Flask example)
        warnings.simplefilter("ignore", UserWarning)
        flow = _msal_app().initiate_auth_code_flow(
            STATE["scopes"],
            redirect_uri=request.build_absolute_uri("/auth/callback"),
            login_hint=request.GET.get("user"),
        )
    request.session["flow"] = flow
    authorize = STATE["authorize"]
    return redirect(authorize(flow["auth_uri"]) if authorize else flow["auth_uri"])


def callback(request: Any) -> Any:
    from django.http import HttpResponseBadRequest, JsonResponse
    from django.shortcuts import redirect

    flow = request.session.pop("flow", None)
    if flow is None:
        return HttpResponseBadRequest("No sign-in in progress; start at /login.")
    signed_in = msal.SerializableTokenCache()  # until we know who signed in
    try:
        result = _msal_app(signed_in).acquire_token_by_auth_code_flow(flow, request.GET.dict())
    except ValueError:  # msal: state mismatch or a reply to another sign-in (CSRF)
        return HttpResponseBadRequest("This sign-in reply does not match the sign-in in progress.")
    if "error" in result:
        return JsonResponse({"error": result["error"]}, status=400)
    claims = result["id_token_claims"]
    user_id = f"{claims['oid']}.{claims['tid']}"  # msal's home_account_id
    request.session.cycle_key()  # a new session id at sign-in (no session fixation)
    with _user_cache(request, user_id) as cache:
        cache.absorb(json.loads(signed_in.serialize()))
    request.session["user"] = {"id": user_id, "name": claims.get("preferred_username")}
    return redirect("/")


def index(request: Any) -> Any:
    from django.http import JsonResponse

    user = request.session.get("user")
    if not user:
        return JsonResponse({"signed_in": False, "login": "/login"})
    with _user_cache(request, user["id"]) as cache:
        client = _msal_app(cache)
        accounts = client.get_accounts()
        result = (
            client.acquire_token_silent(STATE["scopes"], account=accounts[0]) if accounts else None
        )
    if not result or "access_token" not in result:
        request.session.pop("user", None)
        return JsonResponse({"signed_in": False, "error": "Sign in again", "login": "/login"},
                            status=401)  # fmt: skip
    # A real app would call its API with result["access_token"] here.
    return JsonResponse(
        {"signed_in": True, "user": user["name"], "token_source": result.get("token_source")}
    )


def logout(request: Any) -> Any:
    from django.shortcuts import redirect

    user = request.session.get("user")
    caches: UserCaches = STATE["caches"]
    if user and caches.backend.kind != "session":
        caches.delete_user(user["id"])
    request.session.flush()  # the session, and a cache kept in it, are gone
    return redirect("/")


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
) -> Any:
    """Configure Django (once per process) and return the WSGI application."""
    _settings(secret_key)
    from django.core.wsgi import get_wsgi_application
    from django.urls import path

    STATE.update(
        caches=caches,
        client_id=client_id,
        client_credential=client_credential,
        authority=authority,
        scopes=scopes or SCOPES,
        # msal caches discovery documents here, so a new msal app per request is cheap.
        options={"http_cache": {}, **(msal_options or {})},
        authorize=authorize,
    )
    URLCONF.urlpatterns = [
        path("login", login),
        path("auth/callback", callback),
        path("", index),
        path("logout", logout),
    ]
    return get_wsgi_application()


def make_caches(store: Optional[str]) -> UserCaches:
    """The caches for ``--store``: a URL, ``session``, or (None) the environment's settings."""
    if store == "session":
        return UserCaches.in_sessions(key=os.environ["MSAL_KEYRING_CACHE_KEY"].split(","))
    return UserCaches.from_env(**({"web_url": store} if store else {}))


def _demo(store: Optional[str]) -> tuple[Any, Callable[[], None]]:
    caches = make_caches(store)
    settings: dict[str, Any]
    stop: Callable[[], None] = lambda: None  # noqa: E731
    if os.environ.get("AUTHORITY"):
        settings = {"client_id": os.environ["CLIENT_ID"],
                    "client_credential": os.environ["CLIENT_SECRET"],
                    "authority": os.environ["AUTHORITY"]}  # fmt: skip
    else:
        from msal_keyring_cache.testing import LoopbackIdentityProvider

        idp = LoopbackIdentityProvider().start()
        settings = {"client_id": "00000000-0000-0000-0000-00000000c11d",
                    "client_credential": "secret", "authority": idp.authority,
                    "msal_options": {"http_client": idp.http_client, "instance_discovery": False},
                    "authorize": idp.authorize}  # fmt: skip
        stop = idp.stop
    return create_app(caches, secret_key=secrets.token_hex(32), **settings), stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The Django example of msal-keyring-cache.")
    parser.add_argument(
        "--store",
        help="redis://…, postgresql://…, sqlite:///PATH or session "
        "(default: MSAL_KEYRING_CACHE_WEB_URL)",
    )
    application, stop = _demo(parser.parse_args().store)
    from wsgiref.simple_server import make_server

    try:
        make_server("127.0.0.1", 8000, application).serve_forever()
    finally:
        stop()
