"""A persistent, secure token cache for MSAL Python applications.

>>> import msal, msal_keyring_cache
>>> cache = msal_keyring_cache.build_cache("my-tool")       # doctest: +SKIP
>>> app = msal.PublicClientApplication(CLIENT_ID, token_cache=cache)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from .cache import BackendInfo, PersistentTokenCache
from .config import Settings
from .crypto import Protection, generate_key
from .errors import (
    BackendUnavailableError,
    CacheError,
    CommandError,
    ConfigError,
    CorruptCacheError,
    DecryptError,
    KeyringTimeoutError,
    LockTimeoutError,
    StoreError,
    UsageError,
)
from .factory import build_cache
from .stores import Description, EncryptedFileStore, MemoryStore, Store

__version__ = "0.1.0"

__all__ = [
    "BackendInfo",
    "BackendUnavailableError",
    "CacheError",
    "CommandError",
    "ConfigError",
    "CorruptCacheError",
    "DecryptError",
    "Description",
    "EncryptedFileStore",
    "KeyringStore",
    "KeyringTimeoutError",
    "LockTimeoutError",
    "MemoryStore",
    "PersistentTokenCache",
    "Protection",
    "Settings",
    "Store",
    "StoreError",
    "UsageError",
    "__version__",
    "build_cache",
    "doctor",
    "generate_key",
    "manage",
]


def __getattr__(name: str) -> Any:
    # keyring costs ~35 ms to import: only when asked for.
    if name == "KeyringStore":
        from .stores.credential import KeyringStore

        return KeyringStore
    if name in ("manage", "doctor"):  # maintenance: loaded on first use
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
