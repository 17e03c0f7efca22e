"""The library's exception family.

Every failure a user can cause arrives as a :class:`CacheError` subclass whose
message says what happened and what to do. Messages never contain token text,
keys or passphrases.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "CacheError",
    "ConfigError",
    "DecryptError",
    "LockTimeoutError",
    "StoreError",
]


class CacheError(Exception):
    """Root of every error raised by msal-keyring-cache."""


class ConfigError(CacheError, ValueError):
    """A setting or environment variable has a value the library cannot use.

    The message names the setting (and its environment variable) and the
    accepted values.
    """


class DecryptError(CacheError):
    """The stored cache cannot be decrypted with the configured key.

    The stored data is left untouched; configure the key it was written with.
    """


class LockTimeoutError(CacheError, TimeoutError):
    """The cross-process lock was not obtained within the configured wait."""

    def __init__(self, message: str, lock_file: str) -> None:
        super().__init__(message)
        self.lock_file = lock_file


class BackendUnavailableError(CacheError):
    """The chosen storage backend cannot be used right now (locked, missing, hanging)."""


class StoreError(CacheError):
    """Reading from or writing to a store failed (I/O error, server down, ...)."""
