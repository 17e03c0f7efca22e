"""The cache as one Fernet-encrypted file (format: :mod:`msal_keyring_cache.crypto`).

A write appends one encrypted record holding only the entries that msal call changed,
so its cost does not grow with the cache; a reader that already has the file applies
just the records it has not seen. When the journal outgrows the snapshot, the next
writer compacts: it writes a new file (snapshot only) and renames it over the old one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable, Optional

from .. import crypto
from ..errors import CorruptCacheError, StoreError
from ..files import atomic_write, check_not_symlink, loose_permissions, move_aside
from ..files import read_file_keep_open as _read_keep_open
from ..locking import CrossProcessLock, FileIdentity
from .base import Description, Store, apply_delta

__all__ = ["EncryptedFileStore"]

logger = logging.getLogger("msal_keyring_cache")

#: Compact when the journal has this many records, or more bytes than the snapshot.
MAX_RECORDS = 64
MIN_JOURNAL_BYTES = 64 * 1024


class EncryptedFileStore(Store):
    """The cache encrypted into ``path``; its lock is ``path + ".lock"``.

    A wrong key raises :class:`~msal_keyring_cache.DecryptError` and leaves the file
    byte-identical. A damaged file (garbage, truncated, empty, unknown header) is moved
    aside to ``<path>.corrupt-*``, a WARNING is logged, and the cache starts empty.
    """

    backend = "file"

    def __init__(
        self,
        path: str,
        key_source: crypto.KeySource,
        *,
        lock_timeout: float = 60.0,
        read_only: bool = False,
    ) -> None:
        super().__init__()
        #: Never write, move or create anything: damaged data raises, writes raise.
        self.read_only = read_only
        self.path = os.path.abspath(os.path.expanduser(path))
        check_not_symlink(self.path)
        self.key_source = key_source
        self._lock = CrossProcessLock(self.path + ".lock", lock_timeout)
        self._identity = FileIdentity(self.path)
        self._header: Optional[crypto.Header] = None
        self._key = ""  # the key of the file we hold (records are appended under it)
        self._snapshot_end = 0  # bytes of header + snapshot record
        self._offset = 0  # end of the last complete record we handed out
        self._size = 0  # file size when we last looked
        self._records = 0  # journal records in the file up to _offset
        self._queue: list[bytes] = []  # decrypted records read but not handed out

    def lock(self) -> CrossProcessLock:
        return self._lock

    def changed(self) -> bool:
        self.stats.checks += 1
        replaced, size = self._identity.check()
        return replaced or size != self._size or bool(self._queue)

    def load(self) -> Optional[bytes]:
        self.stats.loads += 1
        for _ in range(3):  # a damaged file is set aside, then we look again
            found = _read_keep_open(self.path)
            if found is None:
                break
            blob, fd = found
            try:
                header, token = crypto.parse_header(blob)
                key = crypto.file_key(header, self.key_source)
                plaintext = crypto.decrypt_record(token, key)
            except CorruptCacheError as exc:
                os.close(fd)
                if self.read_only:
                    raise CorruptCacheError(
                        f"{self.path} is not a readable encrypted token cache: {exc}."
                    ) from None
                self._set_aside(blob, str(exc))
                continue
            except BaseException:
                os.close(fd)
                raise
            self._identity.remember(fd, blob[: blob.find(b"\n") + 1])
            self._header, self._key = header, key
            self._snapshot_end = blob.find(b"\n") + 1 + len(token) + 1
            records, self._offset = crypto.split_records(blob, self._snapshot_end)
            self._records, self._size = len(records), len(blob)
            try:
                self._queue = [crypto.decrypt_record(r, key) for r in records]
            except CorruptCacheError as exc:
                if self.read_only:
                    raise CorruptCacheError(
                        f"A journal record of the token cache {self.path} is damaged: {exc}."
                    ) from None
                return self._salvage(blob, plaintext, records, str(exc))
            return plaintext
        self._forget()
        return None

    def _salvage(self, blob: bytes, snapshot: bytes, records: list[bytes], reason: str) -> bytes:
        """A journal record is damaged: keep the snapshot and the good records before it."""
        good: list[bytes] = []
        for record in records:
            try:
                good.append(crypto.decrypt_record(record, self._key))
            except CorruptCacheError:
                break
        data = _apply(snapshot, good)
        with self._lock:
            if self._set_aside(blob, reason, "the entries written before the damage are kept"):
                self.save(data)
        return data

    def read_changes(self) -> Optional[list[bytes]]:
        replaced, size = self._identity.check()
        if replaced or (self._identity.fd is None and os.name == "posix"):
            return None
        if size != self._size:
            if size < self._offset:  # only compaction shrinks a file, and it replaces it
                return None
            tail = self._read_from(self._offset)
            records, consumed = crypto.split_records(tail, 0)
            try:
                self._queue.extend(crypto.decrypt_record(r, self._key) for r in records)
            except CorruptCacheError:
                return None  # a full load salvages what is good and sets the file aside
            self._records += len(records)
            self._offset += consumed
            self._size = self._offset + len(tail) - consumed
        queue, self._queue = self._queue, []
        return queue

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"The token cache {self.path} was opened read-only.")

    def save(self, data: bytes) -> None:
        self._writable()
        self.stats.saves += 1
        blob = crypto.encrypt(data, self.key_source, self._header)
        fd = atomic_write(self.path, blob)
        header, _token = crypto.parse_header(blob)
        self._identity.remember(fd, blob[: blob.find(b"\n") + 1])
        self._header, self._key = header, crypto.file_key(header, self.key_source)
        self._snapshot_end = self._offset = self._size = len(blob)
        self._records, self._queue = 0, []

    def append(self, delta: bytes, full: Callable[[], bytes]) -> None:
        self._writable()
        replaced, _ = self._identity.check()
        journal = self._offset - self._snapshot_end
        if (
            replaced
            or self._header is None
            or self._records >= MAX_RECORDS
            or journal > max(self._snapshot_end, MIN_JOURNAL_BYTES)
            or self._header.fp != self.key_source.new_header(self._header)[0].fp  # rotated
        ):
            self.save(full())
            return
        record = crypto.encrypt_record(delta, self._key)
        self.stats.saves += 1
        self.stats.appends += 1
        try:
            fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
            try:
                os.ftruncate(fd, self._offset)  # cut a dead tail a killed writer left
                os.lseek(fd, self._offset, os.SEEK_SET)
                view = memoryview(record)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(
                f"Cannot write {self.path}: {exc.strerror}. Check free disk space and the "
                "file's permissions."
            ) from None
        self._offset += len(record)
        self._size = self._offset
        self._records += 1

    def clear(self) -> None:
        self._writable()
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._forget()

    def rekey(self, new_source: crypto.KeySource) -> None:
        """Re-encrypt the file under ``new_source`` (the current key must still decrypt it)."""
        with self._lock:
            data = self.load()
            changes = self.read_changes() or []
            self.key_source = new_source
            self._header = None
            if data is not None:
                self.save(_apply(data, changes))

    def close(self) -> None:
        self._identity.forget()

    def _forget(self) -> None:
        self._identity.forget()
        self._header, self._key = None, ""
        self._snapshot_end = self._offset = self._size = self._records = 0
        self._queue = []

    def _read_from(self, offset: int) -> bytes:
        fd = self._identity.fd
        try:
            if fd is not None:
                return os.pread(fd, 1 << 30, offset)
            with open(self.path, "rb") as fh:  # Windows: no kept descriptor
                fh.seek(offset)
                return fh.read()
        except OSError as exc:
            raise StoreError(f"Cannot read {self.path}: {exc.strerror}.") from None

    def _set_aside(
        self, blob: bytes, reason: str, outcome: str = "the cache starts empty, so sign in again"
    ) -> bool:
        # Under the lock, and only if the file is still the damaged one we read: a
        # writer may have replaced it with a good one meanwhile.
        with self._lock:
            found = _read_keep_open(self.path)
            if found is None:
                return False
            os.close(found[1])
            if found[0] != blob:
                return False
            target = move_aside(self.path, reason)
        logger.warning(
            "The token cache %s is damaged (%s); it was moved aside to %s and %s.",
            self.path,
            reason,
            target,
            outcome,
        )
        return True

    def describe(self) -> Description:
        source = self.key_source
        facts: dict[str, Any] = {"exists": False}
        try:
            st = os.stat(self.path)
        except OSError:
            pass
        else:
            facts = {
                "exists": True,
                "size": st.st_size,
                "last_write": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
                "permissions": loose_permissions(self.path) or "0o600",
            }
        return Description(
            backend=self.backend,
            location=self.path,
            protection=source.level,
            protection_text=source.protection,
            lock_file=self._lock.path,
            key_file=source.path,
            extra={"key_source": source.label},
            **facts,
        )


def _apply(data: bytes, changes: list[bytes]) -> bytes:
    """The whole cache ``data`` with journal ``changes`` applied."""
    if not changes:
        return data
    import json

    state = json.loads(data)
    for change in changes:
        apply_delta(state, json.loads(change))
    return json.dumps(state, separators=(",", ":")).encode()
