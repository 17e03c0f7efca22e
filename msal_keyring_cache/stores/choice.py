"""The store ``backend="auto"``/``"keyring"`` picks, and the envelope key: what factory.py calls.

``key_in_keyring`` keeps the encrypted file's Fernet key in the credential store.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import TYPE_CHECKING, Optional

from ..errors import BackendUnavailableError, CacheError, ConfigError
from .keyring_backend import _REMEMBERED, classify_backend

if TYPE_CHECKING:
    from ..cache import BackendInfo
    from ..config import Settings
    from ..crypto import KeySource
    from .base import Store
    from .keyring import KeyringStore

__all__ = ["choose", "default_lock_path", "envelope_key"]

logger = logging.getLogger("msal_keyring_cache")

_logged: set[tuple[str, str, str]] = set()


def default_lock_path(settings: Settings) -> str:
    """The lock file beside the cache file's default location (stamp file next to it)."""
    from ..factory import default_path

    directory = os.path.dirname(settings.path or default_path(settings.app_name))
    tag = hashlib.sha256(f"{settings.service}\0{settings.keyring_account}".encode()).hexdigest()
    return os.path.join(directory, f"keyring-{tag[:12]}.lock")


def _store_for(settings: Settings, account: str, lock_path: str) -> KeyringStore:
    from .keyring import KeyringStore  # stores.keyring re-exports this module's names

    return KeyringStore(
        settings.service,
        account,
        lock_path=lock_path,
        keyring_timeout=settings.keyring_timeout,
        lock_timeout=settings.lock_timeout,
    )


def _open(store: KeyringStore) -> tuple[Optional[str], Optional[CacheError]]:
    """Resolve, classify and probe (one read). Returns (why-not-secure, error)."""
    for attempt in range(2):
        try:
            if attempt == 0:
                store.resolve()
            else:
                store.rediscover()
        except CacheError as exc:
            return None, exc
        # A remembered backend that is insecure or fails may simply be gone (no D-Bus over
        # SSH, say): decide again from keyring's own discovery, as a first run would.
        retry = attempt == 0 and store.resolved_by == _REMEMBERED
        if not store.direct:
            insecure = classify_backend(store.backend)
            if insecure is not None:
                if retry:
                    continue
                return insecure, None
        try:
            store.prime()
        except CacheError as exc:
            if retry:
                continue
            return None, exc
        return None, None
    return None, None  # pragma: no cover - the second attempt always returns


def choose(settings: Settings, env_prefix: str) -> tuple[Store, BackendInfo]:
    """The store for ``backend="auto"`` or ``"keyring"``, and why (logged once at INFO)."""
    from ..cache import BackendInfo
    from ..factory import file_store

    forced = settings.backend == "keyring"
    store = _store_for(settings, settings.keyring_account, default_lock_path(settings))
    insecure, error = _open(store)
    backend_var = settings.env_var("backend", env_prefix)
    fallback_var = settings.env_var("keyring_fallback", env_prefix)
    if insecure is None and error is None:
        reason = (
            f"backend=keyring was configured ({store.resolved_by})"
            if forced
            else f"a secure OS credential store answered ({store.resolved_by})"
        )
        return store, _info(BackendInfo("keyring", reason, store.describe()))
    if forced:
        if error is not None:
            raise error
        raise BackendUnavailableError(
            f"backend=keyring was configured, but {insecure}. Install or start a secure "
            "credential store (on Linux: gnome-keyring, KWallet or KeePassXC with its Secret "
            f"Service), or set {backend_var}=file for the encrypted file."
        )
    if error is not None and not settings.keyring_fallback:
        raise BackendUnavailableError(
            f"{error} The token cache may be kept there, so no empty file cache was started "
            f"in its place. To use the encrypted file whenever this happens, set "
            f"{fallback_var}=1; to always use it, set {backend_var}=file."
        ) from None
    fallback = file_store(settings, env_prefix)
    if error is not None:
        logger.warning(
            "The OS credential store is not usable (%s); using the encrypted file %s "
            "because keyring_fallback is set.",
            type(error).__name__,
            fallback.describe().get("location"),
        )
        reason = f"the credential store was not usable and keyring_fallback is set: {error}"
    else:
        reason = f"no secure OS credential store: {insecure}"
    return fallback, _info(BackendInfo("file", reason, fallback.describe()))


def _info(info: BackendInfo) -> BackendInfo:
    key = (info.backend, str(info.details.get("location")), info.reason)
    if key not in _logged:
        _logged.add(key)
        logger.info("Token cache backend: %s (%s)", info.backend, info.reason)
    return info


def envelope_key(settings: Settings, env_prefix: str) -> KeySource:
    """The encrypted file's Fernet key, generated once and kept in the credential store."""
    from .. import crypto
    from ..factory import default_path

    path = settings.path or default_path(settings.app_name)
    account = f"{settings.keyring_account}.key"
    store = _store_for(settings, account, path + ".key.lock")
    var = settings.env_var("key_in_keyring", env_prefix)
    insecure, error = _open(store)
    if error is not None:
        raise BackendUnavailableError(
            f"{error} ({var} keeps the cache file's key there.) Alternatively configure the "
            "key another way (…_KEY, …_PASSPHRASE or …_KEY_FILE)."
        ) from None
    if insecure is not None:
        raise BackendUnavailableError(
            f"{var} is set, but {insecure}. Use a secure credential store, or configure the "
            "key another way (…_KEY, …_PASSPHRASE or …_KEY_FILE)."
        )
    data = store.load()
    if data is None:
        with store.lock():
            data = store.load() if store.changed() else None
            if data is None:  # first use: make the key, once, under the lock
                data = crypto.generate_key().encode()
                store.save(data)
    key = data.decode("ascii", "replace").strip()
    if not crypto.is_fernet_key(key):
        raise ConfigError(
            f"The credential-store entry (service {settings.service!r}, account {account!r}) "
            "does not hold a Fernet key. Delete that entry to have a new key made (the cache "
            "file then starts empty), or configure the key another way."
        )
    return crypto.FernetKeys(
        (key,),
        label=f"the key in the OS credential store (service {settings.service!r}, "
        f"account {account!r}, {store.backend_name})",
        tag="keyring",
        protection="key in the OS credential store",
    )
