"""``web-purge``: delete the expired per-user web caches from their SQL table.

Registered by the parser with ``add_web_purge(subparsers)``; the work is
:meth:`msal_keyring_cache.web.UserCaches.purge_expired`.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_web_purge", "cmd_web_purge"]


def add_web_purge(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``web-purge`` subcommand to ``subparsers``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "web-purge",
        help="Delete expired per-user web caches (SQL stores).",
        description="Delete the rows of per-user web caches whose TTL has passed, from the "
        "store named by MSAL_KEYRING_CACHE_WEB_URL (read from the environment only: it may "
        "hold a password) with the key MSAL_KEYRING_CACHE_KEY or _KEY_FILE. Run it from cron "
        "or a scheduled job; Redis expires keys by itself (nothing to do there).",
    )
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="Print one JSON document."
    )
    parser.set_defaults(handler=cmd_web_purge)
    return parser


def cmd_web_purge(ctx: Any) -> int:
    """Purge expired rows; print how many. ``ctx``: the CLI context (env prefix, output)."""
    from ..web import UserCaches

    with UserCaches.from_env(ctx.env_prefix) as caches:
        count = caches.purge_expired()
        where = repr(caches.backend)
    if ctx.json:
        ctx.dump({"purged": count, "store": where})
    else:
        ctx.print(f"Deleted {count} expired web token cache(s) from {where}.")
    return 0
