"""Move tokens and keys: ``migrate``, ``import``, ``export``, ``move``, ``rotate-key``,
``generate-key``."""

from __future__ import annotations

import dataclasses
import os
import signal
from contextlib import ExitStack
from typing import Any, Optional

from .. import crypto
from ..cache import PersistentTokenCache
from ..config import Settings
from ..errors import ConfigError, StoreError
from .common import (
    CommandError,
    UsageError,
    _Context,
    _env_var,
    _parse_cache,
    _write_key_file,
)

#: Test hook: ``rotate-key`` kills itself with SIGKILL right after the named step
#: (``keys-added`` or ``reencrypted``), to prove an interrupted rotation loses nothing.
CRASH_HOOK_VAR = "_MSAL_KEYRING_CACHE_CRASH_AFTER"


# -- migrate, import, export ---------------------------------------------------------------------


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
    from ..stores.file import EncryptedFileStore

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
    s_where = source.store.describe().location or source.backend_info.backend
    t_where = target.store.describe().location or target.backend_info.backend
    if source.store.backend == target.store.backend and s_where == t_where:
        raise CommandError(
            f"The cache already lives in the {source.store.backend} store ({s_where})."
        )
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
        "from": source.store.backend,
        "from_location": s_where,
        "to": target.store.backend,
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
