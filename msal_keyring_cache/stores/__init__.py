"""Stores: one module per place a cache can live, behind :class:`~.base.Store`."""

from .base import Description, Store, StoreStats
from .file import EncryptedFileStore
from .memory import MemoryStore

__all__ = ["Description", "EncryptedFileStore", "MemoryStore", "Store", "StoreStats"]
