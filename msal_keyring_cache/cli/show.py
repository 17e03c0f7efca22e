"""Look at a cache and fix it in place: ``status``, ``accounts``, ``clear``, ``doctor``."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from typing import Any, Optional

from .. import crypto
from ..config import Settings
from ..errors import CacheError, ConfigError, CorruptCacheError
from ..files import loose_permissions, read_file
from ..stores.base import Description
from .common import (
    PROG,
    CommandError,
    _accounts,
    _Context,
    _counts,
    _iso,
    _one_line,
    _parse_cache,
    _safe_describe,
)

# -- status, accounts ----------------------------------------------------------------------


def cmd_status(ctx: _Context) -> int:
    cache = ctx.cache()
    doc: dict[str, Any] = {}
    problem = None
    try:
        doc = _parse_cache(cache.serialize())
    except CacheError as exc:
        problem = str(exc)
    store = _safe_describe(cache)
    if store.get("size") is None and doc:
        # A credential-store entry has no file size: its JSON text is what it holds.
        store["size"] = len(json.dumps(doc, separators=(",", ":")))
        store["exists"] = True
    stamp = store.get("stamp_file")
    if store.get("last_write") is None and isinstance(stamp, str) and os.path.exists(stamp):
        store["last_write"] = _iso(os.stat(stamp).st_mtime)
    report: dict[str, Any] = {
        "backend": cache.backend_info.backend,
        "reason": cache.backend_info.reason,
        "location": store.get("location"),
        "protection": store.get("protection"),
        "exists": store.get("exists"),
        "size": store.get("size"),
        "last_write": store.get("last_write"),
        "lock_file": store.get("lock_file"),
        "counts": _counts(doc),
        "accounts": [a["username"] for a in _accounts(doc)],
        "problem": problem,
        "store": store,
    }
    if ctx.json:
        ctx.dump(report)
    else:
        size = report["size"]
        lines = [
            ("backend", f"{report['backend']} ({report['reason']})"),
            ("location", report["location"]),
            ("protection", report["protection"]),
            ("size", "nothing stored yet" if size is None else f"{size} bytes"),
            ("last write", report["last_write"]),
            ("lock file", report["lock_file"]),
            ("entries", ", ".join(f"{n} {k}" for k, n in report["counts"].items())),
            ("accounts", ", ".join(map(str, report["accounts"])) or "none"),
        ]
        shown = {"location", "protection", "size", "last_write", "lock_file", "exists", "backend"}
        lines += [(k.replace("_", " "), v) for k, v in store.items() if k not in shown]
        for name, value in lines:
            if value is not None:
                ctx.print(f"{name + ':':<13} {value}")
        if problem:
            ctx.print(f"{'problem:':<13} {problem}")
    return 1 if problem else 0


def cmd_accounts(ctx: _Context) -> int:
    cache = ctx.cache()
    rows = _accounts(_parse_cache(cache.serialize()))
    if ctx.json:
        ctx.dump({"accounts": rows})
        return 0
    if not rows:
        ctx.print(f"No accounts in the cache ({cache.backend_info.backend}).")
    for row in rows:
        ctx.print(f"{row['username']}")
        ctx.print(f"  home account id: {row['home_account_id']}")
        ctx.print(f"  environment:     {row['environment']}   realm: {row['realm']}")
        ctx.print(f"  token types:     {', '.join(row['token_types']) or 'none'}")
        ctx.print(f"  refresh token:   {'yes' if row['refresh_token'] else 'no'}")
        for at in row["access_tokens"]:
            state = "expired" if at["expired"] else "valid"
            ctx.print(
                f"  access token:    {at['scopes'] or '(no scope)'}: {state} until "
                f"{at['expires_on']}"
            )
    return 0


# -- clear -------------------------------------------------------------------------------------


def _confirm(ctx: _Context, question: str) -> bool:
    ctx.err.write(f"{question} [y/N] ")
    ctx.err.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in {"y", "yes"}


def cmd_clear(ctx: _Context) -> int:
    cache = ctx.cache()
    where = cache.store.describe().location or cache.backend_info.backend
    username: Optional[str] = ctx.args.account
    with cache.store.lock():
        cache.reload()
        doc = _parse_cache(cache.serialize())
        if username is None:
            if not any(doc.values()):
                ctx.print(f"The cache in {where} is already empty.")
                return 0
            n = len(doc.get("Account", {}))
            if not ctx.args.yes and not _confirm(
                ctx, f"Delete all {n} account(s) and every token in {where}?"
            ):
                ctx.err.write(f"{PROG}: nothing deleted (not confirmed; use --yes).\n")
                return 1
            cache.clear()
            ctx.print(f"Cleared the cache in {where}.")
            return 0
        wanted = username.lower()
        homes = {
            (a.get("home_account_id"), a.get("environment"))
            for a in doc.get("Account", {}).values()
            if isinstance(a, dict) and str(a.get("username", "")).lower() == wanted
        }
        if not homes:
            known = ", ".join(str(a["username"]) for a in _accounts(doc)) or "none"
            raise CommandError(
                f"No account with username {username!r} in the cache (accounts: {known})."
            )
        if not ctx.args.yes and not _confirm(
            ctx, f"Delete the account {username} and its tokens from {where}?"
        ):
            ctx.err.write(f"{PROG}: nothing deleted (not confirmed; use --yes).\n")
            return 1
        removed = 0
        for entries in doc.values():
            for key in list(entries):
                entry = entries[key]
                if (
                    isinstance(entry, dict)
                    and (entry.get("home_account_id"), entry.get("environment")) in homes
                ):
                    del entries[key]
                    removed += 1
        cache.deserialize(json.dumps(doc))
    ctx.print(f"Removed {username}: {removed} entries.")
    return 0


# -- doctor --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Check:
    """One doctor check: ``ok``, ``warn`` or ``fail``, what was found, and the fix."""

    name: str
    status: str
    detail: str
    fix: str = ""


def cmd_doctor(ctx: _Context) -> int:
    checks = list(_doctor_checks(ctx))
    failed = any(c.status == "fail" for c in checks)
    if ctx.json:
        ctx.dump({"ok": not failed, "checks": [dataclasses.asdict(c) for c in checks]})
    else:
        for c in checks:
            ctx.print(f"[{c.status:>4}] {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                ctx.print(f"       fix: {c.fix}")
        summary = "problems found" if failed else "no problems found"
        warns = sum(c.status == "warn" for c in checks)
        ctx.print(f"{summary} ({len(checks)} checks, {warns} warnings)")
    return 1 if failed else 0


def _doctor_checks(ctx: _Context) -> Iterator[Check]:
    from ..factory import build_store
    from ..stores.file import EncryptedFileStore

    try:
        settings = ctx.settings()
    except ConfigError as exc:
        yield Check("settings", "fail", str(exc), "Correct the flag or environment variable.")
        return
    yield Check("settings", "ok", f"app {settings.app_name!r}, backend {settings.backend}")
    yield from _keyring_checks(ctx, settings)
    try:
        store, info = build_store(settings, env_prefix=ctx.env_prefix)
    except CacheError as exc:
        yield Check("backend", "fail", str(exc), "See the message; or choose --backend file.")
        return
    yield Check("backend", "ok", f"{info.backend}: {info.reason}")
    described = store.describe()
    yield Check(
        "protection",
        "warn" if described.protection.weak else "ok",
        described.protection_text,
        f"Set {settings.env_var('key', ctx.env_prefix)}, "
        f"{settings.env_var('passphrase', ctx.env_prefix)}, a key file outside the data "
        f"directory or {settings.env_var('key_in_keyring', ctx.env_prefix)}=1.",
    )
    for path in _private_paths(described):
        yield _permission_check(path)
    lock = store.lock()
    try:
        with lock:
            pass
        yield Check("lock", "ok", f"obtained {getattr(lock, 'path', 'the lock')}")
    except CacheError as exc:
        yield Check("lock", "fail", str(exc), "End the process holding it, or fix permissions.")
    if isinstance(store, EncryptedFileStore):
        yield _decrypt_check(store)
    else:
        try:
            data = store.load()
            yield Check(
                "read", "ok", f"read {len(data or b'')} bytes from the {store.backend} store"
            )
        except CacheError as exc:
            yield Check("read", "fail", str(exc), "See the message.")
    store.close()


def _private_paths(described: Description) -> list[str]:
    paths = []
    if described.backend == "file":
        paths += [os.path.dirname(described.location), described.location]
    if described.key_file:
        paths.append(described.key_file)
    return paths


def _permission_check(path: str) -> Check:
    name = f"permissions of {path}"
    if not os.path.exists(path):
        return Check(name, "ok", "does not exist yet (will be created private)")
    loose = loose_permissions(path)
    if loose:
        mode = "700" if os.path.isdir(path) else "600"
        return Check(name, "fail", f"others may read it (mode {loose})", f"chmod {mode} {path}")
    if os.name == "posix" and os.stat(path).st_uid != os.getuid():
        return Check(name, "warn", "owned by another user", f"chown $USER {path}")
    return Check(name, "ok", "private")


def _decrypt_check(store: Any) -> Check:
    # Decrypt without the store's side effects (a damaged file would be moved aside).
    blob = read_file(store.path)
    if blob is None:
        return Check("decrypt", "ok", "no cache file yet (it is created at the first sign-in)")
    try:
        plaintext, _ = crypto.decrypt(blob, store.key_source)
    except CorruptCacheError as exc:
        return Check(
            "decrypt",
            "fail",
            f"the cache file is damaged: {exc}",
            "Any use moves it aside and starts empty; sign in again.",
        )
    except CacheError as exc:
        return Check("decrypt", "fail", str(exc), "Configure the key the file was written with.")
    try:
        _parse_cache(plaintext.decode("utf-8"))
    except (CacheError, UnicodeDecodeError):
        return Check(
            "decrypt",
            "warn",
            "decrypts, but does not hold an msal token cache",
            "It is replaced at the next sign-in; or run: msal-keyring-cache clear",
        )
    return Check("decrypt", "ok", f"decrypted {len(blob)} bytes with {store.key_source.label}")


def _keyring_checks(ctx: _Context, settings: Settings) -> Iterator[Check]:
    """Credential-store checks: D-Bus, which keyring backend, a probe round trip."""
    wants_keyring = settings.backend != "file" or settings.key_in_keyring
    if not wants_keyring:
        yield Check("credential store", "ok", "not used (backend file)")
        return
    if sys.platform.startswith("linux"):
        address = os.environ.get("DBUS_SESSION_BUS_ADDRESS", "")
        if address:
            yield Check("D-Bus", "ok", "session bus address set")
        else:
            yield Check(
                "D-Bus",
                "warn",
                "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS unset)",
                "Run inside a desktop session or start one with dbus-run-session; "
                "without it the encrypted file is used.",
            )
    yield from _keyring_probe(settings)


def _keyring_probe(settings: Settings) -> Iterator[Check]:
    """Which keyring backend, is it secure, and a write/read/delete round trip in time."""
    from ..factory import default_lock_path
    from ..stores.credential import KeyringStore
    from ..stores.keyring_backend import bounded, classify_backend, translate

    # Must the credential store work (fail), or may the file take over (warn)?
    must = settings.backend == "keyring" or settings.key_in_keyring
    soft = "fail" if must else "warn"
    fix = (
        "Start or unlock a secure credential store (Linux: gnome-keyring, KWallet or "
        "KeePassXC on the session D-Bus), or use --backend file."
    )
    store = KeyringStore(
        settings.service,
        settings.keyring_account,
        lock_path=default_lock_path(settings),
        keyring_timeout=settings.keyring_timeout,
        lock_timeout=settings.lock_timeout,
    )
    try:
        backend = store.keyring
    except CacheError as exc:
        # auto without keyring_fallback refuses to start an empty file then: a failure.
        status = "fail" if must or not settings.keyring_fallback else "warn"
        yield Check("credential store", status, _one_line(str(exc)), fix)
        return
    name = store.keyring_name
    insecure = classify_backend(backend)
    if insecure is not None:
        yield Check("credential store", soft, f"{insecure}; the encrypted file is used", fix)
        return
    yield Check("credential store", "ok", f"{name} ({store.resolved_by})")
    account = f"{settings.keyring_account}.doctor-probe"
    value = secrets.token_urlsafe(16)
    started = time.perf_counter()
    try:
        bounded(
            lambda: backend.set_password(settings.service, account, value),
            settings.keyring_timeout,
            "writing a probe entry",
        )
        read = bounded(
            lambda: backend.get_password(settings.service, account),
            settings.keyring_timeout,
            "reading the probe entry",
        )
        bounded(
            lambda: backend.delete_password(settings.service, account),
            settings.keyring_timeout,
            "deleting the probe entry",
        )
    except Exception as exc:
        error = translate(exc, "probe round trip", name)
        yield Check("probe round trip", soft, _one_line(str(error)), fix)
        return
    took = (time.perf_counter() - started) * 1000
    if read != value:
        yield Check("probe round trip", soft, "the probe entry read back differently", fix)
    else:
        yield Check(
            "probe round trip",
            "ok",
            f"write, read and delete in {took:.0f} ms "
            f"(limit {settings.keyring_timeout:g} s per call)",
        )
