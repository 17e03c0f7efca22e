"""``demo``: sign in against a loopback identity provider, then a child process signs in
silently."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

from .. import crypto, manage
from ..cache import PersistentTokenCache
from ..config import Settings, describe_settings
from ..errors import CacheError
from .common import CommandError, _Context

logger = logging.getLogger("msal_keyring_cache")

# -- demo ----------------------------------------------------------------------------------------

DEMO_USER = "alice@example.com"
DEMO_SCOPES = ["User.Read"]


def _demo_settings(ctx: _Context, root: str) -> Settings:
    # Flags apply; MSAL_KEYRING_CACHE_* do not (the demo must not depend on, or touch,
    # what is configured for real caches).
    overrides = ctx.overrides()
    overrides.setdefault("app_name", f"msal-keyring-cache-demo-{secrets.token_hex(4)}")
    overrides.setdefault("path", os.path.join(root, "token_cache.bin"))
    overrides.setdefault("keyring_fallback", True)
    overrides.setdefault("keyring_timeout", "3")
    if "key_file" not in overrides:
        key_file = os.path.join(root, "cache.key")
        if not os.path.exists(key_file):
            manage.write_private(key_file, crypto.generate_key() + "\n")
        overrides["key_file"] = key_file
    return Settings.resolve(ctx.env_prefix, environ={}, **overrides)


def _settings_argv(settings: Settings) -> list[str]:
    argv = []
    for row in describe_settings():
        if not row["cli"] or row["secret"]:
            continue
        value = getattr(settings, row["name"])
        flag = "--" + row["name"].replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _demo_child(ctx: _Context) -> int:
    """The second process: silent token from the store; prints JSON, never the token."""
    import msal

    from ..testing import DEFAULT_CLIENT_ID, loopback_http_client

    started = time.perf_counter()
    settings = Settings.resolve(ctx.env_prefix, environ={}, **ctx.overrides())
    cache = _with_http_cache(ctx.cache(settings))
    app = msal.PublicClientApplication(
        DEFAULT_CLIENT_ID,
        authority="https://127.0.0.1/loopback-tenant",
        http_client=loopback_http_client(ctx.args.child_port),
        instance_discovery=False,
        token_cache=cache,
        http_cache=cache.http_cache,
    )
    built = time.perf_counter()
    accounts = app.get_accounts(username=DEMO_USER)
    result = app.acquire_token_silent(DEMO_SCOPES, account=accounts[0]) if accounts else None
    done = time.perf_counter()
    token = (result or {}).get("access_token")
    ctx.dump(
        {
            "pid": os.getpid(),
            "ok": bool(token),
            "accounts": len(accounts),
            "token_source": (result or {}).get("token_source"),
            "token_digest": _token_digest(token) if token else None,
            "app_ms": _ms(built - started),
            "silent_ms": _ms(done - built),
            "error": (result or {}).get("error"),
        }
    )
    return 0 if token else 1


def _with_http_cache(cache: PersistentTokenCache) -> PersistentTokenCache:
    # What build_cache(..., http_cache=True) does: msal's discovery answers kept beside
    # the token cache, so the second process makes no request at all.
    from ..http_cache import HttpCache

    cache.http_cache = HttpCache.beside(cache.store)
    return cache


def cmd_demo(ctx: _Context) -> int:
    if ctx.args.child_port:
        return _demo_child(ctx)
    import msal

    from ..testing import DEFAULT_CLIENT_ID, LoopbackIdentityProvider

    root = tempfile.mkdtemp(prefix="msal-keyring-cache-demo-")
    cache: Optional[PersistentTokenCache] = None
    try:
        os.chmod(root, 0o700)
        settings = _demo_settings(ctx, root)
        cache = _with_http_cache(ctx.cache(settings))
        info = cache.backend_info
        with LoopbackIdentityProvider() as idp:
            t0 = time.perf_counter()
            app = msal.PublicClientApplication(
                DEFAULT_CLIENT_ID,
                token_cache=cache,
                http_cache=cache.http_cache,
                **idp.app_kwargs(),
            )
            flow = app.initiate_device_flow(DEMO_SCOPES)
            flow["expires_at"] = time.time() + 30  # the loopback user approves at once
            result = app.acquire_token_by_device_flow(flow)
            sign_in = time.perf_counter() - t0
            if "access_token" not in result:
                raise CommandError(f"the demo sign-in failed: {result.get('error')}")
            digest = _token_digest(result["access_token"])
            parent_requests = idp.token_requests
            before = len(idp.requests)
            argv = [
                sys.executable,
                "-m",
                "msal_keyring_cache",
                *_settings_argv(settings),
                "--env-prefix",
                ctx.env_prefix,
                "demo",
                "--child-port",
                str(idp.port),
            ]
            t1 = time.perf_counter()
            proc = subprocess.run(  # noqa: S603 - our own interpreter and module
                argv,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                env=_child_env(ctx),
            )
            child_wall = time.perf_counter() - t1
            during = idp.requests[before:]
            port = idp.port
        try:
            child = json.loads(proc.stdout)
        except ValueError:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CommandError(
                f"the second process failed (exit {proc.returncode}): {last}"
            ) from None
        token_during = sum(1 for r in during if r.path.endswith("/oauth2/v2.0/token"))
        other = sorted({r.path for r in during if not r.path.endswith("/oauth2/v2.0/token")})
        described = cache.store.describe()
        ok = bool(child.get("ok")) and child.get("token_digest") == digest and not during
        report = {
            "ok": ok,
            "backend": info.backend,
            "reason": info.reason,
            "location": described.location,
            "protection": described.protection_text,
            "protection_level": described.protection.value,
            "demo_key_file": described.key_file is not None
            and os.path.dirname(described.key_file) == root,
            "identity_provider": f"127.0.0.1:{port}",
            "user": DEMO_USER,
            "sign_in_ms": _ms(sign_in),
            "sign_in_token_requests": parent_requests,
            "child": {
                "pid": child.get("pid"),
                "wall_ms": _ms(child_wall),
                "app_ms": child.get("app_ms"),
                "silent_ms": child.get("silent_ms"),
                "token_source": child.get("token_source"),
                "same_token": child.get("token_digest") == digest,
                "requests": len(during),
                "token_requests": token_during,
                "other_requests": len(during) - token_during,
                "other_paths": other,
            },
        }
        _print_demo(ctx, report)
        return 0 if ok else 1
    finally:
        if cache is not None:
            with contextlib.suppress(CacheError):
                cache.clear()  # removes a demo keyring entry too
            http_cache = cache.http_cache
            if http_cache is not None and hasattr(http_cache, "remove"):
                with contextlib.suppress(CacheError):
                    http_cache.remove()  # and the http cache's key entry, if any
            cache.close()
        shutil.rmtree(root, ignore_errors=True)


def _child_env(ctx: _Context) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ctx.env_prefix + "_")}
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def _print_demo(ctx: _Context, report: dict[str, Any]) -> None:
    if ctx.json:
        ctx.dump(report)
        return
    child = report["child"]
    p = ctx.print
    p(
        f"msal-keyring-cache demo: offline, against a loopback identity provider on "
        f"{report['identity_provider']}"
    )
    p(
        f"1. Signed in {report['user']} with msal.PublicClientApplication (device code flow) in "
        f"{report['sign_in_ms']} ms: {report['sign_in_token_requests']} token request."
    )
    logger.debug("Demo backend: %s (%s)", report["backend"], report["reason"])
    if report["backend"] == "keyring":
        p("   Token cache: the OS credential store (a secure one answered).")
    else:
        p(
            "   Token cache: the encrypted file (no secure OS credential store answered here; "
            "why: -v or msal-keyring-cache doctor)."
        )
    p(f"   Where: {report['location']}")
    if report["demo_key_file"]:
        p(
            "   Protection: a key file the demo generated beside the cache, like the default "
            "generated key: weak, it only protects against the cache file leaking alone. "
            "Make it strong with MSAL_KEYRING_CACHE_KEY (msal-keyring-cache generate-key), "
            "MSAL_KEYRING_CACHE_PASSPHRASE, or MSAL_KEYRING_CACHE_KEY_IN_KEYRING=1."
        )
    else:
        p(f"   Protection: {report['protection']}")
    p(
        f"2. A second process (pid {child['pid']}) got the token silently in "
        f"{child['silent_ms']} ms (msal app built in {child['app_ms']} ms; the process ran "
        f"{child['wall_ms']} ms including Python start-up)."
    )
    p(
        f"   Token source: {child['token_source']}; same token as the first process: "
        f"{'yes' if child['same_token'] else 'NO'}."
    )
    p(f"   Token-endpoint requests by the second process: {child['token_requests']}.")
    p(
        f"   Requests of any kind by the second process: {child['requests']} (msal's OpenID "
        "discovery answer came from the sealed http cache beside the token cache)."
    )
    if child["other_requests"]:
        p(f"   Other requests: {child['other_requests']} ({', '.join(child['other_paths'])}).")
    p("3. Removed the demo cache and its temporary directory. No token was printed.")
    if not report["ok"]:
        p("RESULT: the second process did not get the token silently from the cache.")
