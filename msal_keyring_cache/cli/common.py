"""What every subcommand shares: errors, the :class:`_Context`, and reading msal's cache JSON."""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any, Optional, TextIO

from ..cache import BackendInfo, PersistentTokenCache
from ..config import DEFAULT_ENV_PREFIX, Settings, describe_settings
from ..errors import CommandError as CommandError
from ..errors import UsageError as UsageError
from ..files import atomic_write

PROG = "msal-keyring-cache"


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
        from ..factory import build_store

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
    described: dict[str, Any] = dict(info.details)
    described.update(cache.store.describe().as_dict())
    return {k: v for k, v in described.items() if _harmless(v)}


def _harmless(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


def _write_key_file(path: str, keys: Sequence[str]) -> None:
    os.close(atomic_write(path, "".join(k + "\n" for k in keys).encode("ascii")))
