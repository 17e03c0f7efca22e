"""A loopback identity provider for testing MSAL applications offline.

It speaks enough of the Microsoft identity platform for real ``msal`` applications:
OpenID discovery, user-realm discovery, and a token endpoint for client credentials,
username/password, refresh token, device code and authorization code (with an
``/authorize`` endpoint that consents at once and echoes the nonce). Tokens have
realistic sizes; id_tokens are unsigned (msal only decodes them).

msal insists on ``https`` authorities, so the provider's :attr:`authority` is
``https://127.0.0.1/<tenant>`` and :attr:`http_client` is a ``requests.Session``
that carries those requests to the local plain-HTTP server::

    from msal_keyring_cache.testing import LoopbackIdentityProvider

    with LoopbackIdentityProvider() as idp:
        app = idp.public_app(token_cache=cache)
        result = app.acquire_token_by_username_password("alice@example.com", "pw", ["User.Read"])
        assert idp.token_requests == 1

With pytest, the ``loopback_idp`` fixture (registered by this package) gives a
started provider with its log cleared.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter

__all__ = ["LoopbackIdentityProvider", "RecordedRequest", "loopback_http_client"]

DEFAULT_CLIENT_ID = "00000000-0000-0000-0000-00000000c11d"
_RESERVED_SCOPES = {"openid", "profile", "offline_access"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the provider served. Holds no secret (no token, password or code)."""

    method: str
    path: str
    status: int
    grant_type: Optional[str] = None
    client_id: Optional[str] = None
    scope: Optional[str] = None
    username: Optional[str] = None


@dataclass
class _Failure:
    status: int
    error: str
    count: int
    retry_after: Optional[int] = None


@dataclass
class _Grant:
    username: Optional[str]
    client_id: str
    scope: str
    nonce: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _LoopbackAdapter(HTTPAdapter):
    """Sends ``https://127.0.0.1/...`` to ``http://127.0.0.1:<port>/...``."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        request.url = (request.url or "").replace(
            "https://127.0.0.1/", f"http://127.0.0.1:{self.port}/", 1
        )
        return super().send(request, *args, **kwargs)


def loopback_http_client(port: int) -> requests.Session:
    """A ``requests.Session`` for msal's ``http_client=`` that reaches a provider on ``port``.

    Use it in another process than the provider's (pass the port along).
    """
    session = requests.Session()
    session.trust_env = False  # no proxy between us and loopback
    session.mount("https://127.0.0.1/", _LoopbackAdapter(port))
    return session


class _Server(ThreadingHTTPServer):
    # The default accept backlog (5) drops connections when 100+ processes start at once.
    request_queue_size = 1024


class LoopbackIdentityProvider:
    """An OAuth2/OpenID Connect provider on a random loopback port.

    :param tenant: the tenant path segment of :attr:`authority`.
    :param access_token_lifetime: ``expires_in`` of access tokens, in seconds.
    :param refresh_in: if set, access tokens carry ``refresh_in`` (msal refreshes early).
    :param access_token_size: characters per access token (~1.5 KB like Entra's).
    :param refresh_token_size: characters per refresh token (~1 KB).
    :param password: if set, the only password username/password sign-ins accept.
    """

    def __init__(
        self,
        *,
        tenant: str = "loopback-tenant",
        access_token_lifetime: int = 3600,
        refresh_in: Optional[int] = None,
        access_token_size: int = 1500,
        refresh_token_size: int = 1000,
        password: Optional[str] = None,
    ) -> None:
        self.tenant = tenant
        self.tenant_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "loopback-tenant:" + tenant))
        self.access_token_lifetime = access_token_lifetime
        self.refresh_in = refresh_in
        self.access_token_size = access_token_size
        self.refresh_token_size = refresh_token_size
        self.password = password
        #: Every request served, in order (no secrets).
        self.requests: list[RecordedRequest] = []
        #: Every token value issued (access, refresh and id tokens): to check for leaks.
        self.issued: list[str] = []
        self._lock = threading.Lock()
        self._refresh_tokens: dict[str, _Grant] = {}
        self._codes: dict[str, _Grant] = {}
        self._device_codes: dict[str, _Grant] = {}
        self._failures: list[_Failure] = []
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> LoopbackIdentityProvider:
        """Start serving on ``127.0.0.1`` and a free port (idempotent)."""
        if self._server is None:
            self._server = _Server(("127.0.0.1", 0), self._handler_class())
            self._server.daemon_threads = True
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="loopback-idp", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LoopbackIdentityProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The local port (the provider must be started)."""
        if self._server is None:
            raise RuntimeError("the loopback identity provider is not started")
        return int(self._server.server_address[1])

    @property
    def authority(self) -> str:
        """The authority to give msal: ``https://127.0.0.1/<tenant>``."""
        return f"https://127.0.0.1/{self.tenant}"

    @property
    def http_client(self) -> requests.Session:
        """A new ``requests.Session`` that reaches this provider (msal's ``http_client=``)."""
        return loopback_http_client(self.port)

    # -- msal helpers ----------------------------------------------------------------

    def app_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that point an msal application at this provider."""
        return {
            "authority": self.authority,
            "http_client": self.http_client,
            "instance_discovery": False,
        }

    def public_app(self, client_id: str = DEFAULT_CLIENT_ID, **kwargs: Any) -> Any:
        """An ``msal.PublicClientApplication`` using this provider."""
        import msal

        return msal.PublicClientApplication(client_id, **{**self.app_kwargs(), **kwargs})

    def confidential_app(
        self, client_id: str = DEFAULT_CLIENT_ID, client_credential: str = "secret", **kwargs: Any
    ) -> Any:
        """An ``msal.ConfidentialClientApplication`` using this provider."""
        import msal

        return msal.ConfidentialClientApplication(
            client_id, client_credential=client_credential, **{**self.app_kwargs(), **kwargs}
        )

    # -- observation and fault injection --------------------------------------------

    @property
    def token_requests(self) -> int:
        """How many requests reached the token endpoint."""
        return sum(1 for r in self.requests if r.path.endswith("/oauth2/v2.0/token"))

    def reset(self) -> None:
        """Forget the request log and pending failures (issued tokens stay valid)."""
        with self._lock:
            self.requests.clear()
            self._failures.clear()

    def fail_next(self, error: str = "invalid_grant", *, status: int = 400, count: int = 1) -> None:
        """Make the next ``count`` token requests fail with an OAuth2 ``error``."""
        with self._lock:
            self._failures.append(_Failure(status, error, count))

    def throttle_next(self, *, retry_after: int = 1, count: int = 1) -> None:
        """Make the next ``count`` token requests answer 429 with ``Retry-After``."""
        with self._lock:
            self._failures.append(_Failure(429, "temporarily_unavailable", count, retry_after))

    def authorize(self, auth_uri: str) -> str:
        """Follow an authorization URL as a consenting user; return the redirect URL.

        For ``app.initiate_auth_code_flow()``: pass ``flow["auth_uri"]``, then give the
        query of the returned URL to ``acquire_token_by_auth_code_flow``.
        """
        response = self.http_client.get(auth_uri, allow_redirects=False, timeout=10)
        if response.status_code != 302:
            raise RuntimeError(f"authorize answered {response.status_code}: {response.text}")
        return str(response.headers["Location"])

    def authorize_form_post(self, auth_uri: str) -> tuple[str, dict[str, str]]:
        """Like :meth:`authorize` for ``response_mode="form_post"``: the consenting user's
        browser would POST these fields to this URL; return ``(url, fields)``."""
        import html
        import re

        response = self.http_client.get(auth_uri, allow_redirects=False, timeout=10)
        action = re.search(r'<form method="post" action="([^"]*)"', response.text)
        if response.status_code != 200 or action is None:
            raise RuntimeError(f"authorize answered {response.status_code}: {response.text}")
        fields = re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)"', response.text)
        return html.unescape(action[1]), {html.unescape(k): html.unescape(v) for k, v in fields}

    # -- token minting ---------------------------------------------------------------

    def _user(self, username: str) -> dict[str, str]:
        oid = str(uuid.uuid5(uuid.NAMESPACE_URL, "loopback-user:" + username.lower()))
        return {"oid": oid, "username": username}

    def _id_token(self, username: str, client_id: str, nonce: Optional[str]) -> str:
        user, now = self._user(username), int(time.time())
        claims = {
            "iss": f"https://127.0.0.1/{self.tenant_id}/v2.0",
            "aud": client_id,
            "sub": user["oid"],
            "oid": user["oid"],
            "tid": self.tenant_id,
            "preferred_username": username,
            "name": username.split("@")[0].title(),
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }
        if nonce:
            claims["nonce"] = nonce
        head = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{head}.{_b64(json.dumps(claims).encode())}."

    def _secret(self, size: int, prefix: str) -> str:
        value = (prefix + secrets.token_urlsafe(size))[:size]
        self.issued.append(value)
        return value

    def _tokens(self, grant: _Grant, *, with_refresh: bool) -> dict[str, Any]:
        scope = " ".join(s for s in grant.scope.split() if s not in _RESERVED_SCOPES)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": self._secret(self.access_token_size, "at."),
        }
        if self.refresh_in is not None:
            body["refresh_in"] = self.refresh_in
        if grant.username is not None:
            user = self._user(grant.username)
            info = {"uid": user["oid"], "utid": self.tenant_id}
            body["client_info"] = _b64(json.dumps(info).encode())
            body["id_token"] = self._id_token(grant.username, grant.client_id, grant.nonce)
            self.issued.append(body["id_token"])
            if with_refresh:
                rt = self._secret(self.refresh_token_size, "rt.")
                self._refresh_tokens[rt] = _Grant(grant.username, grant.client_id, grant.scope)
                body["refresh_token"] = rt
        return body

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        grant_type = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        scope = form.get("scope", "")
        with self._lock:
            if self._failures:
                failure = self._failures[0]
                failure.count -= 1
                if failure.count <= 0:
                    self._failures.pop(0)
                headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after else {}
                return (
                    failure.status,
                    {"error": failure.error, "error_description": "injected by the test"},
                    headers,
                )
            if grant_type == "client_credentials":
                return 200, self._tokens(_Grant(None, client_id, scope), with_refresh=False), {}
            if grant_type == "password":
                username = form.get("username", "")
                if not username or (
                    self.password is not None and form.get("password") != self.password
                ):
                    return 400, {"error": "invalid_grant", "error_description": "bad pw"}, {}
                return 200, self._tokens(_Grant(username, client_id, scope), with_refresh=True), {}
            if grant_type == "refresh_token":
                old = self._refresh_tokens.pop(form.get("refresh_token", ""), None)
                if old is None:
                    return 400, {"error": "invalid_grant", "error_description": "unknown RT"}, {}
                grant = _Grant(old.username, client_id, scope or old.scope)
                return 200, self._tokens(grant, with_refresh=True), {}
            if grant_type == "authorization_code":
                code_grant = self._codes.pop(form.get("code", ""), None)
                if code_grant is None:
                    return 400, {"error": "invalid_grant", "error_description": "bad code"}, {}
                return 200, self._tokens(code_grant, with_refresh=True), {}
            if grant_type == "urn:ietf:params:oauth:grant-type:device_code":
                device = self._device_codes.pop(form.get("device_code", ""), None)
                if device is None:
                    return 400, {"error": "expired_token", "error_description": "unknown"}, {}
                return 200, self._tokens(device, with_refresh=True), {}
        return 400, {"error": "unsupported_grant_type", "error_description": grant_type}, {}

    # -- HTTP --------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Without it, a kept-alive connection stalls ~40 ms per request (Nagle and
            # delayed ACK), which would hide the cache's own cost in tests and benchmarks.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep test output clean; the request log is idp.requests

            def _reply(
                self,
                status: int,
                body: Any,
                headers: Optional[dict[str, str]] = None,
                record: Optional[dict[str, Any]] = None,
            ) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                # Logged before replying: once the client has its answer, a test may
                # read idp.requests at once and must find the request there.
                path = urlsplit(self.path).path
                with idp._lock:
                    idp.requests.append(
                        RecordedRequest(self.command, path, status, **(record or {}))
                    )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")
                base = "https://127.0.0.1/" + idp.tenant
                if url.path.endswith("/v2.0/.well-known/openid-configuration"):
                    self._reply(
                        200,
                        {
                            "issuer": f"https://127.0.0.1/{idp.tenant_id}/v2.0",
                            "authorization_endpoint": base + "/oauth2/v2.0/authorize",
                            "token_endpoint": base + "/oauth2/v2.0/token",
                            "device_authorization_endpoint": base + "/oauth2/v2.0/devicecode",
                            "end_session_endpoint": base + "/oauth2/v2.0/logout",
                            "response_types_supported": ["code", "id_token"],
                            "scopes_supported": ["openid", "profile", "offline_access"],
                        },
                    )
                elif len(parts) >= 3 and parts[0] == "common" and parts[1] == "userrealm":
                    self._reply(
                        200,
                        {
                            "ver": "1.0",
                            "account_type": "Managed",
                            "domain_name": parts[2].split("@")[-1],
                        },
                    )
                elif url.path.endswith("/oauth2/v2.0/authorize"):
                    self._authorize(query)
                else:
                    self._reply(404, {"error": "not_found"})

            def _authorize(self, query: dict[str, str]) -> None:
                redirect_uri = query.get("redirect_uri", "")
                username = query.get("login_hint") or "alice@example.com"
                code = secrets.token_urlsafe(24)
                with idp._lock:
                    idp._codes[code] = _Grant(
                        username,
                        query.get("client_id", ""),
                        query.get("scope", ""),
                        query.get("nonce"),
                    )
                params = {"code": code, "state": query.get("state", "")}
                form_post = query.get("response_mode") == "form_post"
                with idp._lock:  # logged before replying, as in _reply
                    idp.requests.append(
                        RecordedRequest(
                            "GET",
                            urlsplit(self.path).path,
                            200 if form_post else 302,
                            client_id=query.get("client_id"),
                        )
                    )
                if form_post:  # an auto-submitting form
                    import html

                    inputs = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
                                     for k, v in params.items())  # fmt: skip
                    page = (f'<html><body onload="document.forms[0].submit()"><form '
                            f'method="post" action="{html.escape(redirect_uri)}">{inputs}'
                            "</form></body></html>").encode()  # fmt: skip
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                self.send_response(302)
                self.send_header("Location", redirect_uri + "?" + urlencode(params))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                path = urlsplit(self.path).path
                record = {
                    "grant_type": form.get("grant_type"),
                    "client_id": form.get("client_id"),
                    "scope": form.get("scope"),
                    "username": form.get("username"),
                }
                if path.endswith("/oauth2/v2.0/token"):
                    status, body, headers = idp._token(form)
                    self._reply(status, body, headers, record)
                elif path.endswith("/oauth2/v2.0/devicecode"):
                    device_code = secrets.token_urlsafe(24)
                    with idp._lock:  # the user "approves" at once
                        idp._device_codes[device_code] = _Grant(
                            form.get("login_hint") or "alice@example.com",
                            form.get("client_id", ""),
                            form.get("scope", ""),
                        )
                    self._reply(
                        200,
                        {
                            "device_code": device_code,
                            "user_code": "LOOPBACK",
                            "verification_uri": "https://127.0.0.1/devicelogin",
                            "expires_in": 900,
                            "interval": 1,
                            "message": "Loopback provider: already approved.",
                        },
                        record=record,
                    )
                else:
                    self._reply(404, {"error": "not_found"}, record=record)

        return Handler
