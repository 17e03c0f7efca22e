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

__all__ = [
    "CredWriteError",
    "DenyingKeyring",
    "EchoingKeyring",
    "FileKeyring",
    "FlakyKeyring",
    "HangingKeyring",
    "MemoryKeyring",
    "RaisingKeyring",
    "ScopedKeyring",
    "SizeLimitedKeyring",
    "WindowsLikeKeyring",
]


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


# == Keyring-store fakes (vault) ============================================================
# Backends that misbehave the ways keyring backends can: size limits like Windows, hangs,
# spurious "not found", refused deletes, errors that quote their arguments, and a
# file-backed store that separate processes share (and that can die mid-save on cue).
# The in-process ones are viable only inside the tests that say so (``test_priority``),
# so keyring's own discovery never picks them by accident.

import fcntl  # noqa: E402 - this section's own imports
import json  # noqa: E402
import os  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from keyring.compat import properties  # noqa: E402

#: What WinVaultKeyring refuses: more than 2,560 bytes, 1,280 UTF-16 characters.
WINDOWS_LIMIT = 1280


class ScopedKeyring(KeyringBackend):
    """In-memory keyring shared by its instances, counting calls; viable only in its tests."""

    test_priority: ClassVar[Optional[float]] = None
    entries: ClassVar[dict[tuple[str, str], str]] = {}
    calls: ClassVar[dict[str, int]] = {"get": 0, "set": 0, "delete": 0}
    guard = threading.Lock()

    @properties.classproperty
    def priority(cls) -> float:
        if cls.test_priority is None:
            raise RuntimeError("a test backend, viable only inside its tests")
        return cls.test_priority

    def get_password(self, service: str, username: str) -> Optional[str]:
        with self.guard:
            type(self).calls["get"] += 1
            return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        with self.guard:
            type(self).calls["set"] += 1
            self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        with self.guard:
            type(self).calls["delete"] += 1
            if self.entries.pop((service, username), None) is None:
                raise keyring_errors.PasswordDeleteError("not found")


class WindowsLikeKeyring(ScopedKeyring):
    """Windows Credential Manager's limits and errors, as keyring's WinVaultKeyring shows them.

    ``CredWrite`` of a blob over 2,560 bytes fails with pywintypes.error(1783, 'CredWrite',
    'The stub received bad data.'); a missing entry deletes as ``PasswordDeleteError``.
    """

    def set_password(self, service: str, username: str, password: str) -> None:
        if len(password) > WINDOWS_LIMIT:
            raise CredWriteError(1783, "CredWrite", "The stub received bad data.")
        super().set_password(service, username, password)


class RaisingKeyring(ScopedKeyring):
    """Raises ``to_raise`` from every read and write."""

    to_raise: ClassVar[BaseException] = RuntimeError("unset")

    def get_password(self, service: str, username: str) -> Optional[str]:
        raise self.to_raise

    def set_password(self, service: str, username: str, password: str) -> None:
        raise self.to_raise


class EchoingKeyring(ScopedKeyring):
    """A backend whose error texts quote the value it was given (the whole cache)."""

    error: ClassVar[type[BaseException]] = RuntimeError

    def set_password(self, service: str, username: str, password: str) -> None:
        if issubclass(self.error, OSError):
            raise self.error(5, f"cannot store {password}", password)
        raise self.error(f"cannot store {password!r} for {username}")

    def delete_password(self, service: str, username: str) -> None:
        raise self.error(f"cannot delete {self.entries.get((service, username))}")


class HangingKeyring(ScopedKeyring):
    """Never answers (an unlock prompt nobody sees) until the test releases it."""

    release = threading.Event()

    def get_password(self, service: str, username: str) -> Optional[str]:
        self.release.wait(30)
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        self.release.wait(30)


class FlakyKeyring(ScopedKeyring):
    """Answers "not found" to the next ``misses`` reads although the entry is there."""

    misses: ClassVar[int] = 0

    def get_password(self, service: str, username: str) -> Optional[str]:
        if type(self).misses > 0:
            type(self).misses -= 1
            with self.guard:
                type(self).calls["get"] += 1
            return None
        return super().get_password(service, username)


class DenyingKeyring(ScopedKeyring):
    """Refuses every delete the way a locked-down store does: ``Access denied``."""

    def delete_password(self, service: str, username: str) -> None:
        with self.guard:
            type(self).calls["delete"] += 1
        raise keyring_errors.PasswordDeleteError("Access denied")


class FileKeyring(KeyringBackend):
    """A credential store in a JSON file that separate processes share (``flock``).

    Viable only when ``FAKE_KEYRING_FILE`` names the file. ``FAKE_KEYRING_LIMIT`` makes it
    refuse longer values like Windows; ``FAKE_KEYRING_EXIT_AFTER_SETS=N`` ends the process
    (``os._exit``, like a SIGKILL: nothing flushed, no cleanup) right after its N-th write.
    """

    sets = 0

    @properties.classproperty
    def priority(cls) -> float:
        if not os.environ.get("FAKE_KEYRING_FILE"):
            raise RuntimeError("FAKE_KEYRING_FILE is not set")
        return 5.0

    @contextmanager
    def _entries(self) -> Iterator[dict[str, str]]:
        path = os.environ["FAKE_KEYRING_FILE"]
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(path, encoding="utf-8") as fh:
                    entries = json.load(fh)
            except FileNotFoundError:
                entries = {}
            before = dict(entries)
            yield entries
            if entries != before:
                with open(path + ".tmp", "w", encoding="utf-8") as fh:
                    json.dump(entries, fh)
                os.replace(path + ".tmp", path)
        finally:
            os.close(fd)

    @staticmethod
    def _key(service: str, username: str) -> str:
        return json.dumps([service, username])

    def get_password(self, service: str, username: str) -> Optional[str]:
        with self._entries() as entries:
            return entries.get(self._key(service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        limit = int(os.environ.get("FAKE_KEYRING_LIMIT", "0"))
        if limit and len(password) > limit:
            raise CredWriteError(1783, "CredWrite", "The stub received bad data.")
        with self._entries() as entries:
            entries[self._key(service, username)] = password
        type(self).sets += 1
        if type(self).sets == int(os.environ.get("FAKE_KEYRING_EXIT_AFTER_SETS", "0")):
            os._exit(9)

    def delete_password(self, service: str, username: str) -> None:
        with self._entries() as entries:
            if entries.pop(self._key(service, username), None) is None:
                raise keyring_errors.PasswordDeleteError("not found")

    @staticmethod
    def read_all(path: str) -> dict[tuple[str, str], str]:
        """Every entry in the file at ``path`` (for assertions)."""
        try:
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            return {}
        return {tuple(json.loads(k)): v for k, v in raw.items()}  # type: ignore[misc]
