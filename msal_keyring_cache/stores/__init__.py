"""Stores: one module per place a cache can live, behind :class:`~.base.Store`."""

from .base import Store, StoreStats
from .file import EncryptedFileStore
from .memory import MemoryStore

__all__ = ["EncryptedFileStore", "MemoryStore", "Store", "StoreStats"]
