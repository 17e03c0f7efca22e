"""Look at a cache and fix it in place: ``status``, ``accounts``, ``clear``, ``doctor``.

Each command is one call into :mod:`msal_keyring_cache.manage` or
:mod:`msal_keyring_cache.doctor`, then printing.
"""

from __future__ import annotations

import sys

from .. import manage
from ..doctor import Check, Level, doctor
from ..errors import CacheError, ConfigError
from .common import PROG, _Context, _explained, _one_line


def cmd_status(ctx: _Context) -> int:
    found = manage.status(ctx.settings())
    report = found.as_dict()
    if ctx.json:
        ctx.dump(report)
        return 1 if found.problem else 0
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
    shown = {
        "backend",
        "location",
        "protection",
        "protection_level",
        "size",
        "last_write",
        "lock_file",
        "exists",
        "permissions",
    }
    store = report["store"]
    if store.get("key_file"):
        shown.add("key_source")  # the same file again, in other words
    lines += [(k.replace("_", " "), v) for k, v in store.items() if k not in shown]
    for name, value in lines:
        if value is not None:
            ctx.print(f"{name + ':':<13} {value}")
    if found.problem:
        ctx.print(f"{'problem:':<13} {_one_line(found.problem)}")
        ctx.print(f"{'fix:':<13} {found.fix}")
    if found.description.protection.weak:
        ctx.print(f"{'note:':<13} weak protection; msal-keyring-cache doctor says how to fix it")
    return 1 if found.problem else 0


def cmd_accounts(ctx: _Context) -> int:
    settings = ctx.settings()
    try:
        rows = manage.accounts(settings)
    except ConfigError:
        raise
    except CacheError as exc:
        if not ctx.json:
            raise _explained(exc, settings) from None
        ctx.dump({"accounts": [], "problem": str(exc), "fix": manage.advice(exc, settings)})
        return 1
    if ctx.json:
        ctx.dump({"accounts": [r.as_dict() for r in rows]})
        return 0
    if not rows:
        ctx.print("No accounts in the cache.")
    for row in rows:
        ctx.print(f"{row.username}")
        ctx.print(f"  home account id: {row.home_account_id}")
        ctx.print(f"  environment:     {row.environment}   realm: {row.realm}")
        ctx.print(f"  token types:     {', '.join(row.token_types) or 'none'}")
        ctx.print(f"  refresh token:   {'yes' if row.refresh_token else 'no'}")
        for at in row.access_tokens:
            state = "expired" if at["expired"] else "valid"
            ctx.print(
                f"  access token:    {at['scopes'] or '(no scope)'}: {state} until "
                f"{at['expires_on']}"
            )
    return 0


def _confirm(ctx: _Context, question: str) -> bool:
    ctx.err.write(f"{question} [y/N] ")
    ctx.err.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in {"y", "yes"}


def cmd_clear(ctx: _Context) -> int:
    settings = ctx.settings()
    username = ctx.args.account
    found = manage.status(settings)
    where = found.description.location
    if found.problem and username is not None:
        raise CacheError(f"{found.problem} {found.fix}")
    if username is None:
        if not found.problem and not any(found.counts.values()):
            manage.clear(settings)  # nothing to confirm; old copies set aside still go
            return _done(ctx, f"The cache in {where} is already empty.", cleared=where, removed=0)
        n = found.counts.get("Account", 0)
        what = (
            f"all {n} account(s) and every token" if not found.problem else "the unreadable cache"
        )
        if not ctx.args.yes and not _confirm(ctx, f"Delete {what} in {where}?"):
            return _refused(ctx)
        where = manage.clear(settings)
        return _done(
            ctx, f"Cleared the cache in {where}: signed out of every account.", where, None
        )
    if not ctx.args.yes and not _confirm(
        ctx, f"Delete the account {username} and its tokens from {where}?"
    ):
        return _refused(ctx)
    removed = manage.remove_account(settings, username)
    return _done(ctx, f"Removed {username}: {removed} entries.", where, removed)


def _done(ctx: _Context, text: str, cleared: str, removed: object) -> int:
    if ctx.json:
        ctx.dump({"ok": True, "location": cleared, "removed": removed, "message": text})
    else:
        ctx.print(text)
    return 0


def _refused(ctx: _Context) -> int:
    if ctx.json:
        ctx.dump({"ok": False, "problem": "not confirmed; nothing deleted (use --yes)"})
    else:
        ctx.err.write(f"{PROG}: nothing deleted (not confirmed; use --yes).\n")
    return 1


def cmd_doctor(ctx: _Context) -> int:
    try:
        checks = doctor(ctx.settings())
    except ConfigError as exc:
        checks = [
            Check("settings", Level.FAIL, _one_line(str(exc)), "Correct the flag or variable.")
        ]
    failed = any(c.status is Level.FAIL for c in checks)
    if ctx.json:
        ctx.dump({"ok": not failed, "checks": [c.as_dict() for c in checks]})
        return 1 if failed else 0
    for c in checks:
        ctx.print(f"[{c.status.value:>4}] {c.name}: {c.detail}")
        if c.fix and c.status is not Level.OK:
            ctx.print(f"       fix: {c.fix}")
    warns = sum(c.status is Level.WARN for c in checks)
    summary = "problems found" if failed else "no problems found"
    ctx.print(f"{summary} ({len(checks)} checks, {warns} warnings)")
    return 1 if failed else 0
