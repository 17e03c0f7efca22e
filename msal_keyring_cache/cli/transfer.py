"""Move tokens and keys: ``export``, ``move``, ``rotate-key``, ``generate-key``
(``migrate`` and ``import`` are in :mod:`.migrate`)."""

from __future__ import annotations

import os
import stat
from typing import Optional

from .. import crypto, manage
from ..config import check_path
from ..errors import CacheError, ConfigError
from .common import UsageError, _Context, _explained

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
    except ConfigError:
        raise
    except CacheError as exc:
        raise _explained(exc, settings) from None
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
