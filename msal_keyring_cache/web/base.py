"""What a per-user web store must do: the :class:`Backend` protocol and its :class:`Record`.

The core (:mod:`.core`) owns everything a token cache needs — user binding, encryption,
key rotation, the three-way merge, TTL, stats — and asks a backend for five things on
opaque *names* (``<prefix>:u:{<digest>}``, never a user id) and opaque *values* (Fernet
tokens, never plain text):

* ``load(name)`` → the stored :class:`Record` (its version and value) or ``None``;
* ``save(name, seen, value, ttl)`` → compare-and-set: store ``value`` only if the
  version is still ``seen`` (``""``: only if nothing is stored); ``False`` otherwise;
* ``delete(name)``, ``purge_expired()`` and ``close()``.

A backend turns every failure of its server into :class:`~msal_keyring_cache.StoreError`
(bounded in time, with no secret in the message).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

__all__ = ["Backend", "Record"]


@dataclass(frozen=True)
class Record:
    """What a backend holds under one name.

    ``value`` is ``None`` when something is stored there that holds no usable value (an
    expired row, a Redis key of another type): the next save overwrites it, using
    ``version`` for the compare-and-set. ``damaged`` says it was not merely expired.
    """

    version: str
    value: Optional[bytes]
    damaged: bool = False


class Backend:
    """Base class of the per-user stores (Redis, SQL). Thread-safe; one per app process."""

    #: Short name for messages and stats: ``redis``, ``redis-cluster``, ``sqlite``, …
    kind: ClassVar[str] = "backend"

    def load(self, name: str) -> Optional[Record]:  # pragma: no cover - abstract
        """The record stored under ``name``, or ``None`` when there is none."""
        raise NotImplementedError

    def save(self, name: str, seen: str, value: bytes, ttl: int) -> bool:  # pragma: no cover
        """Store ``value`` for ``ttl`` seconds if ``name``'s version is still ``seen``."""
        raise NotImplementedError

    def delete(self, name: str) -> bool:  # pragma: no cover - abstract
        """Delete ``name``; whether anything was there."""
        raise NotImplementedError

    def purge_expired(self) -> int:
        """Delete expired records; how many. Stores that expire by themselves return 0."""
        return 0

    def close(self) -> None:  # pragma: no cover - abstract
        """Release connections."""
        raise NotImplementedError
