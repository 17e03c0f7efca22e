"""The one small protocol every store implements, and the data formats it carries.

A *delta* is the JSON object ``{credential_type: {key: entry or null}}``: the entries one
msal call changed (``null`` = removed). Stores with a journal keep deltas as records;
:func:`apply_delta` is the one place that knows how to apply one.

A *cache document* is msal's serialized cache: ``{credential_type: {key: entry}}``.
:func:`validate_cache` checks one entry by entry before it is taken in from outside
(``import``, ``merge``, ``deserialize``, migration); :func:`parse_json` turns every
malformed input into :class:`~msal_keyring_cache.CorruptCacheError`.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Union

from ..crypto import Protection
from ..errors import ConfigError, CorruptCacheError
from ..watch import Generation

__all__ = [
    "Description",
    "Store",
    "StoreStats",
    "apply_delta",
    "parse_json",
    "validate_cache",
]

#: A value ``describe()`` may carry: plain, never a secret.
Fact = Union[str, int, float, bool, None]


def parse_json(data: Union[bytes, str], what: str) -> dict[str, Any]:
    """Parse ``data`` as a JSON object; any malformed input is :class:`CorruptCacheError`.

    ``what`` names the data in the message (e.g. ``"a journal record"``); the data itself
    is never quoted. Deep nesting, bad UTF-8 and non-objects are all refused.
    """
    try:
        # Strict UTF-8 first: json.loads(bytes) decodes with "surrogatepass", which is
        # several times slower on a large cache (and a lone surrogate is damage anyway).
        doc = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (ValueError, RecursionError, UnicodeError, TypeError):
        raise CorruptCacheError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise CorruptCacheError(f"{what} is not a JSON object")
    return doc


def apply_delta(state: dict[str, Any], delta: dict[str, Any]) -> None:
    """Apply a journal delta ``{credential_type: {key: entry or None}}`` to a cache dict.

    Raises :class:`CorruptCacheError` (changing nothing) if ``delta`` is not of that shape.
    """
    for entries in delta.values():
        if not isinstance(entries, dict) or not all(
            isinstance(e, dict) or e is None for e in entries.values()
        ):
            raise CorruptCacheError("a journal record is not an msal cache change")
    for credential_type, entries in delta.items():
        table = state.get(credential_type)
        if not isinstance(table, dict):  # missing, or damaged: the change starts it afresh
            table = state[credential_type] = {}
        for key, entry in entries.items():
            if entry is None:
                table.pop(key, None)
            else:
                table[key] = entry


#: Fields msal's key makers and searches read, which must be text when present.
_TEXT_FIELDS = (
    "home_account_id",
    "environment",
    "client_id",
    "realm",
    "target",
    "ext_cache_key",
    "credential_type",
    "family_id",
    "username",
    "authority_type",
)
#: Fields msal turns into numbers (``int(entry[...])``), when present.
_TIME_FIELDS = ("expires_on", "extended_expires_on", "refresh_on", "cached_at")
#: What each credential type needs for msal to use it. msal's removals assert that a token
#: names its own type and an account its authority type: without them an entry would make
#: msal fail when it deletes or replaces it.
_REQUIRED = {
    "AccessToken": ("secret", "expires_on", "credential_type"),
    "RefreshToken": ("secret", "credential_type"),
    "IdToken": ("secret", "credential_type"),
    "Account": ("home_account_id", "environment", "authority_type"),
    "AppMetadata": ("client_id", "environment"),
}


def validate_cache(doc: Any, *, complete: bool = True, name_keys: bool = False) -> dict[str, Any]:
    """Check that ``doc`` is an msal cache document msal can use; return it unchanged.

    Each of msal's credential types (``AccessToken``, ``RefreshToken``, ``IdToken``,
    ``Account``, ``AppMetadata``) must map to an object of entries; every entry must be an
    object; the fields msal's key makers read must be text; time fields must be whole
    numbers (``int()`` accepts them, as msal does); and each entry must have the fields
    msal needs (``secret`` and ``expires_on`` for an access token, …; a token its own
    ``credential_type`` and an account its ``authority_type``, which msal asserts when it
    deletes them — an expired access token without them would make msal's next search
    fail). Other top-level keys are kept as they are, as msal keeps them. The first bad
    entry makes the whole document refused with :class:`~msal_keyring_cache.ConfigError`
    naming its type and position — never its content, which may be a token.

    ``complete=False`` checks the shape only (objects, text, numbers) and not the required
    fields: :meth:`~msal_keyring_cache.PersistentTokenCache.deserialize` keeps msal's own
    contract that way (msal's test suite deserializes partial entries).
    ``name_keys=True`` names a bad entry by its cache key (which holds account and client
    ids, never a token) instead of its position: for files a user points ``migrate`` at.
    """
    if not isinstance(doc, dict):
        raise ConfigError("Not an msal token cache: expected a JSON object of credential types.")
    for kind, required in _REQUIRED.items():
        entries = doc.get(kind, {})
        if not isinstance(entries, dict):
            raise ConfigError(
                f"Not an msal token cache: the {kind!r} section is not an object of entries; "
                "nothing was imported."
            )
        for pos, (key, entry) in enumerate(entries.items(), 1):
            problem = _entry_problem(entry, required, kind) if complete else _entry_problem(entry)
            if problem:
                shown = f"{kind}[{key[:117]!r}]" if name_keys else f"{kind} entry {pos}"
                raise ConfigError(
                    f"Not a usable msal token cache: {shown} {problem}; nothing was imported."
                )
    return doc


def _entry_problem(
    entry: Any, required: tuple[str, ...] = (), kind: Optional[str] = None
) -> Optional[str]:
    """What makes ``entry`` unusable (``None``: nothing); ``kind`` also checks the entry's
    own ``credential_type``, when it names one."""
    if not isinstance(entry, dict):
        return "is not an object"
    for name in required:
        if name not in entry:
            return f"has no {name!r}"
    for name in _TEXT_FIELDS:
        if name in entry and not isinstance(entry[name], (str, type(None))):
            return f"has a {name!r} that is not text"
    if "secret" in entry and not isinstance(entry["secret"], str):
        return "has a 'secret' that is not text"
    for name in _TIME_FIELDS:
        if name in entry and not _is_time(entry[name]):
            return f"has a {name!r} that is not a whole number"
    if kind is not None and entry.get("credential_type", kind) != kind:
        return f"has a 'credential_type' that is not {kind!r}"
    return None


def _is_time(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return False
    try:
        int(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Description:
    """Non-secret facts about where a cache lives and how it is protected (``status``)."""

    #: Which store: ``file``, ``keyring``, ``memory`` …
    backend: str
    #: Where, in plain words (a path, or the credential-store entry).
    location: str
    #: How well it is protected at rest.
    protection: Protection
    #: The same in plain words, e.g. ``"key file"``.
    protection_text: str
    #: The cross-process lock file, if any.
    lock_file: Optional[str] = None
    #: The key file the cache's key comes from, if any.
    key_file: Optional[str] = None
    #: Whether anything is stored yet (``None``: cannot tell without reading it).
    exists: Optional[bool] = None
    #: Stored size in bytes, when known without reading it.
    size: Optional[int] = None
    #: Time of the last write (ISO 8601, UTC), when known.
    last_write: Optional[str] = None
    #: File permissions (POSIX, octal text), for files.
    permissions: Optional[str] = None
    #: Facts particular to the store (service and account, keyring backend, …).
    extra: Mapping[str, Fact] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Fact]:
        """A flat JSON-ready dict (``protection`` in words, ``protection_level`` as code)."""
        doc: dict[str, Fact] = {
            "backend": self.backend,
            "location": self.location,
            "protection": self.protection_text,
            "protection_level": self.protection.value,
            "lock_file": self.lock_file,
            "key_file": self.key_file,
            "exists": self.exists,
            "size": self.size,
            "last_write": self.last_write,
            "permissions": self.permissions,
        }
        doc.update(self.extra)
        return doc


@dataclass
class StoreStats:
    """What a store did in this process (tests and benchmarks read it)."""

    loads: int = 0  #: full loads
    saves: int = 0  #: writes of any kind (a whole cache or one journal record)
    checks: int = 0  #: change checks
    appends: int = 0  #: of the saves, journal records


class Store(abc.ABC):
    """Where one serialized token cache lives.

    A store keeps the bytes of one cache and tells, cheaply and exactly, whether they
    changed since this object last loaded or saved them. It is used by one
    :class:`~msal_keyring_cache.PersistentTokenCache`, which serializes all calls, so a
    store need not be thread-safe itself.
    """

    #: Short name: ``file``, ``keyring``, ``memory`` …
    backend: ClassVar[str] = ""
    #: A change counter shared with every writer (:class:`~msal_keyring_cache.watch.Generation`),
    #: or ``None``. While it vouches, the cache skips :meth:`changed` on its reads; it
    #: vouches only for what the cache took in after an exact :meth:`changed`.
    generation: Optional[Generation] = None

    def __init__(self) -> None:
        self.stats = StoreStats()

    @abc.abstractmethod
    def load(self) -> Optional[bytes]:
        """Return the stored cache (``None`` when there is none) and remember its version."""

    @abc.abstractmethod
    def save(self, data: bytes) -> None:
        """Replace the stored cache with ``data`` and remember the new version."""

    def read_changes(self) -> Optional[list[bytes]]:
        """Deltas written by others since this object last read or wrote, oldest first.

        ``None`` means "load everything again" — the default for stores without a journal.
        A delta is JSON ``{credential_type: {key: entry or null}}``.
        """
        return None

    def append(self, delta: bytes, full: Callable[[], bytes]) -> None:
        """Store one delta (called under :meth:`lock`, after catching up).

        Stores without a journal write ``full()``, the whole cache, instead.
        """
        self.save(full())

    def sync(self, *, seen: bool = False) -> None:  # noqa: B027 - optional hook
        """Make the last write durable; called once the lock is released.

        With ``seen``, make durable the store as last read here: a change this process
        handed to a group's leader (:mod:`~msal_keyring_cache.batch`), which the leader
        wrote but may not have made durable before it died. A store whose writes are
        durable when they return does nothing here. The caller returns to its own caller
        only after this, so "a write that returned is durable" holds either way
        (docs/how-it-works.md, "Durability").
        """

    def rendezvous(self) -> Optional[str]:
        """Where writers waiting for this store's lock meet to write together, or ``None``.

        The lock file's path for stores whose lock is shared across processes (see
        :mod:`~msal_keyring_cache.batch`); ``None`` (the default) writes alone.
        """
        return None

    @abc.abstractmethod
    def changed(self) -> bool:
        """Whether the stored cache differs from the version last loaded or saved here.

        Must be cheap (no decryption, no credential-store round trip) and exact.
        """

    @abc.abstractmethod
    def lock(self) -> AbstractContextManager[Any]:
        """An exclusive lock shared with every process using the same store (re-entrant)."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Delete the stored cache (under the lock)."""

    @abc.abstractmethod
    def describe(self) -> Description:
        """Non-secret facts for ``status``: location, protection, lock file, size …"""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections held by the store."""
