"""A persistent, secure token cache for MSAL Python applications.

>>> import msal, msal_keyring_cache
>>> cache = msal_keyring_cache.build_cache("my-tool")       # doctest: +SKIP
>>> app = msal.PublicClientApplication(CLIENT_ID, token_cache=cache)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The exceptions are imported at once: errors.py imports nothing, and an app catching
# CacheError should not pay for loading a module to name it.
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

if TYPE_CHECKING:
    from .cache import BackendInfo, PersistentTokenCache
    from .config import Settings
    from .crypto import Protection, generate_key
    from .factory import build_cache
    from .stores import Description, EncryptedFileStore, MemoryStore, Store
    from .stores.credential import KeyringStore

__version__ = "0.2.0"

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


# Where each other public name lives. Imported on first use: importing the package (as the
# pytest plugin's entry point does in every test run) costs nothing, and keyring (~35 ms),
# msal and requests load only when asked for.
_HOMES = {
    "BackendInfo": ".cache",
    "PersistentTokenCache": ".cache",
    "Settings": ".config",
    "generate_key": ".crypto",
    "Protection": ".crypto",
    "Description": ".stores",
    "build_cache": ".factory",
    "EncryptedFileStore": ".stores",
    "MemoryStore": ".stores",
    "Store": ".stores",
    "KeyringStore": ".stores.credential",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name in ("manage", "doctor"):  # maintenance modules: loaded on first use
        return importlib.import_module(f"{__name__}.{name}")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
