"""One benchmark process: ``python bench/worker.py MODE VARIANT DIR PORT [ARGS…]``.

Run by bench/run.py, never by hand. Each variant is set up the way its own docs say:

* ``msal-memory``   plain msal, in-memory ``SerializableTokenCache`` (no persistence);
* ``msal-json``     plain msal, JSON file loaded at start and saved at exit if changed
                    (the msal docs recipe);
* ``msalx-file``    msal-extensions ``PersistedTokenCache`` + ``FilePersistence``;
* ``msalx-libsecret`` msal-extensions ``LibsecretPersistence`` (needs PyGObject);
* ``ours-key`` / ``ours-pass`` / ``ours-keyring`` / ``ours-envelope``: this project,
  encrypted file with a Fernet key / a passphrase, the Secret Service, envelope mode.

Imports are made per variant on purpose: the cold-start rows time whole processes, so a
variant must not pay for another's libraries. Secrets (keys, passphrases) arrive in the
environment and are never printed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT_ID = "00000000-0000-0000-0000-00000000c11d"
TENANT = "loopback-tenant"
AUTHORITY = f"https://127.0.0.1/{TENANT}"
USER = "alice@example.com"
SCOPES = ["api://bench/User.Read"]


def http_client(port: int) -> Any:
    """``testing.loopback_http_client`` loaded from its file, so the plain-msal rows do not
    import (and pay for) the msal_keyring_cache package."""
    import importlib.util

    name = "_bench_loopback"
    if name not in sys.modules:
        path = os.path.join(ROOT, "msal_keyring_cache", "testing", "idp.py")
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].loopback_http_client(port)


class Variant:
    """A token cache of one variant plus a write counter and an end-of-process hook."""

    def __init__(self, cache: Any, writes: Callable[[], int], finish: Callable[[], None]) -> None:
        self.cache = cache
        self.writes = writes
        self.finish = finish


def open_variant(name: str, directory: str) -> Variant:
    if name == "msal-memory":
        import msal

        return Variant(msal.SerializableTokenCache(), lambda: 0, lambda: None)
    if name == "msal-json":
        return _json_recipe(os.path.join(directory, "cache.json"))
    if name.startswith("msalx-"):
        return _msal_extensions(name, directory)
    if name.startswith("ours-"):
        return _ours(name, directory)
    raise SystemExit(f"unknown variant {name}")


def _json_recipe(path: str) -> Variant:
    import atexit

    import msal

    cache = msal.SerializableTokenCache()
    if os.path.exists(path):
        with open(path) as fh:
            cache.deserialize(fh.read())
    count = [0]

    def save() -> None:
        if cache.has_state_changed:
            with open(path, "w") as fh:
                fh.write(cache.serialize())
            count[0] += 1

    atexit.register(save)
    return Variant(cache, lambda: count[0], save)


def _msal_extensions(name: str, directory: str) -> Variant:
    import msal_extensions

    location = os.path.join(directory, "cache.json")
    if name == "msalx-file":
        base: Any = msal_extensions.FilePersistence
        args: tuple[Any, ...] = (location,)
    else:
        base = msal_extensions.LibsecretPersistence
        label = os.path.basename(directory)
        args = (location, "msal.bench." + label, {"bench": label})

    class Counting(base):  # type: ignore[misc]
        saves = 0

        def save(self, content: str) -> None:
            type(self).saves += 1
            super().save(content)

    persistence = Counting(*args)
    cache = msal_extensions.PersistedTokenCache(persistence)
    return Variant(cache, lambda: Counting.saves, lambda: None)


def _ours(name: str, directory: str) -> Variant:
    import msal_keyring_cache

    path = os.path.join(directory, "cache.bin")
    service = "bench-" + os.path.basename(directory)
    options: dict[str, Any] = {"path": path}
    if name == "ours-key":
        options.update(backend="file", key=os.environ["BENCH_KEY"])
    elif name == "ours-pass":
        options.update(backend="file", passphrase=os.environ["BENCH_PASSPHRASE"])
    elif name == "ours-keyring":
        options.update(backend="keyring", keyring_service=service)
    elif name == "ours-envelope":
        options.update(backend="file", key_in_keyring=True, keyring_service=service)
    cache = msal_keyring_cache.build_cache("msal-keyring-cache-bench", **options)
    return Variant(cache, lambda: int(cache.store.stats.saves), cache.close)


def public_app(variant: Variant, port: int) -> Any:
    import msal

    return msal.PublicClientApplication(
        CLIENT_ID,
        authority=AUTHORITY,
        http_client=http_client(port),
        instance_discovery=False,
        token_cache=variant.cache,
    )


def confidential_app(variant: Variant, port: int) -> Any:
    import msal

    return msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential="secret",
        authority=AUTHORITY,
        http_client=http_client(port),
        instance_discovery=False,
        token_cache=variant.cache,
    )


def sign_in(app: Any) -> None:
    result = app.acquire_token_by_username_password(USER, "pw", SCOPES)
    if "access_token" not in result:
        raise SystemExit(f"sign-in failed: {result.get('error')}")


def silent(app: Any, account: Any) -> None:
    result = app.acquire_token_silent(SCOPES, account)
    if not result or result.get("token_source") != "cache":
        raise SystemExit("silent hit missed the cache")


# -- modes ---------------------------------------------------------------------------


def mode_setup(variant: Variant, port: int) -> dict[str, Any]:
    sign_in(public_app(variant, port))
    variant.finish()
    return {"ok": True}


def mode_cold(variant: Variant, port: int) -> dict[str, Any]:
    app = public_app(variant, port)
    accounts = app.get_accounts()
    if not accounts:
        raise SystemExit("no account in the cache")
    silent(app, accounts[0])
    return {}


def mode_warm(variant: Variant, port: int, calls: int) -> dict[str, Any]:
    app = public_app(variant, port)
    sign_in(app)
    account = app.get_accounts()[0]
    for _ in range(50):
        silent(app, account)
    batch = max(calls // 9, 1)
    means = []
    for _ in range(9):
        start = time.perf_counter()
        for _ in range(batch):
            silent(app, account)
        means.append((time.perf_counter() - start) / batch * 1e6)
    means.sort()
    return {"us": means[len(means) // 2], "us_min": means[0]}


def mode_counts(variant: Variant, port: int, other_dir: str, name: str) -> dict[str, Any]:
    app = public_app(variant, port)
    counts: dict[str, Any] = {}
    before = variant.writes()
    sign_in(app)
    variant.finish()  # the JSON recipe saves once per command
    counts["sign_in"] = variant.writes() - before
    account = app.get_accounts()[0]

    before = variant.writes()
    result = app.acquire_token_silent(SCOPES, account, force_refresh=True)
    assert result
    assert "access_token" in result
    variant.finish()
    counts["refresh"] = variant.writes() - before

    before = variant.writes()
    silent(app, account)
    variant.finish()
    counts["silent_hit"] = variant.writes() - before

    other = open_variant(name, other_dir)
    capp = confidential_app(other, port)
    capp.acquire_token_for_client(["api://bench/warmup/.default"])
    other.finish()
    before = other.writes()
    result = capp.acquire_token_for_client(["api://bench/miss/.default"])
    assert result.get("token_source") == "identity_provider"
    other.finish()
    counts["cc_miss"] = other.writes() - before
    return counts


def mode_contend(variant: Variant, port: int, index: int, count: int, name: str) -> dict[str, Any]:
    app = confidential_app(variant, port)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()  # the start signal: every process begins together
    errors = 0
    start = time.perf_counter()
    for i in range(count):
        try:
            result = app.acquire_token_for_client([f"api://bench/p{index}/s{i}/.default"])
            errors += "access_token" not in result
        except Exception as exc:  # the benchmark counts failures; it does not stop on them
            errors += 1
            sys.stderr.write(f"{type(exc).__name__}\n")
    variant.finish()
    out: dict[str, Any] = {"errors": errors, "seconds": time.perf_counter() - start}
    if name == "msal-memory":  # no shared cache: count what this process holds
        out["own_tokens"] = len(variant.cache._cache.get("AccessToken", {}))
    return out


def mode_tally(variant: Variant) -> dict[str, Any]:
    """How many access tokens the shared cache holds now (after a contention run)."""
    cache = variant.cache
    entries = list(cache.search("AccessToken"))
    return {"tokens": sum(1 for e in entries if e.get("target", "").startswith("api://bench/p"))}


def mode_seed(variant: Variant, seed_file: str) -> dict[str, Any]:
    with open(seed_file) as fh:
        state = fh.read()
    cache = variant.cache
    if hasattr(cache, "store"):  # ours: one transaction, one write
        cache.deserialize(state)
    elif hasattr(cache, "_persistence"):  # msal-extensions: save the persistence directly
        cache._persistence.save(state)
    else:  # the JSON recipe
        cache.deserialize(state)
        cache.has_state_changed = True
        variant.finish()
    return {"ok": True}


def mode_scale(name: str, directory: str, port: int) -> dict[str, Any]:
    import resource

    # Importing the libraries is measured on its own (cold rows); lazy imports a first
    # load triggers (cryptography, keyring) do count here.
    import msal  # noqa: F401

    if name.startswith("msalx-"):
        import msal_extensions  # noqa: F401
    elif name.startswith("ours-"):
        import msal_keyring_cache  # noqa: F401
    http_client(port)
    start = time.perf_counter()
    variant = open_variant(name, directory)  # the JSON recipe loads here, the others lazily
    first = time.perf_counter() - start
    app = confidential_app(variant, port)
    hit = ["api://scale/0/.default"]
    start = time.perf_counter()
    result = app.acquire_token_for_client(hit)
    first += time.perf_counter() - start
    assert result.get("token_source") == "cache", result.get("error")
    start = time.perf_counter()
    for _ in range(20):
        app.acquire_token_for_client(hit)
    warm = (time.perf_counter() - start) / 20
    start = time.perf_counter()
    result = app.acquire_token_for_client(["api://scale/new/.default"])
    miss = time.perf_counter() - start
    assert result.get("token_source") == "identity_provider"
    start = time.perf_counter()
    variant.finish()  # the JSON recipe saves here: part of its write cost
    miss += time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"first_ms": first * 1e3, "warm_us": warm * 1e6, "miss_ms": miss * 1e3, "rss_mb": rss}


def main(argv: list[str]) -> None:
    mode, name, directory, port_text, *rest = argv
    port = int(port_text)
    if mode == "scale":  # times the opening itself
        sys.stdout.write(json.dumps(mode_scale(name, directory, port)) + "\n")
        return
    variant = open_variant(name, directory)
    out: Optional[dict[str, Any]]
    if mode == "setup":
        out = mode_setup(variant, port)
    elif mode == "cold":
        out = mode_cold(variant, port)
    elif mode == "warm":
        out = mode_warm(variant, port, int(rest[0]))
    elif mode == "counts":
        out = mode_counts(variant, port, rest[0], name)
    elif mode == "contend":
        out = mode_contend(variant, port, int(rest[0]), int(rest[1]), name)
    elif mode == "tally":
        out = mode_tally(variant)
    elif mode == "seed":
        out = mode_seed(variant, rest[0])
    else:
        raise SystemExit(f"unknown mode {mode}")
    if out:
        sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
