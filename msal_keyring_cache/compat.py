"""msal-extensions' public API on this library's stores: switch by changing the import line.

::

    # from msal_extensions import build_encrypted_persistence, PersistedTokenCache
    from msal_keyring_cache.compat import build_encrypted_persistence, PersistedTokenCache

    persistence = build_encrypted_persistence("~/.my-tool/token_cache.bin")
    app = msal.PublicClientApplication(CLIENT_ID, token_cache=PersistedTokenCache(persistence))

What changes underneath (see docs/migration.md):

* Every persistence is encrypted. The ones msal-extensions encrypts with the OS
  (``build_encrypted_persistence``, ``LibsecretPersistence``, ``KeychainPersistence``,
  ``FilePersistenceWithDataProtection``) keep the data in the OS credential store when a
  secure one answers, else in an encrypted file at the location — where msal-extensions
  raises (headless Linux, no libsecret). ``FilePersistence`` is an encrypted file at the
  location. Keys, timeouts and backends come from ``MSAL_KEYRING_CACHE_*`` as for
  :func:`~msal_keyring_cache.build_cache`.
* ``PersistedTokenCache`` is a :class:`~msal_keyring_cache.PersistentTokenCache`: this
  library's lock (``<location>.lock``), journal and change detection; ``lock_location`` is
  accepted and not needed.
* A plaintext file msal-extensions' ``FilePersistence`` left at the location is taken in
  (encrypted) on first use, under msal-extensions' own lock file.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

from .cache import PersistentTokenCache
from .config import DEFAULT_ENV_PREFIX, Settings
from .errors import CacheError, ConfigError, LockTimeoutError
from .factory import build_store
from .files import ensure_private_dir
from .sources import MAX_SOURCE_BYTES, msal_extensions_lock
from .stores.base import Store

__all__ = [
    "BasePersistence",
    "CrossPlatLock",
    "FilePersistence",
    "FilePersistenceWithDataProtection",
    "KeychainPersistence",
    "LibsecretPersistence",
    "LockError",
    "PersistedTokenCache",
    "PersistenceError",
    "PersistenceNotFound",
    "build_encrypted_persistence",
]

logger = logging.getLogger("msal_keyring_cache")

#: msal-extensions' name for "the lock was not obtained": here the library's own error.
LockError = LockTimeoutError

_HEADER = b'{"format":"msal-keyring-cache"'


class PersistenceError(CacheError, OSError):
    """msal-extensions' persistence error (an ``IOError``), in the library's family."""

    def __init__(
        self, err_no: Optional[int] = None, message: Optional[str] = None, location: Any = None
    ) -> None:
        OSError.__init__(self, err_no, message, location)


class PersistenceNotFound(PersistenceError):
    """``load()``/``time_last_modified()`` before anything was saved (``errno.ENOENT``)."""

    def __init__(
        self, err_no: Optional[int] = None, message: Optional[str] = None, location: Any = None
    ) -> None:
        super().__init__(
            errno.ENOENT, message or "Persistence not found: save() something first.", location
        )


class CrossPlatLock:
    """msal-extensions' lock on a file, interoperating with it across processes.

    The same protocol (exclusive creation, ``flock``, deletion on release), bounded by
    ``timeout`` (default: the ``lock_timeout`` setting); raises :data:`LockError`.
    """

    def __init__(self, lockfile_path: str, timeout: Optional[float] = None) -> None:
        self._path = os.path.abspath(os.path.expanduser(lockfile_path))
        self._timeout = timeout if timeout is not None else Settings.resolve().lock_timeout
        self._held: Optional[Any] = None

    def __enter__(self) -> CrossPlatLock:
        held = msal_extensions_lock(self._path, self._timeout)
        held.__enter__()
        self._held = held
        return self

    def __exit__(self, *exc: object) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(None, None, None)


class BasePersistence:
    """A persistence: one piece of text kept encrypted by one of this library's stores."""

    is_encrypted = True

    def __init__(self, location: str, **settings: Any) -> None:
        if not location:
            raise ValueError("Requires a file path")
        self._location = os.path.abspath(os.path.expanduser(location))
        self._settings = Settings.resolve(DEFAULT_ENV_PREFIX, path=self._location, **settings)
        ensure_private_dir(os.path.dirname(self._location))  # as msal-extensions does (0700)
        self._store: Optional[Store] = None

    def build_store(self) -> Store:
        """A new store object on this persistence's data (each cache needs its own)."""
        store, _ = build_store(self._settings)
        if _take_in_plaintext(self._location, store):
            store.close()  # it saw its own write: a fresh object loads the data
            store, _ = build_store(self._settings)
        return store

    @property
    def store(self) -> Store:
        """The store this persistence reads and writes."""
        if self._store is None:
            self._store = self.build_store()
        return self._store

    def save(self, content: str) -> None:
        """Replace the stored text with ``content`` (one write, under the store's lock)."""
        store = self.store
        with store.lock():
            store.save(content.encode("utf-8"))

    def load(self) -> str:
        """The stored text; :class:`PersistenceNotFound` before the first :meth:`save`."""
        data = self.store.load()
        if data is None:
            raise PersistenceNotFound(location=self._location)
        return data.decode("utf-8")

    def time_last_modified(self) -> float:
        """When the data last changed (a file's mtime); :class:`PersistenceNotFound` if never."""
        try:
            return os.path.getmtime(_signal_file(self.store))
        except FileNotFoundError:
            raise PersistenceNotFound(location=self._location) from None

    def get_location(self) -> str:
        """The location given (the file, or beside it the lock and change stamp)."""
        return self._location


class FilePersistence(BasePersistence):
    """msal-extensions' plaintext file: here an encrypted file at ``location``."""

    def __init__(self, location: str) -> None:
        super().__init__(location, backend="file")

    def touch(self) -> None:
        """msal-extensions' ``touch()``: make sure the file exists (saves nothing if it does)."""
        store = self.store
        with store.lock():
            if store.load() is None:
                store.save(b"")


class FilePersistenceWithDataProtection(FilePersistence):
    """Windows DPAPI in msal-extensions; here the encrypted file (``entropy`` is unused)."""

    def __init__(self, location: str, entropy: str = "") -> None:
        super().__init__(location)


class KeychainPersistence(BasePersistence):
    """macOS Keychain in msal-extensions; here the OS credential store or the encrypted file."""

    def __init__(
        self,
        signal_location: str,
        service_name: Optional[str] = None,
        account_name: Optional[str] = None,
    ) -> None:
        super().__init__(
            signal_location,
            keyring_service=service_name or "msal-extensions",
            keyring_account=account_name or _hash(signal_location),
        )


class LibsecretPersistence(BasePersistence):
    """libsecret in msal-extensions; here the OS credential store or the encrypted file.

    Where msal-extensions raises (no libsecret, no display, SSH), this keeps working with
    the encrypted file. The keyring entry's service is ``schema_name``, its account the
    ``attributes`` as ``k=v,…``; ``label`` and other keywords are accepted and unused.
    """

    def __init__(
        self,
        signal_location: str,
        schema_name: Optional[str] = None,
        attributes: Optional[dict[str, str]] = None,
        **kwargs: Any,
    ) -> None:
        account = ",".join(f"{k}={v}" for k, v in sorted((attributes or {}).items()))
        super().__init__(
            signal_location,
            keyring_service=schema_name or _hash(signal_location),
            keyring_account=account or "token-cache",
        )


class _EncryptedPersistence(BasePersistence):
    def __init__(self, location: str) -> None:
        super().__init__(location, keyring_account=_hash(location))


def build_encrypted_persistence(location: str) -> BasePersistence:
    """The encrypted persistence for this platform: the OS credential store when a secure
    one answers, else an encrypted file at ``location`` (never an exception for lack of one).
    """
    return _EncryptedPersistence(location)


class PersistedTokenCache(PersistentTokenCache):
    """msal-extensions' ``PersistedTokenCache``: a :class:`~msal_keyring_cache.PersistentTokenCache`
    on ``persistence``'s data (its own store object, this library's lock and journal).
    """

    def __init__(self, persistence: BasePersistence, lock_location: Optional[str] = None) -> None:
        if not isinstance(persistence, BasePersistence):
            raise ConfigError(
                f"PersistedTokenCache from msal_keyring_cache.compat needs a persistence from "
                f"msal_keyring_cache.compat, not {type(persistence).__module__}."
                f"{type(persistence).__qualname__}: change that import line too."
            )
        super().__init__(persistence.build_store())
        self._persistence = persistence
        self._lock_location = lock_location  # accepted for compatibility; the store locks
        self.is_encrypted = persistence.is_encrypted


def _hash(location: str) -> str:
    return hashlib.sha256(location.encode("utf-8")).hexdigest()


def _signal_file(store: Store) -> str:
    """The file whose mtime moves with every write: the cache file, or the keyring stamp."""
    path = getattr(store, "stamp_path", None) or getattr(store, "path", None)
    if not isinstance(path, str):
        raise PersistenceNotFound(message="This store has no file to take a time from.")
    return path


def _take_in_plaintext(location: str, store: Store) -> bool:
    """Encrypt what msal-extensions' ``FilePersistence`` left in plaintext at ``location``.

    Read under msal-extensions' lock file, saved only into an empty store; the plaintext
    file is replaced (file store at the same path) or deleted once the store holds it.
    An empty file is msal-extensions' marker of a cache kept elsewhere: removed (its cache
    can be brought along with ``msal-keyring-cache migrate --from <location>``).
    """
    try:
        st = os.stat(location, follow_symlinks=False)
    except OSError:
        return False
    size = st.st_size
    if not stat.S_ISREG(st.st_mode) or _is_ours(location):  # the store reports the rest
        return False
    with _both_locks(location, store):
        if _is_ours(location) or not os.path.exists(location):
            return False
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        with os.fdopen(os.open(location, flags), "rb") as fh:  # never blocks on a FIFO
            blob = fh.read(MAX_SOURCE_BYTES + 1)
        if not blob:
            os.unlink(location)
            logger.info("Removed msal-extensions' empty marker file %s.", location)
            return False
        try:
            blob.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                f"{location} holds data that is neither plaintext nor this library's format "
                "(msal-extensions encrypted it with DPAPI?); move it away or choose another "
                "location."
            ) from None
        if getattr(store, "path", None) != location and store.load() is not None:
            return False  # the store already has data: keep both, take nothing over it
        store.save(blob)
        if getattr(store, "path", None) != location:
            if store.load() != blob:
                raise CacheError(f"Could not verify {location} in the store; it was kept.")
            os.unlink(location)
        logger.warning(
            "Encrypted the plaintext msal-extensions cache %s (%d bytes) into the %s store.",
            location,
            size,
            store.backend,
        )
    return True


def _is_ours(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_HEADER)) == _HEADER
    except OSError:
        return True  # nothing readable to take in: let the store report it


@contextmanager
def _both_locks(location: str, store: Store) -> Iterator[None]:
    with store.lock(), msal_extensions_lock(location + ".lockfile", 10.0):
        yield
