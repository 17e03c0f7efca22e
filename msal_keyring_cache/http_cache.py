"""msal's ``http_cache``, persisted beside the token cache: sealed, bounded, no pickle.

msal keeps some non-token HTTP responses for a while — OpenID and instance discovery
for 24 h, throttling answers (HTTP 400, 429, 5xx) for seconds to an hour — in a mapping
it is given as ``http_cache=``. Persisted, a new process that finds its token in the
token cache makes no request at all. :class:`HttpCache` is that mapping::

    cache = build_cache("my-tool", http_cache=True)
    app = msal.PublicClientApplication(CLIENT_ID, token_cache=cache, http_cache=cache.http_cache)

Where it lives (see :meth:`HttpCache.beside`): beside an encrypted file cache, in
``<path>.http``, Fernet-encrypted under the *same* key source; beside a credential-store
cache, in a sibling entry (same service, account ``<account>.http``).

Why it is sealed: a discovery document names the token endpoint, so a forged one
could send refresh tokens elsewhere. The document names the token cache it belongs to;
in the file, Fernet also authenticates every byte. A document that fails a check —
changed, written under another key, copied from another cache, malformed or too large —
is refused (WARNING, no secret), msal fetches again, and the next write replaces it. In
the credential store it has the protection of the tokens beside it: whoever can change
the entry can read the refresh tokens anyway. The content is JSON, never pickle; values
are rebuilt as msal's own response objects.

What it keeps: GET answers with a 2xx status (discovery) and POST answers with
an error status (throttling), without ``Set-Cookie`` headers. A POST answer with a
success status could carry tokens; it stays in memory. At most :data:`MAX_ENTRIES`
entries and :data:`MAX_BYTES` bytes; when over, the soonest-expiring go first (as msal
does). An entry is kept only while ``created_at <= now < expires_at`` (msal's rule) and
for at most :data:`MAX_LIFETIME`.

Sharing: a write takes the http cache's own cross-process lock, takes in what other
processes wrote (newest entry per key wins), and replaces the whole document. A
failed write (disk full, lock busy) is logged and retried with the next change: msal
would otherwise see a failed request, and everything here can be fetched again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, MutableMapping
from contextlib import AbstractContextManager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Protocol, TypeVar

from . import crypto
from .errors import CacheError, CorruptCacheError
from .files import atomic_write, read_file_keep_open
from .locking import CrossProcessLock
from .stores.base import Store
from .watch import FileIdentity

if TYPE_CHECKING:
    from .stores.credential import KeyringStore

__all__ = [
    "MAX_BYTES",
    "MAX_ENTRIES",
    "MAX_ENTRY_BYTES",
    "MAX_LIFETIME",
    "CredentialEntry",
    "Entry",
    "HttpCache",
    "Place",
    "SealedFile",
    "dump",
    "parse",
]

logger = logging.getLogger("msal_keyring_cache")

FORMAT = "msal-keyring-cache-http"
VERSION = 1
#: Entries kept on disk (msal itself keeps up to 1,024 in memory).
MAX_ENTRIES = 128
#: Bytes of one entry (its JSON form: key, times, status, headers and body).
MAX_ENTRY_BYTES = 64 * 1024
#: Bytes of the whole document (a larger one is refused unread).
MAX_BYTES = 1024 * 1024
#: Seconds an entry may live: msal caches discovery for 24 h, throttling for at most 1 h.
MAX_LIFETIME = 24 * 3600
#: How long a write waits for the file's lock before leaving it to the next write.
LOCK_TIMEOUT = 10.0
T = TypeVar("T")
_INDEX = "_index_"  # msal's ExpiringMapping keeps its expiry index under this key


class Entry(NamedTuple):
    """One cached HTTP answer, as stored. Holds no token (see :func:`persistable`).

    A named tuple: a frozen dataclass costs ~0.5 ms of code generation at import.
    """

    key: str
    expires_at: int
    created_at: int
    status: int
    headers: dict[str, str]
    text: str

    @property
    def size(self) -> int:
        """Bytes of its JSON form, as written (escaping can make that 6× the text)."""
        return len(json.dumps(self.to_json(), separators=(",", ":")))

    def fresh(self, now: int) -> bool:
        """msal's rule: usable while ``created_at <= now < expires_at``."""
        return self.created_at <= now < self.expires_at

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "status": self.status,
            "headers": self.headers,
            "text": self.text,
        }


def persistable(entry: Entry) -> bool:
    """Whether an entry may go to disk: discovery GETs (2xx) and POST errors only.

    A POST with a success status is a token response (msal caches one only if the
    server sent ``Retry-After``); it never leaves memory.
    """
    if entry.key.startswith("GET "):
        return 200 <= entry.status < 300
    if entry.key.startswith("POST "):
        return entry.status >= 400
    return False


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _entry(raw: Any) -> Optional[Entry]:
    """An :class:`Entry` from its JSON form, or ``None`` if it is not a valid one."""
    if not isinstance(raw, dict):
        return None
    key, text, headers = raw.get("key"), raw.get("text"), raw.get("headers")
    expires_at, created_at = _int(raw.get("expires_at")), _int(raw.get("created_at"))
    status = _int(raw.get("status"))
    if not (isinstance(key, str) and isinstance(text, str) and isinstance(headers, dict)):
        return None
    if expires_at is None or created_at is None or status is None or key == _INDEX:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        return None
    if not 100 <= status <= 599 or not 0 < expires_at - created_at <= MAX_LIFETIME:
        return None
    entry = Entry(key, expires_at, created_at, status, dict(headers), text)
    if entry.size > MAX_ENTRY_BYTES or not persistable(entry):
        return None
    return entry


def parse(data: bytes, binding: str, now: int) -> tuple[dict[str, Entry], int]:
    """The entries of a decrypted http-cache document that may be used at ``now``.

    Returns ``(entries, dropped)``: ``dropped`` counts entries left out because they are
    malformed, too large, of a kind never stored, or beyond the limits (expired
    entries are left out silently). Raises :class:`CorruptCacheError` for a document
    that is not ours or belongs to another cache (``binding``): use none of it.
    """
    if len(data) > MAX_BYTES:
        raise CorruptCacheError(f"it is larger than {MAX_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CorruptCacheError("it is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise CorruptCacheError("it is not an http cache of this library's format")
    if doc.get("cache") != binding:
        raise CorruptCacheError("it belongs to another token cache")
    raw = doc.get("entries")
    if not isinstance(raw, list):
        raise CorruptCacheError("it has no entry list")
    entries: dict[str, Entry] = {}
    dropped = 0
    for item in raw:
        entry = _entry(item)
        if entry is None:
            dropped += 1
        elif entry.fresh(now):
            old = entries.get(entry.key)
            if old is None or entry.created_at >= old.created_at:
                entries[entry.key] = entry
    kept = _bounded(entries)
    return kept, dropped + len(entries) - len(kept)


def _bounded(entries: dict[str, Entry]) -> dict[str, Entry]:
    """At most MAX_ENTRIES entries and MAX_BYTES: the latest-expiring are kept."""
    kept: dict[str, Entry] = {}
    total = 4096  # the document's own framing (its binding names a path)
    for entry in sorted(entries.values(), key=lambda e: (-e.expires_at, e.key)):
        total += entry.size + 1
        if len(kept) >= MAX_ENTRIES or total > MAX_BYTES:
            break
        kept[entry.key] = entry
    return kept


def dump(entries: dict[str, Entry], binding: str) -> bytes:
    """The JSON document for ``entries`` (the inverse of :func:`parse`)."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "cache": binding,
        "entries": [e.to_json() for e in sorted(entries.values(), key=lambda e: e.key)],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _response(entry: Entry) -> Any:
    """The object msal stored: its NormalizedResponse (status_code, text, headers)."""
    raw = SimpleNamespace(status_code=entry.status, text=entry.text, headers=entry.headers)
    try:
        from msal.throttled_http_client import NormalizedResponse
    except ImportError:  # pragma: no cover - older msal: the same shape, our own class
        return _Response(raw)
    return NormalizedResponse(raw)


class _Response:
    def __init__(self, raw: Any) -> None:
        self.status_code, self.text, self.headers = raw.status_code, raw.text, dict(raw.headers)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise RuntimeError(f"HTTP Error: {self.status_code}")


def _entry_of(key: str, value: Any, times: tuple[int, int]) -> Optional[Entry]:
    """The storable form of what msal put under ``key``; ``None`` keeps it in memory only."""
    status, text = getattr(value, "status_code", None), getattr(value, "text", None)
    headers = getattr(value, "headers", None)
    if _int(status) is None or not isinstance(text, str) or not isinstance(headers, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        return None
    # Cookies (Entra sets a few on discovery) are of no use to msal: not stored.
    headers = {k: v for k, v in headers.items() if k.lower() != "set-cookie"}
    raw = {"key": key, "expires_at": times[0], "created_at": times[1], "status": status}
    return _entry({**raw, "headers": headers, "text": text})


class SealedFile:
    """One Fernet-encrypted file with its own lock and exact change detection.

    :param path: the file; its lock is ``path + ".lock"``.
    :param keys: returns the key source (called on first use; a failure is remembered,
        so a key that cannot be had is not asked for again by this process).
    :param lock_timeout: seconds a write waits for the lock.
    :param previous: returns a header whose KDF parameters a new file reuses (a
        passphrase is then derived once per process for both files).
    """

    def __init__(
        self,
        path: str,
        keys: Callable[[], crypto.KeySource],
        *,
        lock_timeout: float = LOCK_TIMEOUT,
        previous: Callable[[], Optional[crypto.Header]] = lambda: None,
    ) -> None:
        self.path = os.path.abspath(path)
        self._keys = keys
        self._source: Optional[crypto.KeySource] = None
        self._failed: Optional[CacheError] = None  # the key could not be had: not again
        self._previous = previous
        self._header: Optional[crypto.Header] = None
        self.lock = CrossProcessLock(self.path + ".lock", lock_timeout)
        self._identity = FileIdentity(self.path)
        self._seen = False

    @property
    def source(self) -> crypto.KeySource:
        if self._failed is not None:
            raise self._failed
        if self._source is None:
            try:
                self._source = self._keys()
            except CacheError as exc:
                self._failed = exc
                raise
        return self._source

    def changed(self) -> bool:
        """Whether the file is another version than the one last read or written here."""
        return not self._seen or self._identity.changed()

    def read(self) -> Optional[bytes]:
        """The decrypted content (``None``: no file). Raises a :class:`CacheError` if unusable.

        The version is remembered even when it is refused, so it is not read again
        until someone writes a new one.
        """
        self._seen = True
        found = read_file_keep_open(self.path)
        if found is None:
            self._identity.forget()
            return None
        blob, fd = found
        self._identity.remember(fd, blob[: blob.find(b"\n") + 1])
        if len(blob) > MAX_BYTES * 2:  # Fernet grows the text by a third; refuse unread
            raise CorruptCacheError(f"it is larger than {MAX_BYTES * 2} bytes")
        header, start, end = crypto.locate(blob)
        if end + 1 != len(blob):  # the snapshot, then nothing: this file has no journal
            raise CorruptCacheError("it has more than one record")
        data = crypto.unseal(blob[start:end], crypto.file_key(header, self.source), header, 0)
        self._header = header
        return data

    def write(self, data: bytes) -> None:
        """Replace the file with ``data``, encrypted (call under :attr:`lock`)."""
        header, _key, blob = crypto.new_file(data, self.source, self._header or self._previous())
        fd = atomic_write(self.path, blob)
        self._identity.remember(fd, blob[: blob.find(b"\n") + 1])
        self._header = header
        self._seen = True

    @property
    def where(self) -> str:
        return self.path

    def remove(self) -> None:
        """Delete the file."""
        with self.lock:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._identity.forget()
            self._seen = False

    def close(self) -> None:
        self._identity.forget()


class CredentialEntry:
    """A sibling entry ``(service, <account>.http)`` in the credential store.

    It has the protection of the token cache beside it: whoever can change it can read
    the refresh tokens anyway. Its lock and stamp are ``keyring-<hash>.http.lock`` and
    ``.http.stamp``; change detection costs no credential-store round trip.
    """

    def __init__(self, store: KeyringStore) -> None:
        from .stores.credential import KeyringStore

        base = store.stamp_path[: -len(".stamp")]
        account = store.account + ".http"
        self._entry = KeyringStore(
            store.service,
            account,
            lock_path=base + ".http.lock",
            keyring_timeout=store.keyring_timeout,
            lock_timeout=min(store.lock().timeout, LOCK_TIMEOUT),
            # Reuse the resolved backend; a store reading Secret Service directly lets
            # this one do the same (importing keyring costs ~35 ms).
            keyring=None if store.direct else store.keyring,
            validate=lambda _text: True,  # the http cache checks (and replaces) its own format
        )
        self.lock = self._entry.lock()
        self.where = f"in the credential store (service {store.service!r}, account {account!r})"
        self._resolved = False
        # A store that failed (locked, not answering) is not asked again by this process:
        # each msal request would otherwise wait up to keyring_timeout.
        self._failed: Optional[CacheError] = None

    def _call(self, what: Callable[[KeyringStore], T]) -> T:
        if self._failed is not None:
            raise self._failed
        try:
            if not self._resolved:
                self._entry.resolve()
                self._resolved = True
            return what(self._entry)
        except CacheError as exc:
            self._failed = exc
            raise

    def changed(self) -> bool:
        return self._failed is None and self._entry.changed()

    def read(self) -> Optional[bytes]:
        return self._call(lambda entry: entry.load())

    def write(self, data: bytes) -> None:
        self._call(lambda entry: entry.save(data))

    def remove(self) -> None:
        self._failed = None
        self._call(lambda entry: entry.clear())

    def close(self) -> None:
        self._entry.close()


class Place(Protocol):
    """Where an http cache is kept: :class:`SealedFile` or :class:`CredentialEntry`."""

    @property
    def lock(self) -> AbstractContextManager[Any]: ...

    @property
    def where(self) -> str: ...

    def changed(self) -> bool: ...

    def read(self) -> Optional[bytes]: ...

    def write(self, data: bytes) -> None: ...

    def remove(self) -> None: ...

    def close(self) -> None: ...


class HttpCache(MutableMapping[str, Any]):
    """The mapping to pass as msal's ``http_cache=``; persisted in ``place`` if given.

    Without ``place`` it is kept in memory only (the memory store, or a store it cannot
    be kept beside). ``binding`` names the token cache it belongs to; a document naming
    another is refused. Usually made by :meth:`beside` (``build_cache(...,
    http_cache=True)``). Thread-safe; share one per token cache.
    """

    def __init__(self, place: Optional[Place] = None, *, binding: str = "") -> None:
        self.place = place
        self.binding = binding
        self._lock = threading.RLock()
        self._values: dict[str, Any] = {}  # what msal put, by key
        self._times: dict[str, tuple[int, int]] = {}  # (expires_at, created_at), by key
        self._stored: dict[str, Entry] = {}  # what the file holds, as far as we know
        self._pending = False  # a write failed: retry with the next change
        #: What this object did (tests read it): loads, saves, refused files, dropped entries.
        self.stats = {"loads": 0, "saves": 0, "refused": 0, "dropped": 0}

    @classmethod
    def beside(cls, store: Store) -> HttpCache:
        """The http cache for the token cache kept in ``store`` (see the module docs)."""
        from .stores.file import EncryptedFileStore

        if isinstance(store, EncryptedFileStore):
            sealed = SealedFile(
                store.path + ".http",
                lambda: store.key_source,
                lock_timeout=min(store.lock().timeout, LOCK_TIMEOUT),
                previous=lambda: getattr(store, "_header", None),
            )
            return cls(sealed, binding=f"file:{store.path}")
        if store.backend == "keyring":
            from .stores.credential import KeyringStore

            if isinstance(store, KeyringStore):
                entry = CredentialEntry(store)
                return cls(entry, binding=f"keyring:{store.service}\0{store.account}")
        return cls(binding=f"memory:{store.backend}")

    def __repr__(self) -> str:
        where = self.place.where if self.place else "in memory"
        return f"<HttpCache {where} entries={len(self._values)}>"

    # -- the mapping msal's ExpiringMapping uses -----------------------------------------

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            self._refresh()
            if key == _INDEX:
                times = self._times
                return sorted([e, c, k] for k, (e, c) in times.items()), {
                    k: [e, c] for k, (e, c) in times.items()
                }
            return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        with self._lock:
            if key != _INDEX:
                self._values[key] = value  # its expiry arrives with the index, next
                return
            # msal removes a key by popping its value (see __delitem__), so the index only
            # adds or renews: entries taken in from the file since msal's peek stay.
            for key_, times in _index_times(value).items():
                mine = self._times.get(key_)
                if key_ in self._values and (mine is None or times[1] >= mine[1]):
                    self._times[key_] = times
            self._save()

    def __delitem__(self, key: str) -> None:
        with self._lock:
            if key == _INDEX or key not in self._values:
                raise KeyError(key)
            del self._values[key]
            self._times.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)

    # -- persistence ------------------------------------------------------------------

    def _refresh(self) -> None:
        if self.place is None:
            return
        try:
            if self.place.changed():
                self._take_in(self.place)
        except (CacheError, OSError) as exc:
            self._refuse(exc)

    def _take_in(self, place: Place) -> None:
        """Read the stored document and adopt its entries where they are newer than ours."""
        self.stats["loads"] += 1
        try:
            data = place.read()
        except (CacheError, OSError) as exc:
            self._stored = {}
            self._refuse(exc)
            return
        if data is None:
            self._stored = {}
            return
        try:
            entries, dropped = parse(data, self.binding, int(time.time()))
        except CorruptCacheError as exc:
            self._stored = {}
            self._refuse(exc)
            return
        if dropped:
            self.stats["dropped"] += dropped
            logger.warning(
                "The http cache %s held %d entries that are malformed, too large or of a "
                "kind never stored; they were not used.",
                place.where,
                dropped,
            )
        self._stored = entries
        for key, entry in entries.items():
            mine = self._times.get(key)
            if mine is None or entry.created_at > mine[1]:
                self._values[key] = _response(entry)
                self._times[key] = (entry.expires_at, entry.created_at)
        logger.debug("Loaded the http cache %s (%d entries)", place.where, len(entries))

    def _refuse(self, exc: Exception) -> None:
        self.stats["refused"] += 1
        where = self.place.where if self.place else "in memory"
        logger.warning(
            "The http cache %s was not used (%s: %s); msal fetches discovery again and the "
            "next write replaces it.",
            where,
            type(exc).__name__,
            str(exc).split(". ")[0],
        )

    def _wanted(self) -> dict[str, Entry]:
        now = int(time.time())
        wanted = {}
        for key, times in self._times.items():
            entry = _entry_of(key, self._values.get(key), times)
            if entry is not None and entry.fresh(now):
                wanted[key] = entry
        return _bounded(wanted)

    def _save(self) -> None:
        if self.place is None:
            return
        if self._wanted() == self._stored and not self._pending:
            return
        try:
            with self.place.lock:
                if self.place.changed():
                    self._take_in(self.place)
                wanted = self._wanted()
                if wanted != self._stored or self._pending:
                    self.place.write(dump(wanted, self.binding))
                    self.stats["saves"] += 1
                    self._stored = wanted
                    logger.debug("Saved the http cache %s", self.place.where)
            self._pending = False
        except (CacheError, OSError) as exc:
            self._pending = True
            logger.warning(
                "Could not save the http cache %s (%s: %s); it stays in memory and is "
                "written with the next change.",
                self.place.where,
                type(exc).__name__,
                str(exc).split(". ")[0],
            )

    def clear(self) -> None:
        """Forget every entry, here and where it is kept."""
        with self._lock:
            self._values.clear()
            self._times.clear()
            self._stored = {}
            if self.place is not None:
                try:
                    with self.place.lock:
                        self.place.write(dump({}, self.binding))
                except (CacheError, OSError) as exc:
                    self._refuse(exc)

    def remove(self) -> None:
        """Delete what is kept: the file, or the credential-store entry."""
        with self._lock:
            self._values.clear()
            self._times.clear()
            self._stored = {}
            if self.place is not None:
                self.place.remove()

    def close(self) -> None:
        """Close what is kept open for change detection."""
        if self.place is not None:
            self.place.close()


def _index_times(index: Any) -> dict[str, tuple[int, int]]:
    """``{key: (expires_at, created_at)}`` from msal's index ``(sequence, timestamps)``."""
    try:
        _sequence, timestamps = index
        return {str(k): (int(v[0]), int(v[1])) for k, v in timestamps.items()}
    except (TypeError, ValueError, IndexError, AttributeError):
        raise ValueError("not msal's ExpiringMapping index (sequence, timestamps)") from None
