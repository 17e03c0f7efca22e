"""The ``msal-keyring-cache`` command: see, fix and move a token cache; a demo.

Every subcommand takes the library's settings as flags (generated from
:func:`~msal_keyring_cache.config.describe_settings`), which win over
``MSAL_KEYRING_CACHE_*`` variables, which win over defaults. Keys and passphrases come
only from the environment, never from flags (flags show up in ``ps`` and shell history).

Nothing here prints a token, secret or key, except the two commands whose job it is
(``export --plaintext`` and ``generate-key``). ``status`` and ``accounts`` read only
the non-secret fields of the cache JSON, by name.

Exit codes: 0 ok, 1 a problem was found (or a :class:`~msal_keyring_cache.CacheError`),
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any, Callable, NoReturn, Optional, TextIO

from . import __version__, crypto
from .cache import BackendInfo, PersistentTokenCache
from .config import BACKENDS, DEFAULT_ENV_PREFIX, Settings, describe_settings
from .errors import CacheError, ConfigError, StoreError
from .files import atomic_write, loose_permissions, read_file

__all__ = ["CommandError", "build_parser", "main"]

PROG = "msal-keyring-cache"
logger = logging.getLogger("msal_keyring_cache")

#: Test hook: ``rotate-key`` kills itself with SIGKILL right after the named step
#: (``keys-added`` or ``reencrypted``), to prove an interrupted rotation loses nothing.
CRASH_HOOK_VAR = "_MSAL_KEYRING_CACHE_CRASH_AFTER"


class CommandError(CacheError):
    """A subcommand cannot do what was asked (bad input file, nothing to move …)."""


class UsageError(ConfigError):
    """The command line asks for something impossible (exit status 2)."""


# -- the parser ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _rst_to_plain(text: str) -> str:
    return str(text).replace("``", "").replace("%", "%%")


def _metavar(row: dict[str, Any]) -> str:
    if row["name"] == "backend":
        return "{" + ",".join(BACKENDS) + "}"
    kind = row["type"]
    if "path" in kind:
        return "PATH"
    if "seconds" in kind:
        return "SECONDS"
    return str(row["name"]).upper()


def _settings_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Add one flag per CLI setting (``--app-name``, ``--backend`` …) and ``--env-prefix``.

    ``defaults=False`` (the copies on each subcommand) leaves unset flags out of the
    namespace, so a flag given before the subcommand is not reset by the subcommand.
    """
    group = parser.add_argument_group(
        "settings",
        "Each flag wins over its MSAL_KEYRING_CACHE_* variable, which wins over the default. "
        "Keys and passphrases are read only from the environment (MSAL_KEYRING_CACHE_KEY, "
        "MSAL_KEYRING_CACHE_PASSPHRASE), never from flags.",
    )
    unset: Any = None if defaults else argparse.SUPPRESS
    for row in describe_settings():
        if not row["cli"] or row["secret"]:
            continue
        flag = "--" + row["name"].replace("_", "-")
        text = _rst_to_plain(row["help"]) + f" Environment: {row['env']}."
        if row["type"].startswith("boolean"):
            group.add_argument(
                flag,
                dest=row["name"],
                action=argparse.BooleanOptionalAction,
                default=unset,
                help=text,
            )
        else:
            if row["default"] is not None:
                text += f" Default: {row['default']}."
            group.add_argument(
                flag, dest=row["name"], metavar=_metavar(row), default=unset, help=text
            )
    group.add_argument(
        "--env-prefix",
        metavar="PREFIX",
        default=unset,
        help="Read settings from PREFIX_* variables instead of MSAL_KEYRING_CACHE_* "
        "(for tools that embed the library under their own prefix).",
    )


def _add(
    subparsers: Any,
    name: str,
    handler: Callable[[_Context], int],
    summary: str,
    description: str,
    *,
    json_output: bool = True,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=summary, description=description
    )
    parser.set_defaults(handler=handler)
    if json_output:
        parser.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="Print one JSON document instead of text.",
        )
    _settings_flags(parser, defaults=False)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The command's :class:`argparse.ArgumentParser` (the docs' CLI reference comes from it)."""
    parser = _Parser(
        prog=PROG,
        description="Inspect, repair and move the persistent MSAL token cache of "
        "msal-keyring-cache, without ever printing a token. Try: msal-keyring-cache demo",
        epilog="Exit status: 0 ok, 1 a problem was found, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Log what the library does (DEBUG level, on stderr; never token text).",
    )
    _settings_flags(parser, defaults=True)
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    sub.required = True

    _add(
        sub,
        "status",
        cmd_status,
        "Show where the cache lives, how it is protected, what it holds.",
        "Show the backend in use and why, where it lives (credential-store service/account or "
        "file path), its protection in plain words, size, entry counts by credential type, "
        "last write and lock file. Exit status 1 if the cache cannot be read.",
    )

    _add(
        sub,
        "accounts",
        cmd_accounts,
        "List the signed-in accounts (never a token).",
        "One row per account: username, home account id, environment, realm, the token "
        "types held, access-token expiries and whether a refresh token exists.",
    )

    clear = _add(
        sub,
        "clear",
        cmd_clear,
        "Delete the cache, or one account's tokens.",
        "Delete every token and account in the cache, or with --account only the "
        "entries of that user. Asks for confirmation unless --yes.",
    )
    clear.add_argument(
        "--account",
        metavar="USERNAME",
        help="Only remove this user's account and tokens (case-insensitive).",
    )
    clear.add_argument("-y", "--yes", action="store_true", help="Do not ask for confirmation.")

    _add(
        sub,
        "doctor",
        cmd_doctor,
        "Check everything the cache depends on; suggest fixes.",
        "Run every check (settings, backend choice, credential store reachable and secure, "
        "D-Bus, probe round trip, file and directory permissions, lock, decryption with the "
        "configured key) and print each as ok/warn/fail with the fix. Exit status 1 if any "
        "check fails.",
    )

    migrate = _add(
        sub,
        "migrate",
        cmd_migrate,
        "Import a plaintext MSAL cache file, securely.",
        "Merge a plaintext MSAL JSON token cache (msal-extensions FilePersistence, "
        "Azure CLI's msal_token_cache.json, any SerializableTokenCache.serialize() "
        "output) into the configured store, keeping the newer of two equal entries. "
        "--delete-source removes the plaintext file only after the secure copy is "
        "verified.",
    )
    migrate.add_argument(
        "--from",
        dest="source",
        metavar="PATH",
        required=True,
        help="The plaintext cache file to import.",
    )
    migrate.add_argument(
        "--delete-source",
        action="store_true",
        help="Delete PATH once every entry is verified in the secure store.",
    )

    export = _add(
        sub,
        "export",
        cmd_export,
        "Print the cache as plaintext JSON (needs --plaintext).",
        "Print the whole cache as msal's plaintext JSON on stdout. It contains "
        "refresh tokens: only with --plaintext, and keep the output safe.",
        json_output=False,
    )
    export.add_argument(
        "--plaintext",
        action="store_true",
        help="Confirm that you want tokens printed in plaintext.",
    )

    imp = _add(
        sub,
        "import",
        cmd_import,
        "Merge a plaintext JSON cache file into the store.",
        "Merge msal's JSON cache format from PATH (or - for stdin) into the configured "
        "store, keeping the newer of two equal entries; --replace replaces the whole "
        "cache instead.",
    )
    imp.add_argument("source", metavar="PATH", help="JSON cache file, or - for stdin.")
    imp.add_argument(
        "--replace", action="store_true", help="Replace the whole cache instead of merging."
    )

    rotate = _add(
        sub,
        "rotate-key",
        cmd_rotate_key,
        "Re-encrypt the cache file under a new key.",
        "Re-encrypt the encrypted file under a new key. The new key comes from "
        "MSAL_KEYRING_CACHE_NEW_KEY (or NEW_PASSPHRASE for passphrase files), from "
        "--new-key-file, or is generated into the configured key file. Each step "
        "replaces one file atomically and the key file keeps the old key until the "
        "cache is re-encrypted, so an interruption loses nothing: run it again.",
    )
    rotate.add_argument(
        "--new-key-file",
        metavar="PATH",
        help="Read the new Fernet key from this file (its first key).",
    )
    rotate.add_argument(
        "--keep-old",
        action="store_true",
        help="Keep the old keys in the key file after the new one (they still "
        "decrypt other copies).",
    )

    move = _add(
        sub,
        "move",
        cmd_move,
        "Move the cache to the credential store or the file.",
        "Copy every entry into the other store, verify it, then delete the source. "
        "Interrupted, both stores hold the tokens: nothing is lost; run it again.",
    )
    move.add_argument(
        "--to", choices=["keyring", "file"], required=True, help="The store to move the cache into."
    )

    _add(
        sub,
        "generate-key",
        cmd_generate_key,
        "Print a new random Fernet key.",
        "Print a new random Fernet key, e.g. for MSAL_KEYRING_CACHE_KEY or a key file: "
        "msal-keyring-cache generate-key > key && chmod 600 key",
        json_output=False,
    )

    demo = _add(
        sub,
        "demo",
        cmd_demo,
        "See it work: sign in, then a second process signs in silently.",
        "Offline, touching none of your caches: start a loopback identity provider, "
        "sign a user in with a real msal.PublicClientApplication, then run a second "
        "process that gets the token from the secure store with no token request. "
        "Uses a temporary app name and directory, backend auto (the credential store "
        "if one answers, else the encrypted file) and ignores MSAL_KEYRING_CACHE_*; "
        "flags still apply.",
    )
    demo.add_argument("--child-port", type=int, help=argparse.SUPPRESS)
    return parser


# -- context: settings, cache, output --------------------------------------------------


class _Context:
    """What a subcommand needs: its arguments, settings, cache, and output."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.json = bool(getattr(args, "json", False))
        self.env_prefix = getattr(args, "env_prefix", None) or DEFAULT_ENV_PREFIX

    def overrides(self) -> dict[str, Any]:
        names = [r["name"] for r in describe_settings() if r["cli"] and not r["secret"]]
        return {n: getattr(self.args, n) for n in names if getattr(self.args, n, None) is not None}

    def settings(self, **extra: Any) -> Settings:
        return Settings.resolve(self.env_prefix, **{**self.overrides(), **extra})

    def cache(self, settings: Optional[Settings] = None) -> PersistentTokenCache:
        from .factory import build_store

        store, info = build_store(settings or self.settings(), env_prefix=self.env_prefix)
        return PersistentTokenCache(store, backend_info=info)

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def dump(self, doc: Any) -> None:
        json.dump(doc, self.out, indent=2, sort_keys=False)
        self.out.write("\n")


def _env_var(ctx: _Context, suffix: str) -> str:
    return f"{ctx.env_prefix.rstrip('_').upper()}_{suffix}"


# -- reading msal's cache JSON: non-secret fields only, by name -----------------------------

_KINDS = ("AccessToken", "RefreshToken", "IdToken", "Account", "AppMetadata")


def _parse_cache(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        raise CommandError("the data is not JSON, so it is not an msal token cache") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise CommandError(
            "the data is not an msal token cache (expected a JSON object of credential types)"
        )
    return doc


def _counts(doc: dict[str, Any]) -> dict[str, int]:
    counts = {kind: len(doc.get(kind, {})) for kind in _KINDS}
    counts.update({k: len(v) for k, v in doc.items() if k not in counts})
    return counts


def _iso(epoch: Any) -> Optional[str]:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _accounts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per Account entry; fields are copied by name (never ``secret``)."""
    now = time.time()
    rows = []
    for account in doc.get("Account", {}).values():
        if not isinstance(account, dict):
            continue
        home, env = account.get("home_account_id"), account.get("environment")
        mine = {
            kind: [
                e
                for e in doc.get(kind, {}).values()
                if isinstance(e, dict)
                and e.get("home_account_id") == home
                and e.get("environment") == env
            ]
            for kind in ("AccessToken", "RefreshToken", "IdToken")
        }
        access = []
        for entry in mine["AccessToken"]:
            expires = entry.get("expires_on")
            try:
                expired = int(str(expires)) <= now
            except (TypeError, ValueError):
                expired = None
            access.append(
                {
                    "scopes": str(entry.get("target", "")),
                    "realm": entry.get("realm"),
                    "client_id": entry.get("client_id"),
                    "expires_on": _iso(expires),
                    "expired": expired,
                }
            )
        rows.append(
            {
                "username": account.get("username"),
                "home_account_id": home,
                "environment": env,
                "realm": account.get("realm"),
                "token_types": [k for k in ("AccessToken", "RefreshToken", "IdToken") if mine[k]],
                "access_tokens": sorted(access, key=lambda a: a["expires_on"] or ""),
                "refresh_token": bool(mine["RefreshToken"]),
            }
        )
    return sorted(rows, key=lambda r: (str(r["username"]).lower(), str(r["home_account_id"])))


def _safe_describe(cache: PersistentTokenCache) -> dict[str, Any]:
    info: BackendInfo = cache.backend_info
    described = dict(info.details)
    described.update(cache.store.describe())
    return {k: v for k, v in described.items() if _harmless(v)}


def _harmless(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


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
    where = cache.store.describe().get("location") or cache.backend_info.backend
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
    from .factory import build_store
    from .stores.file import EncryptedFileStore

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
    protection = str(described.get("protection", ""))
    weak = "weak" in protection or "none" in protection
    yield Check(
        "protection",
        "warn" if weak else "ok",
        protection or "unknown",
        f"Set {settings.env_var('key', ctx.env_prefix)}, "
        f"{settings.env_var('passphrase', ctx.env_prefix)}, a key file outside the data "
        f"directory or {settings.env_var('key_in_keyring', ctx.env_prefix)}=1.",
    )
    for path in _private_paths(store, settings):
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
            yield Check("read", "ok", f"read {len(data or b'')} bytes from the {store.kind} store")
        except CacheError as exc:
            yield Check("read", "fail", str(exc), "See the message.")
    store.close()


def _private_paths(store: Any, settings: Settings) -> list[str]:
    paths = []
    location = getattr(store, "path", None)
    if location:
        paths += [os.path.dirname(location), location]
    key_source = getattr(store, "key_source", None)
    label = str(getattr(key_source, "label", ""))
    if settings.key_file:
        paths.append(settings.key_file)
    elif getattr(key_source, "tag", "") == "generated":
        paths.append(label.replace("generated key file ", "", 1))
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
    except crypto.CorruptCacheError as exc:
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
    from .stores import keyring as ks

    # Must the credential store work (fail), or may the file take over (warn)?
    must = settings.backend == "keyring" or settings.key_in_keyring
    soft = "fail" if must else "warn"
    fix = (
        "Start or unlock a secure credential store (Linux: gnome-keyring, KWallet or "
        "KeePassXC on the session D-Bus), or use --backend file."
    )
    store = ks.KeyringStore(
        settings.service,
        settings.keyring_account,
        lock_path=ks.default_lock_path(settings),
        keyring_timeout=settings.keyring_timeout,
        lock_timeout=settings.lock_timeout,
    )
    try:
        backend = store.backend
    except CacheError as exc:
        # auto without keyring_fallback refuses to start an empty file then: a failure.
        status = "fail" if must or not settings.keyring_fallback else "warn"
        yield Check("credential store", status, _one_line(str(exc)), fix)
        return
    name = store.backend_name
    insecure = ks.classify_backend(backend)
    if insecure is not None:
        yield Check("credential store", soft, f"{insecure}; the encrypted file is used", fix)
        return
    yield Check("credential store", "ok", f"{name} ({store.resolved_by})")
    account = f"{settings.keyring_account}.doctor-probe"
    value = secrets.token_urlsafe(16)
    started = time.perf_counter()
    try:
        ks._bounded(
            lambda: backend.set_password(settings.service, account, value),
            settings.keyring_timeout,
            "writing a probe entry",
        )
        read = ks._bounded(
            lambda: backend.get_password(settings.service, account),
            settings.keyring_timeout,
            "reading the probe entry",
        )
        ks._bounded(
            lambda: backend.delete_password(settings.service, account),
            settings.keyring_timeout,
            "deleting the probe entry",
        )
    except Exception as exc:
        error = ks._translate(exc, "probe round trip", name)
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


# -- migrate, import, export ---------------------------------------------------------------------


def _read_plaintext(path: str) -> tuple[str, dict[str, Any]]:
    if path == "-":
        text = sys.stdin.read()
    else:
        path = os.path.abspath(os.path.expanduser(path))
        blob = read_file(path)
        if blob is None:
            raise CommandError(f"{path} does not exist.")
        if blob.startswith(b'{"format":"msal-keyring-cache"'):
            raise CommandError(
                f"{path} is already an encrypted msal-keyring-cache file; "
                "point --path at it instead of importing it."
            )
        try:
            text = blob.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError(
                f"{path} is not a plaintext JSON token cache (it may be encrypted, e.g. with "
                "DPAPI on Windows or by the macOS keychain): export it as plaintext first."
            ) from None
    try:
        doc = _parse_cache(text)
    except CommandError as exc:
        raise CommandError(f"{path}: {exc}.") from None
    return text, doc


def _missing(source: dict[str, Any], target: dict[str, Any]) -> int:
    return sum(
        1 for kind, entries in source.items() for key in entries if key not in target.get(kind, {})
    )


def _verify(ctx: _Context, settings: Settings, source: dict[str, Any]) -> None:
    """Read the store back through a fresh store object and check every entry arrived."""
    fresh = ctx.cache(settings)
    try:
        missing = _missing(source, _parse_cache(fresh.serialize()))
    finally:
        fresh.close()
    if missing:
        raise StoreError(
            f"{missing} entries are missing from the store after writing them; nothing was "
            "deleted. Run the command again, or run: msal-keyring-cache doctor"
        )


def cmd_migrate(ctx: _Context) -> int:
    settings = ctx.settings()
    text, doc = _read_plaintext(ctx.args.source)
    cache = ctx.cache(settings)
    changed = cache.merge(text)
    where = cache.store.describe().get("location") or cache.backend_info.backend
    _verify(ctx, settings, doc)
    deleted = False
    if ctx.args.delete_source:
        os.unlink(os.path.abspath(os.path.expanduser(ctx.args.source)))
        deleted = True
    report = {
        "source": os.path.abspath(os.path.expanduser(ctx.args.source)),
        "backend": cache.backend_info.backend,
        "location": where,
        "entries": sum(len(v) for v in doc.values()),
        "added_or_updated": changed,
        "accounts": [a["username"] for a in _accounts(doc)],
        "verified": True,
        "source_deleted": deleted,
    }
    if ctx.json:
        ctx.dump(report)
        return 0
    ctx.print(
        f"Imported {report['entries']} entries ({changed} added or updated) for "
        f"{', '.join(map(str, report['accounts'])) or 'no accounts'} into "
        f"{report['backend']} {where}; verified."
    )
    if deleted:
        ctx.print(f"Deleted the plaintext source {report['source']}.")
    else:
        ctx.print(
            f"The plaintext source {report['source']} still holds tokens: delete it "
            "(or rerun with --delete-source) once your tools use the secure cache."
        )
    return 0


def cmd_import(ctx: _Context) -> int:
    settings = ctx.settings()
    text, doc = _read_plaintext(ctx.args.source)
    cache = ctx.cache(settings)
    if ctx.args.replace:
        cache.deserialize(text)
        changed = sum(len(v) for v in doc.values())
    else:
        changed = cache.merge(text)
    _verify(ctx, settings, doc)
    report = {
        "backend": cache.backend_info.backend,
        "entries": sum(len(v) for v in doc.values()),
        "added_or_updated": changed,
        "replaced": bool(ctx.args.replace),
    }
    if ctx.json:
        ctx.dump(report)
    else:
        verb = "Replaced the cache with" if ctx.args.replace else "Merged"
        ctx.print(
            f"{verb} {report['entries']} entries ({changed} added or updated) into "
            f"the {report['backend']} store; verified."
        )
    return 0


def cmd_export(ctx: _Context) -> int:
    if not ctx.args.plaintext:
        raise UsageError(
            "export prints refresh tokens in plaintext; add --plaintext to confirm "
            "(and keep the output safe)"
        )
    cache = ctx.cache()
    ctx.out.write(cache.serialize() + "\n")
    return 0


def cmd_generate_key(ctx: _Context) -> int:
    ctx.print(crypto.generate_key())
    return 0


# -- rotate-key ----------------------------------------------------------------------------------


def _crash_hook(step: str) -> None:
    if os.environ.get(CRASH_HOOK_VAR) == step:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _key_file_path(settings: Settings) -> str:
    if settings.key_file:
        return settings.key_file
    from platformdirs import user_config_dir

    return os.path.join(user_config_dir(settings.app_name, appauthor=False), "cache.key")


def _write_key_file(path: str, keys: Sequence[str]) -> None:
    os.close(atomic_write(path, "".join(k + "\n" for k in keys).encode("ascii")))


def _new_fernet_key(ctx: _Context) -> Optional[str]:
    var = _env_var(ctx, "NEW_KEY")
    if ctx.args.new_key_file:
        return crypto.read_key_file(os.path.abspath(os.path.expanduser(ctx.args.new_key_file)))[0]
    raw = os.environ.get(var, "").strip()
    if raw:
        if not crypto.is_fernet_key(raw):
            raise ConfigError(
                f"{var} is not a Fernet key (32 url-safe base64-encoded bytes); "
                "make one with: msal-keyring-cache generate-key"
            )
        return raw
    return None


def cmd_rotate_key(ctx: _Context) -> int:
    from .stores.file import EncryptedFileStore

    settings = ctx.settings()
    cache = ctx.cache(settings)
    store = cache.store
    if not isinstance(store, EncryptedFileStore):
        raise CommandError(
            f"rotate-key re-encrypts the encrypted file, but this cache lives in the "
            f"{cache.backend_info.backend} store, which protects it itself. Use --backend file "
            "for the file."
        )
    if settings.key_in_keyring:
        # TODO(keyring): rotate the envelope key kept in the credential store.
        raise CommandError(
            "rotate-key does not rotate a key kept in the credential store yet; "
            "move the cache (move --to file) and rotate there."
        )
    with store.lock():
        # Read everything with the current key: a wrong key fails before anything changes.
        before = _parse_cache(cache.serialize())
        empty = not os.path.exists(store.path)
        old = store.key_source
        if settings.passphrase:
            new_var = _env_var(ctx, "NEW_PASSPHRASE")
            new_pass = os.environ.get(new_var)
            if not new_pass:
                raise ConfigError(
                    f"The cache file is protected by a passphrase: set the new one "
                    f"in {new_var} (the old one stays in "
                    f"{settings.env_var('passphrase', ctx.env_prefix)})."
                )
            new_source: crypto.KeySource = crypto.Passphrase(new_pass)
            after = (
                f"now set {settings.env_var('passphrase', ctx.env_prefix)} to the new passphrase"
            )
            store.rekey(new_source)
        else:
            if not isinstance(old, crypto.FernetKeys):  # key_in_keyring is handled above
                raise CommandError(f"rotate-key cannot rotate {old.label}.")
            new_key = _new_fernet_key(ctx)
            if settings.key:
                if new_key is None:
                    raise ConfigError(
                        f"The key comes from {settings.env_var('key', ctx.env_prefix)}: put the "
                        f"new key in {_env_var(ctx, 'NEW_KEY')} or use --new-key-file (make one "
                        "with: msal-keyring-cache generate-key)."
                    )
                new_source = crypto.FernetKeys((new_key,), label="the new key")
                store.rekey(new_source)
                after = (
                    f"now set {settings.env_var('key', ctx.env_prefix)} to the new key "
                    f"(keep the old one after it while other copies may use it)"
                )
            else:
                path = _key_file_path(settings)
                new_key = new_key or crypto.generate_key()
                old_keys = [k for k in old.keys if k != new_key]
                # 1. The key file gets the new key in front: the old key still decrypts.
                _write_key_file(path, [new_key, *old_keys])
                _crash_hook("keys-added")
                # 2. The cache is re-encrypted under the new key (one atomic replace).
                new_source = dataclasses.replace(old, keys=(new_key, *old_keys))
                store.rekey(new_source)
                _crash_hook("reencrypted")
                # 3. Only now may the old keys leave the key file.
                if not ctx.args.keep_old:
                    _write_key_file(path, [new_key])
                    new_source = dataclasses.replace(old, keys=(new_key,))
                after = f"the key file {path} holds the new key"
        # Verify with the new key alone, through a fresh store object.
        check = PersistentTokenCache(
            EncryptedFileStore(store.path, new_source, lock_timeout=settings.lock_timeout)
        )
        try:
            if not empty and _parse_cache(check.serialize()) != before:
                raise StoreError(
                    "The re-encrypted cache does not read back the same; the old key "
                    "still decrypts it. Run rotate-key again."
                )
        finally:
            check.close()
    fp = _fingerprint_of(new_source)
    if ctx.json:
        ctx.dump({"path": store.path, "fingerprint": fp, "empty": empty, "next": after})
    else:
        what = "an empty cache (no file yet)" if empty else store.path
        ctx.print(f"Re-encrypted {what} under the new key (fingerprint {fp}); {after}.")
    return 0


def _fingerprint_of(source: crypto.KeySource) -> str:
    if isinstance(source, crypto.FernetKeys):
        return source.fingerprints[0]
    return "derived from the passphrase"


# -- move ----------------------------------------------------------------------------------------


def cmd_move(ctx: _Context) -> int:
    settings = ctx.settings()
    source = ctx.cache(settings)
    target_settings = dataclasses.replace(settings, backend=ctx.args.to)
    target = ctx.cache(target_settings)
    s_where = source.store.describe().get("location") or source.backend_info.backend
    t_where = target.store.describe().get("location") or target.backend_info.backend
    if source.store.kind == target.store.kind and s_where == t_where:
        raise CommandError(f"The cache already lives in the {source.store.kind} store ({s_where}).")
    with ExitStack() as locks:
        locks.enter_context(source.store.lock())
        locks.enter_context(target.store.lock())
        text = source.serialize()
        doc = _parse_cache(text)
        entries = sum(len(v) for v in doc.values())
        if entries:
            target.merge(text)
            _verify(ctx, target_settings, doc)
        source.clear()  # only after the copy is verified
    var = settings.env_var("backend", ctx.env_prefix)
    report = {
        "from": source.store.kind,
        "from_location": s_where,
        "to": target.store.kind,
        "to_location": t_where,
        "entries": entries,
        "verified": True,
    }
    if ctx.json:
        ctx.dump(report)
    else:
        ctx.print(
            f"Moved {entries} entries from the {report['from']} store ({s_where}) to the "
            f"{report['to']} store ({t_where}); verified, and the source was cleared."
        )
        ctx.print(f"Use it from now on: set {var}={ctx.args.to} (or --backend {ctx.args.to}).")
    return 0


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
            _write_key_file(key_file, [crypto.generate_key()])
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

    from .testing import DEFAULT_CLIENT_ID, loopback_http_client

    started = time.perf_counter()
    settings = Settings.resolve(ctx.env_prefix, environ={}, **ctx.overrides())
    cache = ctx.cache(settings)
    app = msal.PublicClientApplication(
        DEFAULT_CLIENT_ID,
        authority="https://127.0.0.1/loopback-tenant",
        http_client=loopback_http_client(ctx.args.child_port),
        instance_discovery=False,
        token_cache=cache,
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


def cmd_demo(ctx: _Context) -> int:
    if ctx.args.child_port:
        return _demo_child(ctx)
    import msal

    from .testing import DEFAULT_CLIENT_ID, LoopbackIdentityProvider

    root = tempfile.mkdtemp(prefix="msal-keyring-cache-demo-")
    cache: Optional[PersistentTokenCache] = None
    try:
        os.chmod(root, 0o700)
        settings = _demo_settings(ctx, root)
        cache = ctx.cache(settings)
        info = cache.backend_info
        with LoopbackIdentityProvider() as idp:
            t0 = time.perf_counter()
            app = msal.PublicClientApplication(
                DEFAULT_CLIENT_ID, token_cache=cache, **idp.app_kwargs()
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
        where = _safe_describe(cache)
        ok = bool(child.get("ok")) and child.get("token_digest") == digest and token_during == 0
        report = {
            "ok": ok,
            "backend": info.backend,
            "reason": info.reason,
            "location": where.get("location"),
            "protection": where.get("protection"),
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
            cache.close()
        shutil.rmtree(root, ignore_errors=True)


def _child_env(ctx: _Context) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_env_var(ctx, ""))}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    p(f"   Token cache: {report['backend']} ({report['reason']})")
    p(f"   Where: {report['location']}")
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
    if child["other_requests"]:
        p(
            f"   Other requests: {child['other_requests']} ({', '.join(child['other_paths'])}): "
            "msal fetches the OpenID discovery document whenever an app is created; it "
            "carries no token."
        )
    p("3. Removed the demo cache and its temporary directory. No token was printed.")
    if not report["ok"]:
        p("RESULT: the second process did not get the token silently from the cache.")


# -- main ------------------------------------------------------------------------------------------


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        return f"{PROG}: {level}: {record.getMessage()}"


def _setup_logging(verbose: bool, err: TextIO) -> logging.Handler:
    handler = logging.StreamHandler(err)
    handler.setFormatter(_OneLine())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False
    return handler


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    saved = (logger.level, logger.propagate)
    handler = _setup_logging(bool(args.verbose), err)
    try:
        return int(args.handler(_Context(args, out, err)))
    except ConfigError as exc:
        err.write(f"{PROG}: error: {_one_line(str(exc))}\n")
        return 2
    except CacheError as exc:
        err.write(f"{PROG}: error: {_one_line(str(exc))}\n")
        return 1
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:
        # e.g. unlink of a migrated source; strerror and filename only, never data.
        where = f" {exc.filename}:" if exc.filename else ""
        err.write(f"{PROG}: error:{where} {exc.strerror or type(exc).__name__}\n")
        return 1
    except Exception as exc:
        if args.verbose:
            raise
        # A bug, not a user error: its message could quote data, so only its type.
        err.write(
            f"{PROG}: error: unexpected {type(exc).__name__}; rerun with -v for the "
            "traceback and please report it\n"
        )
        return 1
    finally:
        logger.removeHandler(handler)  # main() may run inside another program
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
