"""Fakes for what cannot run here, kept faithful to the real thing (import from here).

:class:`MemoryKeyring` is a keyring backend in process memory: every instance sees the
same entries (two instances = two processes on one credential store), it deletes like
keyring's backends (``PasswordDeleteError`` when nothing is there) and counts its calls.
``PYTHON_KEYRING_BACKEND=tests.fakes.MemoryKeyring`` makes keyring load it by name.
"""

from __future__ import annotations

import threading
from typing import ClassVar, Optional

from keyring import errors as keyring_errors
from keyring.backend import KeyringBackend

__all__ = ["CredWriteError", "MemoryKeyring", "SizeLimitedKeyring"]


class MemoryKeyring(KeyringBackend):
    """A secure-looking, in-memory credential store shared by all instances."""

    priority: ClassVar[float] = 5.0  # type: ignore[misc]
    entries: ClassVar[dict[tuple[str, str], str]] = {}
    calls: ClassVar[dict[str, int]] = {"get": 0, "set": 0, "delete": 0}
    _guard = threading.Lock()

    @classmethod
    def reset(cls) -> None:
        """Forget every entry and count."""
        with cls._guard:
            cls.entries.clear()
            cls.calls.update(get=0, set=0, delete=0)

    def get_password(self, service: str, username: str) -> Optional[str]:
        with self._guard:
            self.calls["get"] += 1
            return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        with self._guard:
            self.calls["set"] += 1
            self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        with self._guard:
            self.calls["delete"] += 1
            if self.entries.pop((service, username), None) is None:
                raise keyring_errors.PasswordDeleteError("not found")


class CredWriteError(Exception):
    """What pywin32's CredWrite raises for a value over 2,560 bytes."""


class SizeLimitedKeyring(MemoryKeyring):
    """Refuses values over 1,280 characters, as Windows Credential Manager does."""

    limit: ClassVar[int] = 1280

    def set_password(self, service: str, username: str, password: str) -> None:
        if len(password) > self.limit:
            raise CredWriteError(1783, "CredWrite", "The stub received bad data.")
        super().set_password(service, username, password)
