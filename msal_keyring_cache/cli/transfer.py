"""Move tokens and keys: ``export``, ``move``, ``rotate-key``, ``generate-key``; and, until
:mod:`.migrate` takes them over, ``migrate`` and ``import``."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import Any, Optional

from .. import crypto, manage
from ..config import check_path
from ..errors import CacheError, ConfigError, CorruptCacheError, StoreError
from ..files import read_file
from .common import CommandError, UsageError, _Context

# -- export, generate-key ---------------------------------------------------------------------


def cmd_export(ctx: _Context) -> int:
    if not ctx.args.plaintext:
        raise UsageError(
            "export prints refresh tokens in plaintext; add --plaintext to confirm "
            "(and keep the output safe)"
        )
    settings = ctx.settings()
    try:
        text = manage.export(settings)
    except CacheError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise CommandError(f"{exc} {manage.advice(exc, settings)}") from None
    if ctx.args.output:
        path = manage.write_private(ctx.args.output, text + "\n")
        ctx.err.write(f"Wrote the plaintext cache to {path} (mode 0600). Keep it safe.\n")
        return 0
    if _is_regular_file(ctx.out):
        ctx.err.write(
            "msal-keyring-cache: warning: standard output is a file, which may be readable "
            "by others; prefer --output FILE (written with mode 0600).\n"
        )
    ctx.out.write(text + "\n")
    return 0


def _is_regular_file(stream: object) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def cmd_generate_key(ctx: _Context) -> int:
    ctx.print(crypto.generate_key())
    return 0


# -- rotate-key ----------------------------------------------------------------------------------


def _new_key(ctx: _Context, var: str) -> Optional[str]:
    if ctx.args.new_key_file:
        return crypto.read_key_file(check_path(ctx.args.new_key_file, "--new-key-file"))[0]
    raw = os.environ.get(var, "").strip()
    if raw and not crypto.is_fernet_key(raw):
        raise ConfigError(
            f"{var} is not a Fernet key (32 url-safe base64-encoded bytes); "
            "make one with: msal-keyring-cache generate-key"
        )
    return raw or None


def cmd_rotate_key(ctx: _Context) -> int:
    settings = ctx.settings()
    done = manage.rotate_key(
        settings,
        new_key=_new_key(ctx, settings.env_var("new_key")),
        new_passphrase=os.environ.get(settings.env_var("new_passphrase")) or None,
        drop_old=bool(ctx.args.drop_old),
    )
    if ctx.json:
        ctx.dump(
            {
                "path": done.path,
                "fingerprint": done.fingerprint,
                "empty": done.empty,
                "key_file": done.key_file,
                "old_keys_kept": done.old_keys_kept,
                "next": done.next_step,
            }
        )
    else:
        what = "an empty cache (no file yet)" if done.empty else done.path
        ctx.print(
            f"Re-encrypted {what} under the new key (fingerprint {done.fingerprint}); "
            f"{done.next_step}."
        )
    return 0


# -- move ----------------------------------------------------------------------------------------


def cmd_move(ctx: _Context) -> int:
    settings = ctx.settings()
    done = manage.move(settings, ctx.args.to)
    var = settings.env_var("backend")
    if ctx.json:
        ctx.dump(
            {
                "from": done.source,
                "from_location": done.source_location,
                "to": done.target,
                "to_location": done.target_location,
                "entries": done.entries,
                "verified": True,
            }
        )
        return 0
    ctx.print(
        f"Moved {done.entries} entries from the {done.source} store ({done.source_location}) "
        f"to the {done.target} store ({done.target_location}); verified, and the source is "
        "now empty."
    )
    ctx.print(f"To say so for good: set {var}={done.target} (or pass --backend {done.target}).")
    return 0


# -- migrate, import (cli/migrate.py takes these over) ---------------------------------------------


def add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``migrate`` subcommand's own arguments."""
    parser.add_argument(
        "--from", dest="source", metavar="PATH", required=True, help="The plaintext cache file."
    )
    parser.add_argument(
        "--delete-source",
        action="store_true",
        help="Delete PATH once every entry is verified in the secure store.",
    )


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``import`` subcommand's own arguments: ``--from PATH`` (or, as before, ``PATH``)."""
    parser.add_argument(
        "--from", dest="source", metavar="PATH", help="JSON cache file, or - for stdin."
    )
    parser.add_argument("path_arg", nargs="?", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument(
        "--replace", action="store_true", help="Replace the whole cache instead of merging."
    )


def _source(ctx: _Context) -> str:
    source = getattr(ctx.args, "source", None) or getattr(ctx.args, "path_arg", None)
    if not source:
        raise UsageError("import needs --from PATH (or - for standard input)")
    return str(source)


def _read_plaintext(source: str) -> tuple[str, dict[str, Any]]:
    if source == "-":
        text = sys.stdin.read()
        where = "standard input"
    else:
        where = os.path.abspath(os.path.expanduser(source))
        blob = read_file(where)
        if blob is None:
            raise CommandError(f"{where} does not exist.")
        if blob.startswith(b'{"format":"msal-keyring-cache"'):
            raise CommandError(
                f"{where} is already an encrypted msal-keyring-cache file; "
                "point --path at it instead of importing it."
            )
        try:
            text = blob.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError(
                f"{where} is not a plaintext JSON token cache (it may be encrypted, e.g. with "
                "DPAPI on Windows or by the macOS keychain): export it as plaintext first."
            ) from None
    try:
        return text, manage.parse_cache(text, where)
    except CorruptCacheError as exc:
        raise CommandError(f"{exc}.") from None


def cmd_migrate(ctx: _Context) -> int:
    settings = ctx.settings()
    text, doc = _read_plaintext(ctx.args.source)
    cache = ctx.cache(settings)
    try:
        changed = cache.merge(text)
        where = cache.store.describe().location
        backend = cache.backend_info.backend
    finally:
        cache.close()
    manage.verify(settings, doc)
    source = os.path.abspath(os.path.expanduser(ctx.args.source))
    if ctx.args.delete_source:
        try:
            os.unlink(source)
        except OSError as exc:
            raise StoreError(f"Cannot delete {source}: {exc.strerror}.") from None
    names = manage.usernames(doc)
    report = {
        "source": source,
        "backend": backend,
        "location": where,
        "entries": manage.count_entries(doc),
        "added_or_updated": changed,
        "accounts": names,
        "verified": True,
        "source_deleted": bool(ctx.args.delete_source),
    }
    if ctx.json:
        ctx.dump(report)
        return 0
    ctx.print(
        f"Imported {report['entries']} entries ({changed} added or updated) for "
        f"{', '.join(names) or 'no accounts'} into {backend} {where}; verified."
    )
    if ctx.args.delete_source:
        ctx.print(f"Deleted the plaintext source {source}.")
    else:
        ctx.print(
            f"The plaintext source {source} still holds tokens: delete it "
            "(or rerun with --delete-source) once your tools use the secure cache."
        )
    return 0


def cmd_import(ctx: _Context) -> int:
    settings = ctx.settings()
    text, doc = _read_plaintext(_source(ctx))
    cache = ctx.cache(settings)
    try:
        if ctx.args.replace:
            cache.deserialize(text)
            changed = manage.count_entries(doc)
        else:
            changed = cache.merge(text)
        backend = cache.backend_info.backend
    finally:
        cache.close()
    manage.verify(settings, doc)
    report = {
        "backend": backend,
        "entries": manage.count_entries(doc),
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
