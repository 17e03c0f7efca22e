"""The cache in the OS credential store, through ``keyring``: :class:`KeyringStore`.

Layout in the credential store (service ``S``, account ``A``):

* One entry ``(S, A)`` holding the cache's JSON text — one write per save — on every
  backend without a size limit (macOS Keychain, Secret Service, KWallet …).
* Where a backend limits the size of an entry (Windows Credential Manager: 2,560 bytes,
  1,280 UTF-16 characters), a value too long is split into chunk entries
  ``(S|A|<gen>.<i>, A)`` and ``(S, A)`` holds a manifest (generation, chunk count,
  SHA-256). A save writes the new generation's chunks, then the manifest, then deletes
  the old generation's chunks; a reader checks the digest and reads again on a mismatch,
  so it never assembles a mix of two generations.

Change detection costs no credential-store round trip: every save replaces a small,
non-secret *stamp* file beside the lock file (under the lock), and
:class:`~msal_keyring_cache.watch.FileIdentity` tells whether it moved on. The stamp
also remembers which keyring backend holds the cache, so a later process loads that
backend directly instead of paying keyring's backend discovery.

``keyring`` is imported lazily; every call into it runs in a worker thread bounded by
``keyring_timeout`` (an unlock prompt or a hung D-Bus service never hangs the app).

Nearby: :mod:`.keyring_backend` (which backend, is it secure, bounded calls and error
translation) and :mod:`.secret_service` (direct Secret Service reads). Which store
``backend="auto"`` picks, and the envelope key, are the factory's business.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from typing import Any, Callable, Optional, TypeVar

from ..crypto import Protection
from ..errors import ConfigError, CorruptCacheError, KeyringTimeoutError, StoreError
from ..files import atomic_write, read_file_keep_open
from ..locking import CrossProcessLock
from ..watch import FileIdentity
from .base import Description, Store
from .keyring_backend import REMEMBERED, bounded, qualname, resolve_backend, translate
from .secret_service import SECRET_SERVICE, DirectSecretService, direct_reads_allowed

__all__ = ["WINDOWS_MAX_VALUE_LENGTH", "KeyringStore"]

logger = logging.getLogger("msal_keyring_cache")

#: Windows Credential Manager keeps at most 2,560 bytes per entry: 1,280 UTF-16 characters.
WINDOWS_MAX_VALUE_LENGTH = 1280
_KNOWN_LIMITS = {"keyring.backends.Windows.WinVaultKeyring": WINDOWS_MAX_VALUE_LENGTH}
_MANIFEST = "msal-keyring-cache-manifest:"
_STAMP_FORMAT = "msal-keyring-cache-stamp"
_READ_ATTEMPTS = 4
_PROTECTION = {
    "keyring.backends.SecretService.Keyring": "OS credential store (Secret Service: "
    "GNOME Keyring, KWallet or KeePassXC; encrypted at rest, unlocked with the login)",
    "keyring.backends.libsecret.Keyring": "OS credential store (Secret Service via libsecret)",
    "keyring.backends.kwallet.DBusKeyring": "OS credential store (KWallet)",
    "keyring.backends.macOS.Keyring": "OS credential store (macOS Keychain)",
    "keyring.backends.Windows.WinVaultKeyring": "OS credential store (Windows Credential "
    "Manager, DPAPI-encrypted per user)",
}

T = TypeVar("T")


# -- the store ----------------------------------------------------------------------------

_NOTHING: Any = object()


class KeyringStore(Store):
    """The serialized cache as an entry ``(service, account)`` in the OS credential store.

    :param service: credential-store service name.
    :param account: credential-store account (user name) under the service.
    :param lock_path: the cross-process lock file; the stamp file lives beside it.
    :param keyring_timeout: seconds each credential-store call may take (0 = no limit).
    :param lock_timeout: seconds to wait for the lock.
    :param max_value_length: characters per entry; longer values are chunked. Default:
        the backend's known limit (Windows: 1,280), else no chunking.
    :param keyring: a ``keyring.backend.KeyringBackend`` instance; default: the one keyring
        resolves (``PYTHON_KEYRING_BACKEND``, keyringrc, priorities).
    """

    backend = "keyring"

    def __init__(
        self,
        service: str,
        account: str,
        *,
        lock_path: str,
        keyring_timeout: float = 3.0,
        lock_timeout: float = 60.0,
        max_value_length: Optional[int] = None,
        keyring: Any = None,
        read_only: bool = False,
    ) -> None:
        super().__init__()
        #: Never write: damaged data raises CorruptCacheError, writes raise StoreError.
        self.read_only = read_only
        if not service or not account:
            raise ConfigError("KeyringStore needs a non-empty service and account.")
        if max_value_length is not None and max_value_length < 200:
            raise ConfigError("max_value_length must be at least 200 characters.")
        self.service = service
        self.account = account
        self.keyring_timeout = keyring_timeout
        self.max_value_length = max_value_length
        lock_path = os.path.abspath(os.path.expanduser(lock_path))
        self._lock = CrossProcessLock(lock_path, lock_timeout)
        base = lock_path[: -len(".lock")] if lock_path.endswith(".lock") else lock_path
        self.stamp_path = base + ".stamp"
        self._identity = FileIdentity(self.stamp_path)
        self._backend = keyring
        self._direct: Optional[DirectSecretService] = None
        self._direct_ok = keyring is None  # may reads bypass keyring (see resolve())?
        self.resolved_by = "given" if keyring is not None else ""
        self._loaded = False
        self._primed: Any = _NOTHING
        self._chunks: tuple[str, int] = ("", 0)  # generation and count last seen
        #: Credential-store calls made by this store (tests and benchmarks read them).
        self.calls = {"get": 0, "set": 0, "delete": 0}

    # -- backend ---------------------------------------------------------------------

    def resolve(self) -> None:
        """Choose the backend without reading the cache.

        When the stamp file says the cache was last written by keyring's SecretService
        backend and nothing tells keyring otherwise, reads go straight to the Secret
        Service (see :class:`DirectSecretService`) and keyring is imported only to write.
        """
        if self._backend is not None or self._direct is not None:
            return
        remembered = self._read_stamp_doc().get("backend")
        if self._direct_ok and remembered == SECRET_SERVICE and direct_reads_allowed():
            self._direct = DirectSecretService()
            self.resolved_by = REMEMBERED
            return
        self._backend, self.resolved_by = resolve_backend(remembered, self.keyring_timeout)

    @property
    def keyring(self) -> Any:
        """The keyring backend in use (resolved on first use)."""
        if self._backend is None:
            self._backend, self.resolved_by = resolve_backend(
                self._read_stamp_doc().get("backend"), self.keyring_timeout
            )
        return self._backend

    @property
    def direct(self) -> bool:
        """Whether reads bypass keyring (straight to the Secret Service)."""
        return self._direct is not None

    def forget_backend(self) -> None:
        """Drop the resolved backend; resolve again (without the stamp's memory) next time."""
        self._drop_direct()
        self._direct_ok = False
        self._backend = None
        self._identity.forget()
        self._loaded = False
        self._primed = _NOTHING

    def rediscover(self) -> None:
        """Resolve the backend again by keyring's own rules, ignoring the stamp's memory."""
        self.forget_backend()
        self._backend, self.resolved_by = resolve_backend(None, self.keyring_timeout)

    def _drop_direct(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    @property
    def keyring_name(self) -> str:
        if self._backend is None and self._direct is not None:
            return SECRET_SERVICE
        return qualname(self.keyring)

    def _limit(self) -> Optional[int]:
        if self.max_value_length is not None:
            return self.max_value_length
        return _KNOWN_LIMITS.get(self.keyring_name)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        self.calls[what.split()[0]] += 1
        try:
            return bounded(fn, self.keyring_timeout, what)
        except KeyringTimeoutError:
            raise
        except Exception as exc:
            raise translate(exc, what, self.keyring_name) from None

    def _get(self, service: str) -> Optional[str]:
        direct = self._direct
        if direct is not None:
            try:
                value = bounded(
                    lambda: direct.get(service, self.account), self.keyring_timeout, "get password"
                )
                self.calls["get"] += 1
                return value
            except KeyringTimeoutError:
                self._drop_direct()
                raise
            except Exception:
                # Not the plain case (locked, no default collection …): keyring's turn.
                self._drop_direct()
                self._direct_ok = False
        backend = self.keyring
        value = self._call("get password", lambda: backend.get_password(service, self.account))
        if value is not None and not isinstance(value, str):
            raise StoreError(f"The credential store returned a {type(value).__name__}, not text.")
        return value

    def _set(self, service: str, value: str) -> None:
        backend = self.keyring
        self._call("set password", lambda: backend.set_password(service, self.account, value))

    def _delete(self, service: str) -> None:
        backend = self.keyring
        with contextlib.suppress(StoreError):  # already gone (PasswordDeleteError)
            self._call("delete password", lambda: backend.delete_password(service, self.account))

    def _chunk_service(self, gen: str, index: int) -> str:
        return f"{self.service}|{self.account}|{gen}.{index}"

    # -- stamp -------------------------------------------------------------------------

    def _read_stamp_doc(self) -> dict[str, Any]:
        found = read_file_keep_open(self.stamp_path)
        if found is None:
            return {}
        os.close(found[1])
        return _parse_stamp(found[0])

    def _write_stamp(self) -> None:
        blob = json.dumps(
            {"format": _STAMP_FORMAT, "write": secrets.token_hex(8), "backend": self.keyring_name},
            separators=(",", ":"),
        ).encode()
        fd = atomic_write(self.stamp_path, blob)
        self._identity.remember(fd, blob)

    # -- Store protocol ----------------------------------------------------------------

    def lock(self) -> CrossProcessLock:
        return self._lock

    def changed(self) -> bool:
        self.stats.checks += 1
        if not self._loaded or self._primed is not _NOTHING:
            return True
        return self._identity.changed()

    def load(self) -> Optional[bytes]:
        self.stats.loads += 1
        if self._primed is not _NOTHING:
            data, self._primed = self._primed, _NOTHING
            if not self._identity.changed():
                return data  # type: ignore[no-any-return]
        for attempt in range(_READ_ATTEMPTS):
            if attempt == _READ_ATTEMPTS - 1:
                with self._lock:  # no writer can interfere now: a mismatch is real damage
                    result = self._read_once()
                if result is _NOTHING and self.read_only:
                    raise CorruptCacheError(
                        f"The token cache in the OS credential store (service "
                        f"{self.service!r}, account {self.account!r}) is damaged (a chunk is "
                        "missing or fails its digest)."
                    )
                if result is _NOTHING:
                    logger.warning(
                        "The token cache in the OS credential store (service %r, account %r) "
                        "is damaged (a chunk is missing or fails its digest); the cache starts "
                        "empty, so sign in again.",
                        self.service,
                        self.account,
                    )
                    return None
            else:
                result = self._read_once()
            if result is not _NOTHING:
                return result  # type: ignore[no-any-return]
        return None  # pragma: no cover - the last attempt always returns

    def _read_once(self) -> Any:
        """One read: stamp first (a later write then shows as a change), then the entries.

        Returns the bytes, ``None`` or ``_NOTHING`` when chunks did not add up.
        """
        found = read_file_keep_open(self.stamp_path)
        try:
            value = self._get(self.service)
            gen, count, data = "", 0, None
            if value is not None and value.startswith(_MANIFEST):
                try:
                    manifest = json.loads(value[len(_MANIFEST) :])
                    gen, count, digest = manifest["gen"], int(manifest["count"]), manifest["sha256"]
                except (ValueError, KeyError, TypeError):
                    return _NOTHING
                parts = []
                for index in range(count):
                    part = self._get(self._chunk_service(gen, index))
                    if part is None:
                        return _NOTHING  # the writer deleted this generation meanwhile
                    parts.append(part)
                data = "".join(parts).encode("utf-8")
                if hashlib.sha256(data).hexdigest() != digest:
                    return _NOTHING
            elif value is not None:
                data = value.encode("utf-8")
        except BaseException:
            if found is not None:
                os.close(found[1])
            raise
        self._identity.remember(found[1] if found else None, found[0] if found else None)
        self._chunks = (gen, count)
        self._loaded = True
        return data

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError("The credential-store entry was opened read-only.")

    def save(self, data: bytes) -> None:
        self._writable()
        self.stats.saves += 1
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise StoreError("The keyring store keeps text; the cache is not UTF-8.") from None
        old = self._chunks
        limit = self._limit()
        if limit is None or (len(text) <= limit and not text.startswith(_MANIFEST)):
            self._set(self.service, text)  # the one write of a save
            self._chunks = ("", 0)
        else:
            gen = secrets.token_hex(4)
            parts = [text[i : i + limit] for i in range(0, len(text), limit)]
            for index, part in enumerate(parts):
                self._set(self._chunk_service(gen, index), part)
            digest = hashlib.sha256(data).hexdigest()
            manifest = {"gen": gen, "count": len(parts), "sha256": digest}
            self._set(self.service, _MANIFEST + json.dumps(manifest, separators=(",", ":")))
            self._chunks = (gen, len(parts))
        self._delete_chunks(old)
        self._loaded = True
        self._primed = _NOTHING
        self._write_stamp()

    def _delete_chunks(self, chunks: tuple[str, int]) -> None:
        gen, count = chunks
        for index in range(count):
            self._delete(self._chunk_service(gen, index))

    def clear(self) -> None:
        self._writable()
        with self._lock:
            value = self._get(self.service)
            if value is not None and value.startswith(_MANIFEST):
                try:
                    manifest = json.loads(value[len(_MANIFEST) :])
                    self._delete_chunks((str(manifest["gen"]), int(manifest["count"])))
                except (ValueError, KeyError, TypeError):
                    pass
            if value is not None:
                self._delete(self.service)
            self._chunks = ("", 0)
            self._primed = _NOTHING
            self._write_stamp()
            self._loaded = True

    def prime(self) -> Optional[bytes]:
        """Read the cache now (the ``auto`` probe); the first :meth:`load` reuses it."""
        data = self.load()
        self.stats.loads -= 1  # the probe is not a load of the cache object's
        self._primed = data
        return data

    def describe(self) -> Description:
        if self._backend is not None:
            name = qualname(self._backend)
        else:
            name = SECRET_SERVICE if self._direct is not None else "not resolved yet"
        limit = self.max_value_length or _KNOWN_LIMITS.get(name)
        return Description(
            backend=self.backend,
            location=f"service {self.service!r}, account {self.account!r}",
            protection=Protection.CREDENTIAL_STORE,
            protection_text=_PROTECTION.get(name, f"OS credential store ({name})"),
            lock_file=self._lock.path,
            extra={
                "service": self.service,
                "account": self.account,
                "keyring_backend": name,
                "resolved_by": self.resolved_by,
                "chunking": f"values over {limit} characters are split" if limit else "none",
                "direct_reads": self._direct is not None,
                "stamp_file": self.stamp_path,
            },
        )

    def close(self) -> None:
        self._identity.forget()
        self._drop_direct()


def _parse_stamp(blob: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(blob)
    except ValueError:
        return {}
    if not isinstance(doc, dict) or doc.get("format") != _STAMP_FORMAT:
        return {}
    return doc
