"""``migrate`` and ``import``: parse and print over :mod:`msal_keyring_cache.sources`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import sources
from ..errors import CacheError, CommandError, StoreError, UsageError
from .common import _Context

__all__ = ["add_import_arguments", "add_migrate_arguments", "cmd_import", "cmd_migrate"]


def add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``migrate`` subcommand's own arguments."""
    parser.add_argument(
        "--from",
        dest="source",
        metavar="SOURCE",
        help="A cache --list shows (azure-cli, azure-identity:msal.cache.nocae …) or a "
        "plaintext cache file (an empty msal-extensions marker file: its Secret Service entry).",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="Show the caches the Azure tools left here (Azure CLI, azure-identity), "
        "with their entry counts; change nothing.",
    )
    parser.add_argument(
        "--delete-source",
        action="store_true",
        help="Delete the source once every entry is verified in the secure store (only if "
        "it still holds what was migrated).",
    )


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``import`` subcommand's own arguments: ``--from PATH`` as ``migrate`` takes it
    (a bare ``PATH`` still works)."""
    parser.add_argument(
        "--from", dest="source", metavar="PATH", help="JSON cache file, or - for stdin."
    )
    parser.add_argument("path_arg", nargs="?", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument(
        "--replace", action="store_true", help="Replace the whole cache instead of merging."
    )


def cmd_migrate(ctx: _Context) -> int:
    if getattr(ctx.args, "list", False):
        return _list(ctx)
    if not ctx.args.source:
        raise UsageError("migrate needs --from SOURCE (see the caches found with --list)")
    settings = ctx.settings()
    source = sources.source_for(ctx.args.source)
    done = sources.migrate(
        source, settings, env_prefix=ctx.env_prefix, delete=bool(ctx.args.delete_source)
    )
    report = {
        "source": source.name,
        "tool": source.tool,
        "location": source.location,
        "backend": done.backend,
        "store_location": done.location,
        "entries": done.entries,
        "added_or_updated": done.added_or_updated,
        "accounts": done.accounts,
        "verified": True,
        "source_deleted": done.source_deleted,
    }
    if ctx.json:
        ctx.dump(report)
        return 0
    ctx.print(
        f"Imported {done.entries} entries ({done.added_or_updated} added or updated) for "
        f"{', '.join(done.accounts) or 'no accounts'} into {done.backend} {done.location}; "
        "verified."
    )
    if done.source_deleted:
        ctx.print(f"Deleted the source {source.location}.")
    else:
        ctx.print(
            f"The source {source.location} still holds tokens: delete it (or rerun with "
            "--delete-source) once your tools use the secure cache."
        )
    return 0


def _list(ctx: _Context) -> int:
    settings = ctx.settings()
    rows: list[dict[str, Any]] = []
    for source in sources.find_sources():
        row: dict[str, Any] = {
            "name": source.name,
            "tool": source.tool,
            "location": source.location,
            "encrypted": source.encrypted,
            "entries": None,
            "accounts": [],
            "problem": None,
        }
        try:
            snap = sources.read_source(
                source, timeout=settings.keyring_timeout, lock_timeout=settings.lock_timeout
            )
            row.update(entries=snap.entries, accounts=sources.usernames(snap.doc))
        except CacheError as exc:
            row["problem"] = str(exc)
        rows.append(row)
    if ctx.json:
        ctx.dump({"sources": rows})
        return 0
    if not rows:
        ctx.print("No caches of Azure CLI or azure-identity were found.")
        return 0
    for row in rows:
        what = (
            f"{row['entries']} entries, accounts: {', '.join(row['accounts']) or 'none'}"
            if row["problem"] is None
            else f"not migratable: {row['problem']}"
        )
        ctx.print(f"{row['name']}  ({row['tool']}) {row['location']}\n    {what}")
    return 0


def cmd_import(ctx: _Context) -> int:
    ctx.args.source = ctx.args.source or ctx.args.path_arg
    if not ctx.args.source:
        raise UsageError("import needs --from PATH (or - for standard input)")
    settings = ctx.settings()
    if ctx.args.source == "-":
        text = sys.stdin.read()
        where = "standard input"
    else:
        source = sources.source_for(ctx.args.source)
        if source.encrypted:
            raise CommandError(
                f"{source.path} is an empty marker file; use migrate --from for the "
                "encrypted cache it marks."
            )
        snap = sources.read_source(source, lock_timeout=settings.lock_timeout)
        text, where = snap.text, source.path
    doc = sources.parse_cache(text, where)  # the same check migrate makes
    if not sources.count_entries(doc):
        raise StoreError(f"{where} holds no token-cache entries; nothing was imported.")
    cache = ctx.cache(settings)
    try:
        if ctx.args.replace:
            cache.deserialize(text)
            changed = sources.count_entries(doc)
        else:
            changed = cache.merge(text)
        backend = cache.backend_info.backend
    finally:
        cache.close()
    sources.verify(doc, settings, env_prefix=ctx.env_prefix)
    report = {
        "backend": backend,
        "entries": sources.count_entries(doc),
        "added_or_updated": changed,
        "replaced": bool(ctx.args.replace),
    }
    if ctx.json:
        ctx.dump(report)
    else:
        verb = "Replaced the cache with" if ctx.args.replace else "Merged"
        ctx.print(
            f"{verb} {report['entries']} entries ({changed} added or updated) into "
            f"the {backend} store; verified."
        )
    return 0
