"""The cache as one Fernet-encrypted file (format: :mod:`msal_keyring_cache.crypto`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Optional

from .. import crypto
from ..files import (
    atomic_write,
    check_not_symlink,
    loose_permissions,
    move_aside,
    read_file_keep_open,
)
from ..locking import CrossProcessLock, FileIdentity
from .base import Store

__all__ = ["EncryptedFileStore"]

logger = logging.getLogger("msal_keyring_cache")


class EncryptedFileStore(Store):
    """The cache encrypted into ``path``; its lock is ``path + ".lock"``.

    A wrong key raises :class:`~msal_keyring_cache.DecryptError` and leaves the file
    byte-identical. A damaged file (garbage, truncated, empty, unknown header) is moved
    aside to ``<path>.corrupt-*``, a WARNING is logged, and the cache starts empty.
    """

    kind = "file"

    def __init__(
        self,
        path: str,
        key_source: crypto.KeySource,
        *,
        lock_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        self.path = os.path.abspath(os.path.expanduser(path))
        check_not_symlink(self.path)
        self.key_source = key_source
        self._lock = CrossProcessLock(self.path + ".lock", lock_timeout)
        self._identity = FileIdentity(self.path)
        self._header: Optional[crypto.Header] = None

    def lock(self) -> CrossProcessLock:
        return self._lock

    def changed(self) -> bool:
        self.stats.checks += 1
        return self._identity.changed()

    def load(self) -> Optional[bytes]:
        self.stats.loads += 1
        for _ in range(3):  # a damaged file is set aside, then we look again
            found = read_file_keep_open(self.path)
            if found is None:
                break
            blob, fd = found
            try:
                plaintext, self._header = crypto.decrypt(blob, self.key_source)
            except crypto.CorruptCacheError as exc:
                os.close(fd)
                self._set_aside(blob, str(exc))
                continue
            except BaseException:
                os.close(fd)
                raise
            self._identity.remember(fd, blob[: blob.find(b"\n") + 1])
            return plaintext
        self._identity.forget()
        self._header = None
        return None

    def save(self, data: bytes) -> None:
        self.stats.saves += 1
        blob = crypto.encrypt(data, self.key_source, self._header)
        fd = atomic_write(self.path, blob)
        self._header, _ = crypto.parse_header(blob)
        self._identity.remember(fd, blob[: blob.find(b"\n") + 1])

    def clear(self) -> None:
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._identity.forget()
            self._header = None

    def rekey(self, new_source: crypto.KeySource) -> None:
        """Re-encrypt the file under ``new_source`` (the current key must still decrypt it)."""
        with self._lock:
            data = self.load()
            self.key_source = new_source
            self._header = None
            if data is not None:
                self.save(data)

    def _set_aside(self, blob: bytes, reason: str) -> None:
        # Under the lock, and only if the file is still the damaged one we read: a
        # writer may have replaced it with a good one meanwhile.
        with self._lock:
            found = read_file_keep_open(self.path)
            if found is None:
                return
            os.close(found[1])
            if found[0] != blob:
                return
            target = move_aside(self.path, reason)
        logger.warning(
            "The token cache %s is damaged (%s); it was moved aside to %s and the cache "
            "starts empty, so sign in again.",
            self.path,
            reason,
            target,
        )

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.kind,
            "location": self.path,
            "protection": self.key_source.protection,
            "key_source": self.key_source.label,
            "lock_file": self._lock.path,
            "exists": False,
        }
        try:
            st = os.stat(self.path)
        except OSError:
            return info
        info.update(
            exists=True,
            size=st.st_size,
            last_write=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
            permissions=loose_permissions(self.path) or "0o600",
        )
        return info
