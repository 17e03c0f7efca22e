"""A store in process memory: for tests and for caches that need no persistence."""

from __future__ import annotations

import threading
from typing import Optional

from ..crypto import Protection
from .base import Description, Store

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """The serialized cache in process memory; one store per cache (it tracks what it saw)."""

    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._data: Optional[bytes] = None
        self._version = 0
        self._seen = 0
        self._lock = threading.RLock()

    def load(self) -> Optional[bytes]:
        self.stats.loads += 1
        self._seen = self._version
        return self._data

    def save(self, data: bytes) -> None:
        self.stats.saves += 1
        self._data = data
        self._version += 1
        self._seen = self._version

    def changed(self) -> bool:
        self.stats.checks += 1
        return self._seen != self._version

    def lock(self) -> threading.RLock:
        return self._lock

    def clear(self) -> None:
        with self._lock:
            self._data = None
            self._version += 1

    def describe(self) -> Description:
        return Description(
            backend=self.backend,
            location="process memory",
            protection=Protection.NONE,
            protection_text="none (not persisted)",
            exists=self._data is not None,
            size=len(self._data or b""),
        )
