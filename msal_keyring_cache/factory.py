"""``build_cache``: settings → key source → store → :class:`PersistentTokenCache`."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from . import crypto
from .cache import BackendInfo, PersistentTokenCache
from .config import DEFAULT_APP_NAME, DEFAULT_ENV_PREFIX, Settings
from .errors import ConfigError
from .stores.base import Store

__all__ = ["build_cache", "build_store", "default_path", "key_source"]

logger = logging.getLogger("msal_keyring_cache")
_warned: set[str] = set()


def build_cache(
    app_name: Optional[str] = None,
    *,
    env_prefix: str = DEFAULT_ENV_PREFIX,
    **settings: Any,
) -> PersistentTokenCache:
    """Make a persistent, encrypted msal token cache in one call.

    ``settings`` are the fields of :class:`~msal_keyring_cache.config.Settings`
    (``backend``, ``path``, ``key``, ``passphrase``, ``lock_timeout`` …). Explicit
    arguments win over ``<env_prefix>_*`` environment variables, which win over defaults::

        cache = build_cache("my-tool")
        app = msal.PublicClientApplication(CLIENT_ID, token_cache=cache)
    """
    resolved = Settings.resolve(env_prefix, app_name=app_name, **settings)
    store, info = build_store(resolved, env_prefix=env_prefix)
    return PersistentTokenCache(store, backend_info=info)


def build_store(
    settings: Settings, *, env_prefix: str = DEFAULT_ENV_PREFIX
) -> tuple[Store, BackendInfo]:
    """The store ``settings`` ask for, and why it was chosen."""
    if settings.backend == "file":
        store = file_store(settings, env_prefix)
        return store, BackendInfo("file", "backend=file was configured", store.describe())
    from .stores import keyring as keyring_store

    return keyring_store.choose(settings, env_prefix)


def default_path(app_name: str = DEFAULT_APP_NAME) -> str:
    """Default cache file: ``token_cache.bin`` in the user data directory of ``app_name``."""
    from platformdirs import user_data_dir

    return os.path.join(user_data_dir(app_name, appauthor=False), "token_cache.bin")


def file_store(settings: Settings, env_prefix: str = DEFAULT_ENV_PREFIX) -> Store:
    """The encrypted file store ``settings`` describe."""
    from .stores.file import EncryptedFileStore

    return EncryptedFileStore(
        settings.path or default_path(settings.app_name),
        key_source(settings, env_prefix),
        lock_timeout=settings.lock_timeout,
    )


def key_source(settings: Settings, env_prefix: str = DEFAULT_ENV_PREFIX) -> crypto.KeySource:
    """The key source for the file: key, passphrase, key file, keyring, or a generated file."""
    if settings.key:
        label = f"the configured key (key= or {settings.env_var('key', env_prefix)})"
        return crypto.FernetKeys(settings.key, label=label)
    if settings.passphrase:
        return crypto.Passphrase(settings.passphrase)
    if settings.key_file:
        keys = crypto.read_key_file(settings.key_file)
        return crypto.FernetKeys(
            keys, label=f"key file {settings.key_file}", tag="key_file", protection="key file"
        )
    if settings.key_in_keyring:
        from .stores import keyring as keyring_store

        return keyring_store.envelope_key(settings, env_prefix)
    return generated_key(settings, env_prefix)


def generated_key(settings: Settings, env_prefix: str) -> crypto.KeySource:
    """The weak default: a key file generated in the user config directory."""
    stronger = (
        f"{settings.env_var('key', env_prefix)}, {settings.env_var('passphrase', env_prefix)}, "
        f"{settings.env_var('key_file', env_prefix)} (outside the data directory) or "
        f"{settings.env_var('key_in_keyring', env_prefix)}=1"
    )
    if settings.strict:
        raise ConfigError(
            "No key is configured for the encrypted cache file, and strict mode refuses the "
            f"generated key file beside the user's data. Set one of: {stronger}."
        )
    from platformdirs import user_config_dir

    path = os.path.join(user_config_dir(settings.app_name, appauthor=False), "cache.key")
    keys = crypto.default_key_file(path)
    if path not in _warned:
        _warned.add(path)
        logger.warning(
            "No key configured for the token cache file; using the generated key file %s. "
            "It protects only against the cache file leaking alone (anyone who can read "
            "your files can read both). Stronger: %s.",
            path,
            stronger,
        )
    return crypto.FernetKeys(
        keys,
        label=f"generated key file {path}",
        tag="generated",
        protection="generated key file (weak: protects only against the cache file leaking alone)",
    )
