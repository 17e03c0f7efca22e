"""The cache in the OS credential store, through ``keyring``: :class:`KeyringStore`.

Layout in the credential store (service ``S``, account ``A``):

* One entry ``(S, A)`` holding the cache's JSON text — one write per save — on every
  backend without a size limit (macOS Keychain, Secret Service, KWallet …).
* Where a backend limits the size of an entry (Windows Credential Manager: 2,560 bytes,
  1,280 UTF-16 characters), a value too long is split into chunk entries
  ``(S|A|<gen>.<i>, A)`` and ``(S, A)`` holds a manifest (generation, chunk count,
  SHA-256). A save writes the new generation's chunks, then the manifest, then deletes
  the old generation's chunks; a reader checks the digest and reads again on a mismatch,
  so it never assembles a mix of two generations, and a save killed before its manifest
  leaves the previous generation in force. A backend that refuses a value as too large
  (Windows' error 1783 and its kin) switches the store to chunks by itself; the limit
  is remembered in the stamp file.
* Data that cannot be read (not JSON, a manifest that does not parse, chunks that do not
  add up) is never written over: a writing store copies it to ``(S, A.corrupt-<time>)``
  first; a read-only store raises :class:`~msal_keyring_cache.CorruptCacheError`.

Change detection costs no credential-store round trip: every save replaces a small,
non-secret *stamp* file beside the lock file (under the lock), and
:class:`~msal_keyring_cache.watch.FileIdentity` tells whether it moved on. The stamp
also remembers which keyring backend holds the cache (a later process loads that
backend directly instead of paying keyring's backend discovery), the size limit learnt,
and every chunk generation and set-aside entry not yet deleted, so :meth:`clear`
removes everything the store ever wrote, even after a killed save.

``keyring`` is imported lazily; every call into it or D-Bus runs in a worker thread
bounded by ``keyring_timeout`` (an unlock prompt or a hung D-Bus service never hangs the
app).

Nearby: :mod:`.keyring_backend` (which backend, is it secure, bounded calls and error
translation) and :mod:`.secret_service` (the Secret Service on one kept connection).
Which store ``backend="auto"`` picks, and the envelope key, are the factory's business.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import time
from typing import Any, Callable, Optional, TypeVar, Union

from ..crypto import Protection
from ..errors import ConfigError, CorruptCacheError, KeyringTimeoutError, StoreError
from ..files import atomic_write, check_not_symlink, ensure_private_dir, read_file_keep_open
from ..locking import CrossProcessLock
from ..watch import FileIdentity
from .base import Description, Store
from .keyring_backend import REMEMBERED, bounded, qualname, resolve_backend, too_large, translate
from .secret_service import SECRET_SERVICE, DirectSecretService, direct_reads_allowed

__all__ = ["MIN_VALUE_LENGTH", "WINDOWS_MAX_VALUE_LENGTH", "KeyringStore"]

logger = logging.getLogger("msal_keyring_cache")

#: Windows Credential Manager keeps at most 2,560 bytes per entry: 1,280 UTF-16 characters.
WINDOWS_MAX_VALUE_LENGTH = 1280
#: The smallest chunk size accepted (a manifest must fit in one entry).
MIN_VALUE_LENGTH = 200
_KNOWN_LIMITS = {"keyring.backends.Windows.WinVaultKeyring": WINDOWS_MAX_VALUE_LENGTH}
_MANIFEST = "msal-keyring-cache-manifest:"
_STAMP_FORMAT = "msal-keyring-cache-stamp"
_READ_ATTEMPTS = 4
_MAX_CHUNKS = 100_000
_MAX_STAMP = 64 * 1024  # a stamp is ~200 bytes; more is not ours
_MAX_LISTED = 64  # generations / set-aside entries a stamp keeps track of
_GEN = re.compile(r"[0-9a-f]{1,32}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
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


# -- the stamp and the manifest: small parsers that never raise ------------------------


def parse_stamp(blob: bytes) -> dict[str, Any]:
    """The stamp file's fields, checked; ``{}`` for anything that is not a valid stamp.

    A stamp that does not parse (damaged, hostile, 2,000 nested ``[``) counts as no stamp:
    the backend is discovered again and the next write replaces it. Fields of the wrong
    type are dropped one by one.
    """
    if len(blob) > _MAX_STAMP:
        return {}
    try:
        doc = json.loads(blob)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != _STAMP_FORMAT:
        return {}
    out: dict[str, Any] = {"format": _STAMP_FORMAT}
    if isinstance(doc.get("backend"), str) and len(doc["backend"]) <= 200:
        out["backend"] = doc["backend"]
    limit = doc.get("limit")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= MIN_VALUE_LENGTH:
        out["limit"] = limit
    gens = doc.get("gens")
    if isinstance(gens, list):
        out["gens"] = [g for g in gens[:_MAX_LISTED] if isinstance(g, str) and _GEN.fullmatch(g)]
    digest = doc.get("sha256")
    if isinstance(digest, str) and _DIGEST.fullmatch(digest):
        out["sha256"] = digest
    aside = doc.get("aside")
    if isinstance(aside, list):
        out["aside"] = [a for a in aside[:_MAX_LISTED] if isinstance(a, str) and len(a) <= 300]
    return out


def parse_manifest(value: str) -> Optional[tuple[str, int, str]]:
    """``(generation, chunk count, sha256)`` of a manifest entry, or ``None`` if it is damaged."""
    if not value.startswith(_MANIFEST) or len(value) > 4096:
        return None
    try:
        doc = json.loads(value[len(_MANIFEST) :])
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    gen, count, digest = doc.get("gen"), doc.get("count"), doc.get("sha256")
    if not (isinstance(gen, str) and _GEN.fullmatch(gen)):
        return None
    if not (isinstance(count, int) and not isinstance(count, bool) and 0 < count <= _MAX_CHUNKS):
        return None
    if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
        return None
    return gen, count, digest


def format_manifest(gen: str, count: int, digest: str) -> str:
    """The manifest entry for chunks ``gen.0 … gen.<count-1>`` of data with ``digest``."""
    return _MANIFEST + json.dumps(
        {"gen": gen, "count": count, "sha256": digest}, separators=(",", ":")
    )


def _replace(path: str, blob: bytes) -> int:
    """Replace a small file atomically (0600) without fsync; a descriptor open on it."""
    directory = os.path.dirname(path) or "."
    ensure_private_dir(directory)
    check_not_symlink(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags | getattr(os, "O_BINARY", 0), 0o600)
        try:
            os.write(fd, blob)  # ~200 bytes: one write
            if os.name != "posix":  # Windows cannot rename a file that is open
                os.close(fd)
                fd = -1
            os.replace(tmp, path)
            if fd < 0:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise StoreError(
            f"Cannot write {path}: {exc.strerror}. Check free disk space and the directory's "
            "permissions."
        ) from None
    return fd


def _is_cache_text(text: str) -> bool:
    """Whether ``text`` is what a save writes: a JSON object (msal's cache)."""
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


class _Damaged:
    """A read that found data it cannot use: the raw value to keep aside, and why.

    ``transient``: chunks that did not add up — maybe a writer between generations, so
    read again (under the lock, last) before calling it damage.
    """

    def __init__(self, value: str, why: str, *, transient: bool = False) -> None:
        self.value = value
        self.why = why
        self.transient = transient


class _TooLarge(Exception):
    """A write the backend refused as too large for one entry (carries its error)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


class _NoLock(CrossProcessLock):
    """A read-only store's lock: creates no file and excludes nobody."""

    def __enter__(self) -> _NoLock:
        return self

    def acquire(self, timeout: Optional[float] = None) -> _NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _holds(self) -> bool:
        return False

    def attempt(self) -> bool:
        return True


# -- the store ----------------------------------------------------------------------------

_NOTHING: Any = object()


class KeyringStore(Store):
    """The serialized cache as an entry ``(service, account)`` in the OS credential store.

    :param service: credential-store service name.
    :param account: credential-store account (user name) under the service.
    :param lock_path: the cross-process lock file; the stamp file lives beside it. Derive
        it from ``service`` and ``account`` (the factory does), so every process sharing
        the entry shares the lock.
    :param keyring_timeout: seconds each credential-store call may take (positive, finite).
    :param lock_timeout: seconds to wait for the lock.
    :param max_value_length: characters per entry; longer values are chunked. Default:
        the backend's known limit (Windows: 1,280), else one learnt when the backend
        refuses a value as too large, else no chunking.
    :param keyring: a ``keyring.backend.KeyringBackend`` instance; default: the one keyring
        resolves (``PYTHON_KEYRING_BACKEND``, keyringrc, priorities).
    :param read_only: never write, delete, set aside or create anything (no lock or stamp
        file either); damaged data raises :class:`~msal_keyring_cache.CorruptCacheError`.
    :param validate: tells whether an entry's text is usable; anything else is damaged
        data, kept aside and never written over. Default: a JSON object (msal's cache).
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
        validate: Optional[Callable[[str], bool]] = None,
    ) -> None:
        super().__init__()
        if not service or not account:
            raise ConfigError("KeyringStore needs a non-empty service and account.")
        if max_value_length is not None and not max_value_length >= MIN_VALUE_LENGTH:
            raise ConfigError(f"max_value_length must be at least {MIN_VALUE_LENGTH} characters.")
        if not (
            isinstance(keyring_timeout, (int, float))
            and math.isfinite(keyring_timeout)
            and keyring_timeout > 0
        ):
            raise ConfigError(
                f"keyring_timeout must be a positive number of seconds, not {keyring_timeout!r}."
            )
        self.service = service
        self.account = account
        self.keyring_timeout = float(keyring_timeout)
        self.max_value_length = max_value_length
        self.read_only = read_only
        self._valid = validate or _is_cache_text
        lock_path = os.path.abspath(os.path.expanduser(lock_path))
        self._lock = CrossProcessLock(lock_path, lock_timeout)
        base = lock_path[: -len(".lock")] if lock_path.endswith(".lock") else lock_path
        self.stamp_path = base + ".stamp"
        self._identity = FileIdentity(self.stamp_path)
        self._backend = keyring
        self._direct: Optional[DirectSecretService] = None
        self._direct_ok = keyring is None  # may calls bypass keyring (see resolve())?
        self.resolved_by = "given" if keyring is not None else ""
        self._loaded = False
        self._primed: Any = _NOTHING
        self._chunks: tuple[str, int] = ("", 0)  # generation and count last seen
        self._learnt: Optional[int] = None  # a limit learnt from a refused write
        self._written: Optional[str] = None  # digest of the plain value this store wrote
        #: Credential-store calls made by this store (tests and benchmarks read them).
        self.calls = {"get": 0, "set": 0, "delete": 0}

    # -- backend ---------------------------------------------------------------------

    def resolve(self) -> None:
        """Choose the backend without reading the cache.

        When the stamp file says the cache was last written by keyring's SecretService
        backend and nothing tells keyring otherwise, calls go straight to the Secret
        Service (see :class:`DirectSecretService`) and keyring is imported only if needed.
        """
        if self._backend is not None or self._direct is not None:
            return
        remembered = self._read_stamp_doc().get("backend")
        if self._direct_ok and remembered == SECRET_SERVICE and direct_reads_allowed():
            self._direct = DirectSecretService()
            self.resolved_by = REMEMBERED
            return
        self._backend, self.resolved_by = resolve_backend(remembered, self.keyring_timeout)

    # The properties' bodies are plain methods: mutmut mutates no decorated function.
    @property
    def keyring(self) -> Any:
        """The keyring backend in use (resolved on first use, within ``keyring_timeout``)."""
        return self._resolve()

    def _resolve(self) -> Any:
        if self._backend is None:
            self._backend, self.resolved_by = resolve_backend(
                self._read_stamp_doc().get("backend"), self.keyring_timeout
            )
        return self._backend

    @property
    def direct(self) -> bool:
        """Whether calls bypass keyring (straight to the Secret Service)."""
        return self._bypass()

    def _bypass(self) -> bool:
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

    def _channel(self) -> Optional[DirectSecretService]:
        """The kept Secret Service connection, when keyring would use the Secret Service."""
        if (
            self._direct is None
            and self._direct_ok
            and self._backend is not None
            and qualname(self._backend) == SECRET_SERVICE
            and direct_reads_allowed()
        ):
            self._direct = DirectSecretService()
        return self._direct

    @property
    def keyring_name(self) -> str:
        """Qualified class name of the keyring backend in use."""
        return self._name()

    def _name(self) -> str:
        if self._backend is None and self._direct is not None:
            return SECRET_SERVICE
        return qualname(self.keyring)

    def _limit(self) -> Optional[int]:
        if self.max_value_length is not None:
            return self.max_value_length
        if self._learnt is not None:
            return self._learnt
        return _KNOWN_LIMITS.get(self.keyring_name)

    # -- bounded calls -----------------------------------------------------------------

    def _run(
        self, what: str, direct: Callable[[DirectSecretService], T], slow: Callable[[Any], T]
    ) -> T:
        """One credential-store call: on the kept connection if possible, else keyring."""
        self.calls[what.split()[0]] += 1
        channel = self._channel()
        if channel is not None:
            try:
                return bounded(lambda: direct(channel), self.keyring_timeout, what)
            except KeyringTimeoutError:
                self._drop_direct()
                raise
            except Exception:
                # Not the plain case (locked, no default collection, a prompt …): keyring's turn.
                self._drop_direct()
                self._direct_ok = False
        try:
            backend = self.keyring
            return bounded(lambda: slow(backend), self.keyring_timeout, what)
        except KeyringTimeoutError:
            raise
        except Exception as exc:
            if what.startswith("set") and too_large(exc):
                raise _TooLarge(exc) from None
            raise translate(exc, what, self._name_or_unknown()) from None

    def _name_or_unknown(self) -> str:
        if self._backend is not None:
            return qualname(self._backend)
        return SECRET_SERVICE if self._direct is not None else "not resolved"

    def _get(self, service: str) -> Optional[str]:
        account = self.account
        value = self._run(
            "get password",
            lambda c: c.get(service, account),
            lambda b: b.get_password(service, account),
        )
        if value is not None and not isinstance(value, str):
            raise StoreError(f"The credential store returned a {type(value).__name__}, not text.")
        return value

    def _set(self, service: str, value: str, account: Optional[str] = None) -> None:
        user = account or self.account
        try:
            self._run(
                "set password",
                lambda c: c.set(service, user, value),
                lambda b: b.set_password(service, user, value),
            )
        except _TooLarge as exc:
            raise translate(exc.error, "set password", self._name_or_unknown()) from None

    def _set_raw(self, service: str, value: str) -> Optional[BaseException]:
        """Write one entry; return (not raise) the backend's "too large" refusal."""
        account = self.account
        try:
            self._run(
                "set password",
                lambda c: c.set(service, account, value),
                lambda b: b.set_password(service, account, value),
            )
        except _TooLarge as exc:
            return exc.error
        return None

    def _delete(self, service: str, account: Optional[str] = None) -> bool:
        """Delete one entry; ``False`` if it was not there. A refused delete raises.

        keyring reports "not found" and "access denied" with the same exception, so a
        failed delete is checked by reading the entry again: only a gone entry is success.
        """
        user = account or self.account
        try:
            done = self._run(
                "delete password",
                lambda c: c.delete(service, user),
                lambda b: b.delete_password(service, user),
            )
            return done is not False
        except KeyringTimeoutError:
            raise
        except StoreError as refused:
            still = self._run(
                "get password",
                lambda c: c.get(service, user),
                lambda b: b.get_password(service, user),
            )
            if still is None:
                return False
            raise StoreError(
                f"The OS credential store refused to delete the entry (service {service!r}, "
                f"account {user!r}): {refused} It still holds token data: delete it with the "
                "credential store's own tool, or fix its permissions and run the command again."
            ) from None

    def _chunk_service(self, gen: str, index: int) -> str:
        return f"{self.service}|{self.account}|{gen}.{index}"

    # -- stamp -------------------------------------------------------------------------

    def _read_stamp_doc(self) -> dict[str, Any]:
        found = read_file_keep_open(self.stamp_path)
        if found is None:
            return {}
        os.close(found[1])
        doc = parse_stamp(found[0])
        if self._learnt is None and "limit" in doc:
            self._learnt = doc["limit"]
        return doc

    def _write_stamp(self, gens: list[str], aside: list[str], *, durable: bool = False) -> None:
        """Replace the stamp (under the lock); ``durable``: fsync it (chunked pre-records).

        A plain save's stamp is a change marker for running processes and a hint for new
        ones, so it is replaced atomically but not fsynced (a power loss costs at most one
        backend rediscovery); the record of a chunked save's new generation is fsynced
        before its first chunk, so :meth:`clear` finds orphans even after a power loss.
        """
        doc: dict[str, Any] = {
            "format": _STAMP_FORMAT,
            "write": secrets.token_hex(8),
            "backend": self._name_or_unknown(),
        }
        if self._learnt is not None:
            doc["limit"] = self._learnt
        if self._written is not None:
            doc["sha256"] = self._written
        if gens:
            doc["gens"] = gens[-_MAX_LISTED:]
        if aside:
            doc["aside"] = aside[-_MAX_LISTED:]
        blob = json.dumps(doc, separators=(",", ":")).encode()
        fd = atomic_write(self.stamp_path, blob) if durable else _replace(self.stamp_path, blob)
        self._identity.remember(fd, blob)

    # -- Store protocol ----------------------------------------------------------------

    def lock(self) -> CrossProcessLock:
        """The cross-process lock (a read-only store takes none and creates no file)."""
        return _NoLock(self._lock.path, self._lock.timeout) if self.read_only else self._lock

    def rendezvous(self) -> Optional[str]:
        return None if self.read_only else self._lock.path

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
        for _ in range(_READ_ATTEMPTS - 1):
            result = self._read_once()
            if not isinstance(result, _Damaged):
                return result
            if not result.transient:
                break
        if self.read_only:
            result = self._read_once()
            if isinstance(result, _Damaged):
                raise CorruptCacheError(
                    f"The token cache in the OS credential store (service {self.service!r}, "
                    f"account {self.account!r}) cannot be read: {result.why}. Nothing was "
                    "changed. A command that writes (a sign-in) keeps the damaged data aside "
                    "and starts empty; or run: msal-keyring-cache clear"
                )
            return result
        with self._lock:  # no writer can interfere now: damage is real
            result = self._read_once()
            if isinstance(result, _Damaged):
                self._set_aside(result)
                return None
        return result

    def _read_once(self) -> Union[bytes, _Damaged, None]:
        """One read: stamp first (a later write then shows as a change), then the entries.

        Returns the bytes, ``None`` or :class:`_Damaged`.
        """
        found = read_file_keep_open(self.stamp_path)
        try:
            stamp = parse_stamp(found[0]) if found is not None else {}
            if self._learnt is None:
                self._learnt = stamp.get("limit")
            value = self._get(self.service)
            gen, count, data = "", 0, None
            if value is not None and value.startswith(_MANIFEST):
                manifest = parse_manifest(value)
                if manifest is None:
                    return _Damaged(value, "its chunk manifest does not parse")
                gen, count, digest = manifest
                parts = []
                for index in range(count):
                    part = self._get(self._chunk_service(gen, index))
                    if part is None:  # the writer deleted this generation meanwhile?
                        return _Damaged(value, "a chunk is missing", transient=True)
                    parts.append(part)
                data = "".join(parts).encode("utf-8")
                if hashlib.sha256(data).hexdigest() != digest:
                    return _Damaged(value, "its chunks fail their digest", transient=True)
            elif value is not None:
                data = value.encode("utf-8")
                # What the last save wrote (its digest is in the stamp) needs no parse.
                if stamp.get("sha256") != hashlib.sha256(data).hexdigest() and not self._valid(
                    value
                ):
                    return _Damaged(value, "it is not an msal token cache (damaged or truncated)")
        except BaseException:
            if found is not None:
                os.close(found[1])
            raise
        self._identity.remember(found[1] if found else None, found[0] if found else None)
        self._chunks = (gen, count)
        self._loaded = True
        return data

    def _set_aside(self, damaged: _Damaged) -> None:
        """Copy damaged data to ``(service, account.corrupt-<time>)``, then free the entry.

        Called under the lock. Chunks a damaged manifest names stay where they are (listed
        in the stamp, so :meth:`clear` removes them); the copy keeps the manifest.
        """
        stamp = self._read_stamp_doc()
        gens, aside = list(stamp.get("gens", [])), list(stamp.get("aside", []))
        name = ""
        if damaged.value:
            name = f"{self.account}.corrupt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
            name += f"-{secrets.token_hex(3)}"
            aside.append(name)
            self._write_stamp(gens, aside, durable=True)  # listed first: clear finds it
            self._set(self.service, damaged.value, account=name)
            manifest = parse_manifest(damaged.value)
            if manifest is not None and manifest[0] not in gens:
                gens.append(manifest[0])
            self._delete(self.service)
        self._chunks = ("", 0)
        self._loaded = True
        self._write_stamp(gens, aside)
        logger.warning(
            "The token cache in the OS credential store (service %r, account %r) is damaged "
            "(%s); %s The cache starts empty, so sign in again.",
            self.service,
            self.account,
            damaged.why,
            f"it was kept aside as account {name!r} under the same service."
            if name
            else "its chunks were left in place.",
        )

    def save(self, data: bytes) -> None:
        self.stats.saves += 1
        if self.read_only:
            raise StoreError("This credential-store cache was opened read-only; nothing written.")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise StoreError("The keyring store keeps text; the cache is not UTF-8.") from None
        stamp = self._read_stamp_doc()  # under the lock: current
        gens, aside = list(stamp.get("gens", [])), list(stamp.get("aside", []))
        old = self._chunks
        limit = self._limit()
        chunked = False
        self._written = None
        if limit is None or (len(text) <= limit and not text.startswith(_MANIFEST)):
            refused = self._set_raw(self.service, text)  # the one write of a save
            if refused is None:
                self._chunks = ("", 0)
                self._written = hashlib.sha256(data).hexdigest()
            else:
                limit = self._learn(len(text), refused)
                chunked = True
        else:
            chunked = True
        if chunked and limit is not None:
            gens = self._save_chunked(text, data, limit, gens, aside)
        if old[0] and old != self._chunks:
            try:
                self._delete_chunks(old)
                gens = [g for g in gens if g != old[0]]
            except StoreError as exc:  # the save stands; clear() tries again
                logger.warning("Old chunks of the token cache were not deleted: %s", exc)
        self._loaded = True
        self._primed = _NOTHING
        self._write_stamp(gens, aside)

    def _learn(self, length: int, refused: BaseException) -> int:
        """A too-large refusal: chunk from now on, and remember the limit in the stamp."""
        limit = WINDOWS_MAX_VALUE_LENGTH if length > WINDOWS_MAX_VALUE_LENGTH else length // 2
        if self._learnt is not None:
            limit = min(limit, self._learnt // 2)
        if limit < MIN_VALUE_LENGTH:
            raise translate(refused, "set password", self._name_or_unknown()) from None
        self._learnt = limit
        logger.info(
            "The OS credential store (%s) refused a value of %d characters as too large; "
            "the token cache is split into entries of at most %d characters from now on "
            "(remembered in %s).",
            self._name_or_unknown(),
            length,
            limit,
            self.stamp_path,
        )
        return limit

    def _save_chunked(
        self, text: str, data: bytes, limit: int, gens: list[str], aside: list[str]
    ) -> list[str]:
        """Chunks, then the manifest. Returns the generations the stamp must list."""
        while True:
            parts = [text[i : i + limit] for i in range(0, len(text), limit)]
            if len(parts) > _MAX_CHUNKS:  # a manifest no reader would accept: write nothing
                raise StoreError(
                    f"The token cache ({len(data):,} bytes) needs more than {_MAX_CHUNKS:,} "
                    f"entries of {limit:,} characters in the credential store; nothing was "
                    "written. Remove accounts the app no longer uses, or use the encrypted "
                    "file (backend=file)."
                )
            gen = secrets.token_hex(4)
            # Listed before any chunk exists: a save killed midway leaves nothing clear misses.
            self._write_stamp([*gens, gen], aside, durable=True)
            refused = None
            for index, part in enumerate(parts):
                refused = self._set_raw(self._chunk_service(gen, index), part)
                if refused is not None:
                    break
            if refused is not None:
                self._delete_generation(gen)
                limit = self._learn(limit + 1, refused)
                continue
            digest = hashlib.sha256(data).hexdigest()
            self._set(self.service, format_manifest(gen, len(parts), digest))
            self._chunks = (gen, len(parts))
            return [*gens, gen]

    def _delete_chunks(self, chunks: tuple[str, int]) -> None:
        gen, count = chunks
        for index in range(count):
            self._delete(self._chunk_service(gen, index))

    def _delete_generation(self, gen: str) -> None:
        """Delete chunks ``gen.0, gen.1 …`` until one is missing (count unknown: orphans)."""
        index = 0
        while index < _MAX_CHUNKS and self._delete(self._chunk_service(gen, index)):
            index += 1

    def clear(self) -> None:
        """Delete the cache and everything the store ever wrote (chunks, orphans, set-asides).

        A delete the credential store refuses raises :class:`~msal_keyring_cache.StoreError`
        (what is still there stays listed in the stamp, for the next try).
        """
        if self.read_only:
            raise StoreError("This credential-store cache was opened read-only; nothing deleted.")
        with self._lock:
            stamp = self._read_stamp_doc()
            gens, aside = list(stamp.get("gens", [])), list(stamp.get("aside", []))
            value = self._get(self.service)
            manifest = parse_manifest(value) if value is not None else None
            if manifest is not None and manifest[0] not in gens:
                gens.append(manifest[0])
            failures: list[str] = []
            left_gens: list[str] = []
            left_aside: list[str] = []
            for gen in gens:
                try:
                    self._delete_generation(gen)
                except StoreError as exc:
                    failures.append(str(exc))
                    left_gens.append(gen)
            for name in aside:
                try:
                    self._delete(self.service, account=name)
                except StoreError as exc:
                    failures.append(str(exc))
                    left_aside.append(name)
            if value is not None:
                try:
                    self._delete(self.service)
                except StoreError as exc:
                    failures.append(str(exc))
            self._chunks = ("", 0)
            self._primed = _NOTHING
            self._write_stamp(left_gens, left_aside)
            self._loaded = True
            if failures:
                raise StoreError(failures[0])

    @property
    def probed_empty(self) -> bool:
        """Whether the last :meth:`prime` found nothing stored (and nothing read since)."""
        return self._unprimed()

    def _unprimed(self) -> bool:
        return self._primed is None

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
        limit = self.max_value_length or self._learnt or _KNOWN_LIMITS.get(name)
        return Description(
            backend=self.backend,
            location=f"service {self.service!r}, account {self.account!r}",
            protection=Protection.CREDENTIAL_STORE,
            protection_text=_PROTECTION.get(name, f"OS credential store ({name})"),
            lock_file=None if self.read_only else self._lock.path,
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
