"""The one small protocol every store implements, and the journal delta format it carries.

A *delta* is the JSON object ``{credential_type: {key: entry or null}}``: the entries one
msal call changed (``null`` = removed). Stores with a journal keep deltas as records;
:func:`apply_delta` is the one place that knows how to apply one.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Union

from ..crypto import Protection

__all__ = ["Description", "Store", "StoreStats", "apply_delta"]

#: A value ``describe()`` may carry: plain, never a secret.
Fact = Union[str, int, float, bool, None]


def apply_delta(state: dict[str, Any], delta: dict[str, Any]) -> None:
    """Apply a journal delta ``{credential_type: {key: entry or None}}`` to a cache dict."""
    for credential_type, entries in delta.items():
        table = state.setdefault(credential_type, {})
        for key, entry in entries.items():
            if entry is None:
                table.pop(key, None)
            else:
                table[key] = entry


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
