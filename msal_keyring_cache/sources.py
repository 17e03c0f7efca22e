"""Foreign token caches: find them, read them, check them, migrate them.

What the Azure tools leave on Linux (all written through msal-extensions):

* Azure CLI: ``$AZURE_CONFIG_DIR/msal_token_cache.json`` (default ``~/.azure``), plaintext,
  guarded by msal-extensions' lock file ``<file>.lockfile``; with ``encrypt_token_cache``
  an empty marker ``msal_token_cache.bin`` and the cache in the Secret Service (schema
  ``my_schema_name``, attributes ``my_attr1=foo``, ``my_attr2=bar``).
* azure-identity: ``~/.IdentityService/<name>.nocae`` and ``<name>.cae`` (``msal.cache`` by
  default; older versions: no suffix), either plaintext (``allow_unencrypted_storage``) or
  an empty marker with the cache in the Secret Service (schema ``<file name>``, attribute
  ``MsalClientID=Microsoft.Developer.IdentityService``).
* msal-extensions' own ``LibsecretPersistence(path)``: an empty marker, schema
  ``sha256(path)``.

libsecret adds the schema name as the attribute ``xdg:schema``; that is how the entries
are found here, through the Secret Service API (secretstorage, which keyring brings on
Linux), every call bounded in time. Every cache read is validated entry by entry
(:func:`parse_cache`) before anything is written, and a source is deleted only when it
still holds exactly what was migrated.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

from .cache import PersistentTokenCache
from .config import DEFAULT_ENV_PREFIX, Settings
from .errors import (
    BackendUnavailableError,
    ConfigError,
    CorruptCacheError,
    LockTimeoutError,
    StoreError,
)
from .factory import build_store
from .stores.base import validate_cache

__all__ = [
    "Migration",
    "Snapshot",
    "Source",
    "count_entries",
    "delete_source",
    "find_sources",
    "migrate",
    "msal_extensions_lock",
    "parse_cache",
    "read_source",
    "source_for",
    "usernames",
    "verify",
]

#: Refuse to read more than this from a source file (a token cache is kilobytes).
MAX_SOURCE_BYTES = 64 * 1024 * 1024

AZURE_CLI_SCHEMA = "my_schema_name"
AZURE_CLI_ATTRIBUTES = (("my_attr1", "foo"), ("my_attr2", "bar"))
IDENTITY_ATTRIBUTES = (("MsalClientID", "Microsoft.Developer.IdentityService"),)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_SCHEMA_ATTRIBUTE = "xdg:schema"  # libsecret stores the schema name under this attribute

T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """One foreign cache: a plaintext file, or a Secret Service entry with its marker file."""

    name: (
        str  #: what ``migrate --from`` accepts (``azure-cli``, ``azure-identity:msal.cache.nocae``)
    )
    tool: str  #: who writes it (``Azure CLI``, ``azure-identity``, ``msal-extensions``)
    path: str  #: the plaintext file, or the marker file beside an encrypted cache
    attributes: tuple[tuple[str, str], ...] = ()  #: Secret Service lookup (empty: plaintext)
    lock_path: Optional[str] = None  #: msal-extensions' lock file the tool takes

    @property
    def encrypted(self) -> bool:
        """Whether the cache lives in the Secret Service (``path`` is then only a marker)."""
        return bool(self.attributes)

    @property
    def location(self) -> str:
        """Where the cache is, for people (no secret)."""
        if not self.encrypted:
            return self.path
        shown = ", ".join(f"{k}={v}" for k, v in self.attributes)
        return f"Secret Service entry ({shown}); marker {self.path}"


@dataclass(frozen=True)
class Snapshot:
    """What was read from a source: its text and the validated cache."""

    source: Source
    text: str = field(repr=False)
    doc: dict[str, Any] = field(repr=False)

    @property
    def entries(self) -> int:
        """Entries of msal's credential types."""
        return count_entries(self.doc)


@dataclass(frozen=True)
class Migration:
    """The outcome of :func:`migrate`."""

    source: Source
    entries: int  #: entries read from the source
    added_or_updated: int  #: entries that were new or newer than the store's
    accounts: list[str]  #: user names of the source's accounts
    backend: str  #: the store written to (``file``, ``keyring`` …)
    location: str  #: where that store keeps the cache
    source_deleted: bool


# -- validation ---------------------------------------------------------------------------

_KINDS = ("AccessToken", "RefreshToken", "IdToken", "Account", "AppMetadata")
_KEY_FIELDS = (
    "home_account_id", "environment", "client_id", "realm", "target", "ext_cache_key",
    "credential_type", "family_id", "username", "authority_type",
)  # fmt: skip


def parse_cache(text: str, where: str = "the data") -> dict[str, Any]:
    """Parse msal's cache JSON and check every entry has the shape msal needs.

    Raises :class:`~msal_keyring_cache.CorruptCacheError` naming the first bad entry
    (by credential type and key, never its content); nothing should be imported then.
    Unknown top-level keys are kept as msal keeps them.
    """
    try:
        doc = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError):
        raise CorruptCacheError(
            f"{where} is not JSON, so it is not an msal token cache; nothing was imported."
        ) from None
    try:
        return validate_cache(doc, name_keys=True)
    except ConfigError as exc:
        raise CorruptCacheError(
            f"{where}: {exc} Fix or remove that entry, or sign in again instead of importing."
        ) from None


def count_entries(doc: Mapping[str, Any]) -> int:
    """How many entries of msal's credential types ``doc`` holds."""
    return sum(len(doc.get(kind) or {}) for kind in _KINDS)


def usernames(doc: Mapping[str, Any]) -> list[str]:
    """The user names of ``doc``'s accounts, sorted (no other field is read)."""
    names = {
        str(a.get("username") or a.get("home_account_id"))
        for a in (doc.get("Account") or {}).values()
        if isinstance(a, dict)
    }
    return sorted(names, key=str.lower)


# -- finding ------------------------------------------------------------------------------


def find_sources(environ: Optional[Mapping[str, str]] = None) -> list[Source]:
    """Every cache the Azure tools left for this user, in a stable order (none is read)."""
    env = os.environ if environ is None else environ
    found: list[Source] = []
    cli_dir = _azure_config_dir(env)
    plain = os.path.join(cli_dir, "msal_token_cache.json")
    if os.path.lexists(plain):
        found.append(Source("azure-cli", "Azure CLI", plain, (), plain + ".lockfile"))
    marker = os.path.join(cli_dir, "msal_token_cache.bin")
    if os.path.lexists(marker):
        found.append(
            Source(
                "azure-cli-encrypted",
                "Azure CLI",
                marker,
                ((_SCHEMA_ATTRIBUTE, AZURE_CLI_SCHEMA), *AZURE_CLI_ATTRIBUTES),
                marker + ".lockfile",
            )
        )
    home = env.get("HOME") or os.path.expanduser("~")
    identity = os.path.join(home, ".IdentityService")
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(identity)):
            ours = entry.startswith("msal.cache") or entry.endswith((".cae", ".nocae"))
            if ours and not entry.endswith(".lockfile"):
                found.append(_identity_source(os.path.join(identity, entry)))
    return found


def _azure_config_dir(env: Mapping[str, str]) -> str:
    given = env.get("AZURE_CONFIG_DIR")
    if given:
        return os.path.abspath(os.path.expanduser(given))
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".azure")


def _identity_source(path: str) -> Source:
    name = os.path.basename(path)
    lock = path + ".lockfile"
    if _is_empty_file(path):
        attributes = ((_SCHEMA_ATTRIBUTE, name), *IDENTITY_ATTRIBUTES)
        return Source(f"azure-identity:{name}", "azure-identity", path, attributes, lock)
    return Source(f"azure-identity:{name}", "azure-identity", path, (), lock)


def source_for(spec: str, environ: Optional[Mapping[str, str]] = None) -> Source:
    """The source ``spec`` names: a name :func:`find_sources` lists, or a file path.

    An empty file is taken for msal-extensions' marker of an encrypted cache: the entry
    is looked up the way msal-extensions names it (schema ``sha256(path)``).
    """
    for source in find_sources(environ):
        if spec == source.name:
            return source
    path = os.path.abspath(os.path.expanduser(spec))
    for source in find_sources(environ):
        if path == source.path:
            return source
    if _is_empty_file(path):
        # msal-extensions names the entry by the hash of the location as the app spelled it.
        schema = hashlib.sha256(spec.encode()).hexdigest()
        return Source(path, "msal-extensions", path, ((_SCHEMA_ATTRIBUTE, schema),))
    return Source(path, "file", path, (), None)


def _is_empty_file(path: str) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


# -- reading ------------------------------------------------------------------------------


def read_source(source: Source, *, timeout: float = 3.0, lock_timeout: float = 10.0) -> Snapshot:
    """Read and validate ``source``; refuse one that holds no entries.

    A plaintext file is read under its tool's lock file when it has one; a Secret Service
    entry through calls bounded by ``timeout`` seconds.
    """
    if source.encrypted:
        text = _read_secret(source, timeout)
    elif source.lock_path:
        with msal_extensions_lock(source.lock_path, lock_timeout):
            text = _read_text(source.path)
    else:
        text = _read_text(source.path)
    doc = parse_cache(text, source.location)
    if not count_entries(doc):
        raise StoreError(
            f"{source.location} holds no token-cache entries; there is nothing to migrate "
            "(and nothing was deleted)."
        )
    return Snapshot(source, text, doc)


def _read_text(path: str) -> str:
    try:
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        )
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist.") from None
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise StoreError(f"Cannot read {path}: {why}.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise StoreError(f"{path} is not a regular file; refusing to read it.")
        if st.st_size == 0:
            raise StoreError(
                f"{path} is empty. msal-extensions leaves an empty marker file beside a cache "
                "it keeps encrypted elsewhere; there is no cache in this file to migrate "
                "(and it was not deleted)."
            )
        if st.st_size > MAX_SOURCE_BYTES:
            raise StoreError(f"{path} is too large ({st.st_size} bytes) to be a token cache.")
        chunks, left = [], MAX_SOURCE_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise StoreError(f"Cannot read {path}: {exc.strerror}.") from None
    finally:
        os.close(fd)
    blob = b"".join(chunks)
    if blob.startswith(b'{"format":"msal-keyring-cache"'):
        raise StoreError(
            f"{path} is already an encrypted msal-keyring-cache file; point --path at it "
            "instead of migrating it."
        )
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptCacheError(
            f"{path} is not a plaintext JSON token cache (it may be encrypted, e.g. with "
            "DPAPI on Windows): export it as plaintext first; nothing was imported."
        ) from None


def _bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()`` in a daemon thread; :class:`BackendUnavailableError` after ``timeout`` s."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append((True, fn()))
        except BaseException as exc:  # handed to the caller
            result.append((False, exc))

    worker = threading.Thread(target=run, name="msal-keyring-cache-source", daemon=True)
    worker.start()
    worker.join(timeout if timeout > 0 else None)
    if not result or (not result[0][0] and isinstance(result[0][1], TimeoutError)):
        raise BackendUnavailableError(
            f"The Secret Service did not answer ({what}) within {timeout:g} s. Unlock the "
            "keyring or start its service, then try again."
        )
    ok, value = result[0]
    if not ok:
        if isinstance(value, (StoreError, BackendUnavailableError)):
            raise value
        raise BackendUnavailableError(
            f"The Secret Service could not be used ({what}: {type(value).__name__}). Check "
            "that a keyring daemon runs on this session's D-Bus and is unlocked."
        )
    return value  # type: ignore[no-any-return]


def _secret_items(source: Source, *, delete_if: Optional[str] = None) -> Optional[str]:
    """Look the entry up (optionally delete it when it still holds ``delete_if``)."""
    import secretstorage

    connection = secretstorage.dbus_init()
    try:
        items = list(secretstorage.search_items(connection, dict(source.attributes)))
        if not items:
            return None
        item = items[0]
        if item.is_locked():
            raise BackendUnavailableError(
                f"The Secret Service entry of {source.location} is locked. Unlock the keyring "
                "(log in to the desktop session) and try again."
            )
        text = bytes(item.get_secret()).decode("utf-8", "replace")
        if delete_if is not None:
            if text != delete_if:
                raise StoreError(
                    f"{source.location} changed after it was migrated; it was not deleted. "
                    "Run migrate again."
                )
            item.delete()
        return text
    finally:
        connection.close()


def _read_secret(source: Source, timeout: float) -> str:
    try:
        text = _bounded(lambda: _secret_items(source), timeout, "search and read")
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(
            f"{source.path} is msal-extensions' empty marker file; the cache it marks is kept "
            f"encrypted in the Secret Service, which could not be read: {exc} Nothing was "
            "migrated or deleted."
        ) from None
    if text is None:
        raise StoreError(
            f"{source.path} is msal-extensions' empty marker file, but its encrypted cache "
            f"was not found in the Secret Service ({source.location}); there is nothing to "
            "migrate (and nothing was deleted)."
        )
    return text


# -- msal-extensions' lock file -----------------------------------------------------------


@contextlib.contextmanager
def msal_extensions_lock(path: str, timeout: float) -> Iterator[None]:
    """Hold the lock msal-extensions' ``CrossPlatLock`` takes on ``path`` (``*.lockfile``).

    Its protocol (both its variants): create the file exclusively, waiting while it exists;
    with portalocker also ``flock`` it; delete it on release. We create it the same way and
    also ``flock`` it, so neither variant gets in while we read. A file left behind by a
    killed holder is never taken over (the other variant would not see us): after
    ``timeout`` seconds the message says to delete it.
    """
    deadline = time.monotonic() + timeout
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    while True:
        try:
            fd = os.open(path, flags, 0o600)
            break
        except FileExistsError:
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"Gave up waiting {timeout:g} s for {path}: the tool that writes this "
                    "cache holds it. If that tool is not running, the file is left over: "
                    "delete it and try again.",
                    path,
                ) from None
            time.sleep(0.02)
        except OSError as exc:
            raise LockTimeoutError(
                f"Cannot create the lock file {path}: {exc.strerror}.", path
            ) from None
    try:
        _flock(fd, path, deadline, timeout)
        os.write(fd, f"{os.getpid()} msal-keyring-cache".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # released as msal-extensions releases: the file goes
        os.close(fd)


def _flock(fd: int, path: str, deadline: float, timeout: float) -> None:
    import fcntl

    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:  # a portalocker user that stopped waiting for the file
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"Gave up waiting {timeout:g} s for {path}: the tool that writes this "
                    "cache holds it. Close it (or wait), then try again.",
                    path,
                ) from None
            time.sleep(0.02)


# -- migrating ----------------------------------------------------------------------------


def migrate(
    source: Source,
    settings: Optional[Settings] = None,
    *,
    env_prefix: str = DEFAULT_ENV_PREFIX,
    delete: bool = False,
) -> Migration:
    """Merge ``source`` into the store ``settings`` describe, verify it, optionally delete it.

    Entries already in the store are kept unless the source's are newer. The store is read
    back through a fresh store object; only when every entry arrived, and ``delete`` is
    set, is the source deleted — and only if it still holds exactly what was read.
    """
    settings = settings or Settings.resolve(env_prefix)
    snapshot = read_source(
        source, timeout=settings.keyring_timeout, lock_timeout=settings.lock_timeout
    )
    store, info = build_store(settings, env_prefix=env_prefix)
    cache = PersistentTokenCache(store, backend_info=info)
    try:
        changed = cache.merge(snapshot.text)
        location = store.describe().location
    finally:
        cache.close()
    verify(snapshot.doc, settings, env_prefix=env_prefix)
    deleted = False
    if delete:
        delete_source(
            snapshot, timeout=settings.keyring_timeout, lock_timeout=settings.lock_timeout
        )
        deleted = True
    return Migration(
        source, snapshot.entries, changed, usernames(snapshot.doc), info.backend, location, deleted
    )


def verify(
    doc: Mapping[str, Any], settings: Settings, *, env_prefix: str = DEFAULT_ENV_PREFIX
) -> None:
    """Read the store back through a fresh store object; raise unless every entry is there."""
    store, info = build_store(settings, env_prefix=env_prefix)
    fresh = PersistentTokenCache(store, backend_info=info)
    try:
        stored = json.loads(fresh.serialize())
    finally:
        fresh.close()
    missing = sum(
        1 for kind in _KINDS for key in (doc.get(kind) or {}) if key not in (stored.get(kind) or {})
    )
    if missing:
        raise StoreError(
            f"{missing} entries are missing from the store after writing them; nothing was "
            "deleted. Run the command again, or run: msal-keyring-cache doctor"
        )


def delete_source(snapshot: Snapshot, *, timeout: float = 3.0, lock_timeout: float = 10.0) -> None:
    """Delete a migrated source — only if it still holds exactly what ``snapshot`` read."""
    source = snapshot.source
    if source.encrypted:
        _bounded(lambda: _secret_items(source, delete_if=snapshot.text), timeout, "delete")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(source.path)  # the marker of the entry just deleted
        return
    guard = (
        msal_extensions_lock(source.lock_path, lock_timeout)
        if source.lock_path
        else contextlib.nullcontext()
    )
    with guard:
        if _read_text(source.path) != snapshot.text:
            raise StoreError(
                f"{source.path} changed after it was migrated; it was not deleted. Run "
                "migrate again."
            )
        try:
            os.unlink(source.path)
        except OSError as exc:
            raise StoreError(f"Cannot delete {source.path}: {exc.strerror}.") from None
