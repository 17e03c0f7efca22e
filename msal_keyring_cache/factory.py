"""``build_cache``: settings → key source → store → :class:`PersistentTokenCache`.

Also the policy of which store ``backend="auto"``/``"keyring"`` picks (a secure credential
store that answers, else the encrypted file) and the envelope key (``key_in_keyring``:
the file's Fernet key kept in the credential store).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import crypto
from .cache import BackendInfo, PersistentTokenCache
from .config import DEFAULT_APP_NAME, DEFAULT_ENV_PREFIX, Settings
from .errors import (
    BackendUnavailableError,
    CacheError,
    ConfigError,
    CorruptCacheError,
    DecryptError,
    StoreError,
)
from .stores.base import Store
from .stores.keyring_backend import REMEMBERED, classify_backend

if TYPE_CHECKING:
    from .stores.credential import KeyringStore

__all__ = [
    "build_cache",
    "build_store",
    "choose",
    "default_lock_path",
    "default_path",
    "envelope_account",
    "envelope_key",
    "generated_key_path",
    "key_source",
]

logger = logging.getLogger("msal_keyring_cache")
_warned: set[str] = set()


def build_cache(
    app_name: Optional[str] = None,
    *,
    env_prefix: str = DEFAULT_ENV_PREFIX,
    http_cache: bool = False,
    **settings: Any,
) -> PersistentTokenCache:
    """Make a persistent, encrypted msal token cache in one call.

    ``settings`` are the fields of :class:`~msal_keyring_cache.config.Settings`
    (``backend``, ``path``, ``key``, ``passphrase``, ``lock_timeout`` …). Explicit
    arguments win over ``<env_prefix>_*`` environment variables, which win over defaults::

        cache = build_cache("my-tool")
        app = msal.PublicClientApplication(CLIENT_ID, token_cache=cache)

    With ``http_cache=True``, ``cache.http_cache`` is msal's ``http_cache=`` mapping kept
    beside the cache (sealed, see :mod:`~msal_keyring_cache.http_cache`): pass it too, and
    a new process that finds its token makes no request at all.
    """
    resolved = Settings.resolve(env_prefix, app_name=app_name, **settings)
    store, info = build_store(resolved, env_prefix=env_prefix)
    cache = PersistentTokenCache(store, backend_info=info)
    if http_cache:
        from .http_cache import HttpCache

        cache.http_cache = HttpCache.beside(store)
    return cache


def build_store(
    settings: Settings, *, env_prefix: Optional[str] = None, read_only: bool = False
) -> tuple[Store, BackendInfo]:
    """The store ``settings`` ask for, and why it was chosen.

    ``read_only=True`` (``status``, ``accounts``, ``doctor``, ``export``): the store never
    writes, moves or creates anything, not even a key file; damaged data raises
    :class:`~msal_keyring_cache.CorruptCacheError` instead of being set aside, and a
    write raises :class:`~msal_keyring_cache.StoreError`.
    """
    env_prefix = env_prefix or settings.env_prefix
    if settings.backend == "file":
        store = file_store(settings, env_prefix, read_only=read_only)
        return store, BackendInfo("file", "backend=file was configured", store.describe())
    return choose(settings, env_prefix, read_only=read_only)


def default_path(app_name: str = DEFAULT_APP_NAME) -> str:
    """Default cache file: ``token_cache.bin`` in the user data directory of ``app_name``."""
    from platformdirs import user_data_dir

    return os.path.join(user_data_dir(app_name, appauthor=False), "token_cache.bin")


def file_store(
    settings: Settings, env_prefix: Optional[str] = None, *, read_only: bool = False
) -> Store:
    """The encrypted file store ``settings`` describe."""
    from .stores.file import EncryptedFileStore

    return EncryptedFileStore(
        settings.path or default_path(settings.app_name),
        key_source(settings, env_prefix, read_only=read_only),
        lock_timeout=settings.lock_timeout,
        read_only=read_only,
    )


def key_source(
    settings: Settings, env_prefix: Optional[str] = None, *, read_only: bool = False
) -> crypto.KeySource:
    """The key source for the file: key, passphrase, key file, keyring, or a generated file.

    ``read_only=True`` never creates a key: a generated key file or envelope key that does
    not exist yet gives a key source that decrypts nothing (and says why).
    """
    env_prefix = env_prefix or settings.env_prefix
    if settings.key:
        label = f"the configured key from {settings.env_var('key', env_prefix)} (or key=)"
        return crypto.FernetKeys(settings.key, label=label)
    if settings.passphrase:
        return crypto.Passphrase(settings.passphrase)
    if settings.key_file:
        keys = crypto.read_key_file(settings.key_file)
        return crypto.FernetKeys(
            keys,
            label=f"key file {settings.key_file}",
            tag="key_file",
            protection="key file",
            level=crypto.Protection.KEY_FILE,
            path=settings.key_file,
        )
    if settings.key_in_keyring:
        return envelope_key(settings, env_prefix, read_only=read_only)
    return generated_key(settings, env_prefix, read_only=read_only)


def generated_key_path(settings: Settings) -> str:
    """Where the generated (weak) key file lives: ``cache.key`` in ``app_name``'s config dir."""
    from platformdirs import user_config_dir

    return os.path.join(user_config_dir(settings.app_name, appauthor=False), "cache.key")


class MissingKey(crypto.KeySource):
    """The key a read-only look needs does not exist: nothing can be decrypted with it."""

    def __init__(
        self,
        label: str,
        why: str,
        level: crypto.Protection,
        path: Optional[str],
        protection: Optional[str] = None,
    ):
        self.label = label
        self.why = why
        self.tag = "missing"
        self.protection = protection or f"{label} (does not exist yet)"
        self.level = level
        self.path = path

    def keys_for(self, header: crypto.Header) -> list[str]:
        raise DecryptError(self.why)

    def new_header(self, previous: Optional[crypto.Header]) -> tuple[crypto.Header, str]:
        raise StoreError(f"{self.label} does not exist, and this look at the cache is read-only.")


def generated_key(
    settings: Settings, env_prefix: Optional[str] = None, *, read_only: bool = False
) -> crypto.KeySource:
    """The weak default: a key file generated in the user config directory.

    Its WARNING is logged once, when the key file is made; ``status`` and ``doctor``
    report the weak protection every time.
    """
    env_prefix = env_prefix or settings.env_prefix
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
    path = generated_key_path(settings)
    created = not os.path.exists(path)
    if created and read_only:
        return MissingKey(
            f"generated key file {path}",
            f"No key is configured and the generated key file {path} does not exist, so "
            "nothing stored can be decrypted (a new key would never decrypt it either). "
            f"Configure the key the cache was written with ({stronger}).",
            crypto.Protection.WEAK,
            path,
            f"generated key file {path}, made at the first sign-in (weak: it protects only "
            "against the cache file leaking alone)",
        )
    keys = crypto.default_key_file(path)
    if created and path not in _warned:
        _warned.add(path)
        logger.warning(
            "No key configured for the token cache file; made the generated key file %s "
            "(weak: it protects only against the cache file leaking alone). Stronger: %s.",
            path,
            stronger,
        )
    return crypto.FernetKeys(
        keys,
        label=f"generated key file {path}",
        tag="generated",
        protection="generated key file (weak: protects only against the cache file leaking alone)",
        level=crypto.Protection.WEAK,
        path=path,
    )


# -- backend choice and the envelope key ------------------------------------------------

_logged: set[tuple[str, str, str]] = set()


def default_lock_path(settings: Settings, account: Optional[str] = None) -> str:
    """The lock file of the credential-store entry ``(service, account)`` (stamp beside it).

    Derived from the entry alone — not from ``app_name`` or ``path`` — in one per-user
    directory, so every process that shares the entry shares its lock and change stamp.
    """
    from platformdirs import user_data_dir

    account = account or settings.keyring_account
    tag = hashlib.sha256(f"{settings.service}\0{account}".encode()).hexdigest()
    directory = os.path.join(user_data_dir(DEFAULT_APP_NAME, appauthor=False), "keyring")
    return os.path.join(directory, f"keyring-{tag[:16]}.lock")


def _store_for(
    settings: Settings,
    account: Optional[str] = None,
    *,
    read_only: bool = False,
    validate: Optional[Callable[[str], bool]] = None,
) -> KeyringStore:
    from .stores.credential import KeyringStore

    account = account or settings.keyring_account
    return KeyringStore(
        settings.service,
        account,
        lock_path=default_lock_path(settings, account),
        keyring_timeout=settings.keyring_timeout,
        lock_timeout=settings.lock_timeout,
        max_value_length=settings.max_value_length,
        read_only=read_only,
        validate=validate,
    )


def _open(store: KeyringStore) -> tuple[Optional[str], Optional[CacheError]]:
    """Resolve, classify and probe (one read). Returns (why-not-secure, error).

    Every step is bounded by the store's ``keyring_timeout``.
    """
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
        retry = attempt == 0 and store.resolved_by == REMEMBERED
        if not store.direct:
            try:
                insecure = classify_backend(store.keyring, store.keyring_timeout)
            except CacheError as exc:
                if retry:
                    continue
                return None, exc
            if insecure is not None:
                if retry:
                    continue
                return insecure, None
        try:
            store.prime()
        except CorruptCacheError:
            raise  # damaged data (read-only store): report it, it is not an unusable store
        except CacheError as exc:
            if retry:
                continue
            return None, exc
        return None, None
    return None, None  # pragma: no cover - the second attempt always returns


def _file_holds_data(settings: Settings) -> Optional[str]:
    """The cache file's path if it exists and is not empty (``auto`` goes where data is)."""
    path = settings.path or default_path(settings.app_name)
    try:
        return path if os.path.getsize(path) > 0 else None
    except OSError:
        return None


def choose(
    settings: Settings, env_prefix: Optional[str] = None, *, read_only: bool = False
) -> tuple[Store, BackendInfo]:
    """The store for ``backend="auto"`` or ``"keyring"``, and why (logged once at INFO).

    Under ``auto``, a credential store that holds no cache while the encrypted file does
    (after ``move --to file``, or a cache written while no keyring answered) gives the file:
    the tokens are where they are, never silently replaced by an empty cache. With
    ``key_in_keyring``, ``auto`` is envelope mode (the file holds the cache, the credential
    store its key). ``read_only``: nothing is written, moved or created.
    """
    env_prefix = env_prefix or settings.env_prefix
    forced = settings.backend == "keyring"
    backend_var = settings.env_var("backend", env_prefix)
    fallback_var = settings.env_var("keyring_fallback", env_prefix)
    envelope_var = settings.env_var("key_in_keyring", env_prefix)
    if settings.key_in_keyring:
        if forced:
            raise ConfigError(
                f"backend=keyring keeps the whole cache in the credential store, but "
                f"{envelope_var}=1 asks for the cache in the encrypted file with only its key "
                f"there. Choose one: unset {envelope_var}, or set {backend_var}=auto or file."
            )
        # Envelope mode: the file holds the cache, the credential store holds its key.
        store_file = file_store(settings, env_prefix, read_only=read_only)
        reason = (
            f"{envelope_var}=1: the encrypted file holds the cache and the OS credential "
            "store holds its key"
        )
        return store_file, _info(BackendInfo("file", reason, store_file.describe()))
    store = _store_for(settings, read_only=read_only)
    insecure, error = _open(store)
    if insecure is None and error is None:
        if forced:
            reason = f"backend=keyring was configured ({store.resolved_by})"
        else:
            moved = store.probed_empty and _file_holds_data(settings)
            if moved:
                # The data is in the file (e.g. after `move --to file`): go where it is.
                store.close()
                fallback = file_store(settings, env_prefix, read_only=read_only)
                reason = (
                    f"the OS credential store answered but holds no token cache, and the "
                    f"encrypted file {moved} does (moved there?); set {backend_var}=keyring "
                    "to use the credential store"
                )
                return fallback, _info(BackendInfo("file", reason, fallback.describe()))
            reason = f"a secure OS credential store answered ({store.resolved_by})"
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
        said = str(error).replace("…_", f"{settings.env_prefix}_")  # name the real variables
        advice = (
            ""
            if fallback_var in said  # the error already said what to do: once is enough
            else f" To use the encrypted file whenever this happens, set {fallback_var}=1; "
            f"to always use it, set {backend_var}=file."
        )
        raise BackendUnavailableError(
            f"{said} The token cache may be kept there, so no empty file cache was started "
            f"in its place.{advice}"
        ) from None
    fallback = file_store(settings, env_prefix, read_only=read_only)
    if error is not None:
        logger.warning(
            "The OS credential store is not usable (%s); using the encrypted file %s "
            "because keyring_fallback is set.",
            type(error).__name__,
            fallback.describe().location,
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


def envelope_account(settings: Settings) -> str:
    """The credential-store account (under ``settings.service``) that holds the envelope's
    key: the cache's account name with ``.key`` after it."""
    return f"{settings.keyring_account}.key"


def envelope_key(
    settings: Settings, env_prefix: Optional[str] = None, *, read_only: bool = False
) -> crypto.KeySource:
    """The encrypted file's Fernet key, kept in the credential store.

    A key is made only when neither the key entry nor the encrypted file exists: an entry
    that reads back empty while the file exists (a spurious "not found", a wiped entry)
    raises instead, so the only key that decrypts the file is never replaced. With
    ``read_only`` nothing is ever made, set aside or written: a missing key raises.
    """
    env_prefix = env_prefix or settings.env_prefix
    path = settings.path or default_path(settings.app_name)
    account = envelope_account(settings)
    store = _store_for(
        settings,
        account,
        read_only=read_only,
        validate=lambda text: crypto.is_fernet_key(text.strip()),
    )
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
    entry = f"service {settings.service!r}, account {account!r}"
    data = store.load()
    if data is None and read_only:
        return MissingKey(
            f"the key in the OS credential store ({entry})",
            f"{var} is set, but the credential store holds no key for the cache file {path} "
            f"({entry}); nothing was created (read-only), and a new key would never decrypt "
            "what is stored.",
            crypto.Protection.CREDENTIAL_STORE,
            None,
        )
    if data is None:
        with store.lock():
            data = store.load()
            if data is None:
                if os.path.lexists(path):
                    raise DecryptError(
                        f"The cache file {path} exists, but its key is not in the OS "
                        f"credential store ({entry}: it read back empty). No new key was made: "
                        "it could never decrypt that file. If the credential store was only "
                        "slow or locked, try again; if the key is gone for good, delete the "
                        "cache file (everyone signs in again) or restore the entry."
                    )
                # First use: no key and no file. Make the key, once, under the lock.
                data = crypto.generate_key().encode()
                store.save(data)
    key = data.decode("ascii", "replace").strip()
    if not crypto.is_fernet_key(key):
        raise ConfigError(
            f"The credential-store entry ({entry}) does not hold a Fernet key. Restore the "
            "key, or delete that entry and the cache file to start over, or configure the "
            "key another way."
        )
    return crypto.FernetKeys(
        (key,),
        label=f"the key in the OS credential store ({entry}, {store.keyring_name})",
        tag="keyring",
        protection="key in the OS credential store",
        level=crypto.Protection.CREDENTIAL_STORE,
    )
