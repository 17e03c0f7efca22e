"""A store in process memory: for tests and for caches that need no persistence."""

from __future__ import annotations

import threading
from typing import Optional

from ..crypto import Protection
from .base import Description, Store

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """The serialized cache in process memory; one store per cache.

    Only its own cache writes to it, so it never changed behind that cache's back.
    """

    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._data: Optional[bytes] = None
        self._lock = threading.RLock()

    def load(self) -> Optional[bytes]:
        self.stats.loads += 1
        return self._data

    def save(self, data: bytes) -> None:
        self.stats.saves += 1
        self._data = data

    def changed(self) -> bool:
        self.stats.checks += 1
        return False

    def lock(self) -> threading.RLock:
        return self._lock

    def clear(self) -> None:
        with self._lock:
            self._data = None

    def describe(self) -> Description:
        return Description(
            backend=self.backend,
            location="process memory",
            protection=Protection.NONE,
            protection_text="none (not persisted)",
            exists=self._data is not None,
            size=len(self._data or b""),
        )
