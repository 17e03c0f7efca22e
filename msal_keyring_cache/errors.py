"""The library's exception family: every public exception lives here.

Every failure a user can cause arrives as a :class:`CacheError` subclass whose
message says what happened and what to do. Messages never contain token text,
keys or passphrases. Every exception pickles (it may cross a process boundary).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendUnavailableError",
    "CacheError",
    "CommandError",
    "ConfigError",
    "CorruptCacheError",
    "DecryptError",
    "KeyringTimeoutError",
    "LockTimeoutError",
    "StoreError",
    "UsageError",
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


class CorruptCacheError(CacheError):
    """Stored data is damaged, truncated or of an unknown format.

    Writing paths handle it themselves: the damaged data is set aside (kept) and the
    cache starts empty, so the user signs in again. Read-only paths report it.
    """


class LockTimeoutError(CacheError, TimeoutError):
    """The cross-process lock was not obtained within the configured wait."""

    def __init__(self, message: str, lock_file: str) -> None:
        super().__init__(message)
        self.lock_file = lock_file

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.lock_file))


class BackendUnavailableError(CacheError):
    """The chosen storage backend cannot be used right now (locked, missing, hanging)."""


class KeyringTimeoutError(BackendUnavailableError):
    """A credential-store call did not answer within ``keyring_timeout``."""


class StoreError(CacheError):
    """Reading from or writing to a store failed (I/O error, server down, ...)."""


class CommandError(CacheError):
    """A command cannot do what was asked (bad input file, nothing to move …)."""


class UsageError(ConfigError):
    """The command line asks for something impossible (exit status 2)."""
