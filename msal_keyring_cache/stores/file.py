"""The cache as one encrypted file (format: :mod:`msal_keyring_cache.crypto`).

A write appends one encrypted record holding only the entries that msal call changed,
so its cost does not grow with the cache; a reader that already has the file applies
just the records it has not seen. When the journal outgrows the snapshot, the next
writer compacts: it writes a new file (a snapshot, then its own change as record 1) and
renames it over the old one. Record 1 of a compacted file also names the file it
continues (``~link``: the old file's random ``gen`` and how many of its records the
snapshot holds), so a reader that knows the old file reads the few old records it
missed from the old file, which it still holds open, and record 1 — instead of
decrypting the whole new snapshot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

from .. import crypto
from ..errors import CacheError, CorruptCacheError, StoreError
from ..files import (
    atomic_write,
    check_regular,
    leftovers,
    loose_permissions,
    move_aside,
    open_regular,
)
from ..files import read_file_keep_open as _read_keep_open
from ..locking import CrossProcessLock
from ..watch import FileIdentity, Generation
from .base import Description, Store, apply_delta, parse_json

__all__ = ["EncryptedFileStore"]

logger = logging.getLogger("msal_keyring_cache")

#: Compact when the journal has more bytes than the snapshot (and at least
#: MIN_JOURNAL_BYTES), or MAX_RECORDS records — more for a large snapshot: one per
#: RECORD_SHARE bytes of it. A compaction rewrites the whole snapshot, so a fixed count
#: would make the writes to a large cache pay a share of it that grows with the cache (at
#: 10,000 tokens, 19 MB: 110-150 ms under the lock every 64th write); a reader pays a few
#: microseconds per record, a small part of what 16 KiB of snapshot cost it.
MAX_RECORDS = 64
RECORD_SHARE = 16 * 1024
MIN_JOURNAL_BYTES = 64 * 1024
#: The table of record 1 of a compacted file naming the file it continues.
LINK = "~link"

_warned_mode: set[str] = set()


class EncryptedFileStore(Store):
    """The cache encrypted into ``path``; its lock is ``path + ".lock"``.

    A wrong key raises :class:`~msal_keyring_cache.DecryptError` and leaves the file
    byte-identical. A damaged file (garbage, truncated, empty, unknown header, a journal
    record out of place) is moved aside to ``<path>.corrupt-*``, a WARNING is logged, and
    the cache starts empty (keeping the records before the damage).

    With ``read_only=True`` the store never writes, moves, creates or deletes anything —
    no directory, no lock file: :meth:`load` and :meth:`read_changes` report damage as
    :class:`~msal_keyring_cache.CorruptCacheError`, and :meth:`save`, :meth:`append` and
    :meth:`clear` raise :class:`~msal_keyring_cache.StoreError`.
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
        check_regular(self.path)
        self.key_source = key_source
        self._lock = CrossProcessLock(self.path + ".lock", lock_timeout)
        self._identity = FileIdentity(self.path)
        self.generation: Generation = Generation(self.path + ".gen")
        self._header: Optional[crypto.Header] = None
        self._key = ""  # the key of the file we hold (records are appended under it)
        self._snapshot_end = 0  # bytes of header + snapshot record
        self._offset = 0  # end of the last complete record we handed out
        self._size = 0  # file size when we last looked
        self._records = 0  # journal records in the file up to _offset (= last seq)
        self._queue: list[bytes] = []  # decrypted records read but not handed out
        self._suspect = False  # an append failed midway: the next write replaces the file
        self._unsynced: Optional[int] = None  # appended to, not fsynced yet (see sync())

    def lock(self) -> Any:
        if self.read_only:
            return contextlib.nullcontext(self)  # readers need no lock; writes are refused
        return _Guarded(self._lock)

    def rendezvous(self) -> Optional[str]:
        return None if self.read_only else self._lock.path

    def sync(self, *, seen: bool = False) -> None:
        """fsync the records appended since the last call (after the lock is released);
        with ``seen``, the file as last read (a leader's record of our change).

        Any later writer's fsync of this file covers our record too, and a compaction
        fsyncs its new file before renaming it, so the order does not matter for others:
        see docs/how-it-works.md, "Durability".
        """
        fd, self._unsynced = self._unsynced, None
        if fd is None and seen and self._identity.fd is not None:
            fd = os.dup(self._identity.fd)
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            self._suspect = True  # the next write replaces the file
            raise StoreError(
                f"Cannot write {self.path}: {exc.strerror}. Check free disk space; the "
                "change is kept in memory and written by the next write."
            ) from None
        finally:
            os.close(fd)

    def changed(self) -> bool:
        # Exact: a stat of the path. The warm hit does not come here while the shared
        # counter (self.generation) vouches; see watch.Generation.
        self.stats.checks += 1
        if self._queue:
            return True
        replaced, size = self._identity.check()
        return replaced or size != self._size

    def _change(self) -> Iterator[None]:
        """Around every change to the file: the shared counter is odd meanwhile."""
        self.generation.begin()
        try:
            yield
        finally:
            self.generation.end()

    # Not decorated: mutmut mutates no decorated function.
    _writing = contextlib.contextmanager(_change)

    def load(self) -> Optional[bytes]:
        self.stats.loads += 1
        for _ in range(3):  # a damaged file is set aside, then we look again
            found = _read_keep_open(self.path)
            if found is None:
                break
            blob, fd = found
            try:
                self._check_mode(fd)
                header, key, plaintext, snapshot_end = crypto.open_file(blob, self.key_source)
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
            newline = blob.find(b"\n") + 1
            self._identity.remember(fd, blob[:newline])
            self._header, self._key = header, key
            self._snapshot_end = snapshot_end
            records, self._offset = crypto.split_records(blob, snapshot_end, header.version)
            self._records, self._size = len(records), len(blob)
            try:
                self._queue = [
                    crypto.unseal(r, key, header, seq) for seq, r in enumerate(records, 1)
                ]
                if self._queue and LINK.encode() in self._queue[0]:
                    first = parse_json(self._queue[0], "a journal record")
                    first.pop(LINK, None)
                    self._queue[0] = json.dumps(first, separators=(",", ":")).encode()
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
        header = self._header or crypto.Header(fp="", gen="0")
        good: list[bytes] = []
        for seq, record in enumerate(records, 1):
            try:
                good.append(crypto.unseal(record, self._key, header, seq))
            except CorruptCacheError:
                break
        data = _apply(snapshot, good)
        if self.read_only:
            self._set_aside(blob, reason)  # raises: nothing is changed read-only
        with self.lock():
            if self._set_aside(blob, reason, "the entries written before the damage are kept"):
                self.save(data)
        return data

    def read_changes(self) -> Optional[list[bytes]]:
        replaced, size = self._identity.check()
        if replaced and os.name == "posix" and self._header is not None:
            linked = self._linked()
            if linked is not None:
                linked, self._queue = self._queue + linked, []
                return linked
        if replaced or self._header is None or (self._identity.fd is None and os.name == "posix"):
            return None
        if size != self._size:
            if size < self._offset:
                # Only compaction shrinks a file, and it replaces it: records we already
                # read were cut off (a restore of an older copy, or tampering).
                logger.warning(
                    "The token cache %s lost journal records another process had "
                    "written; loading it again.",
                    self.path,
                )
                return None
            tail = self._read_from(self._offset)
            records, consumed = crypto.split_records(tail, 0, self._header.version)
            try:
                self._queue.extend(
                    crypto.unseal(r, self._key, self._header, seq)
                    for seq, r in enumerate(records, self._records + 1)
                )
            except CorruptCacheError:
                return None  # a full load salvages what is good and sets the file aside
            self._records += len(records)
            self._offset += consumed
            self._size = self._offset + len(tail) - consumed
        queue, self._queue = self._queue, []
        return queue

    def save(self, data: bytes) -> None:
        self._refuse_if_read_only()
        header, key, blob = crypto.new_file(data, self.key_source, self._header)
        self._replace(blob, header, key, len(blob), records=0)

    def _compact(self, delta: bytes, data: bytes, old: crypto.Header) -> None:
        """Replace the file: snapshot ``data``, then ``delta`` as record 1 with the link."""
        change = parse_json(delta, "a journal record")
        change[LINK] = {f"{old.gen}:{self._records}": {}}
        header, key, blob = crypto.new_file(data, self.key_source, old)
        snapshot_end = len(blob)
        blob += crypto.seal(json.dumps(change, separators=(",", ":")).encode(), key, header, 1)
        self._replace(blob, header, key, snapshot_end, records=1)

    def _replace(
        self, blob: bytes, header: crypto.Header, key: str, snapshot_end: int, *, records: int
    ) -> None:
        """Write ``blob`` as the whole new file and know it as what we last read."""
        with self._writing():
            fd = atomic_write(self.path, blob)  # raises StoreError; the old file stays whole
        self.stats.saves += 1
        self._identity.remember(fd, blob[: blob.find(b"\n") + 1])
        self._header, self._key = header, key
        self._snapshot_end, self._offset, self._size = snapshot_end, len(blob), len(blob)
        self._records, self._queue, self._suspect = records, [], False

    def _linked(self) -> Optional[list[bytes]]:
        """The file was replaced by a compaction of the one we hold: what we have not seen.

        That is the old file's records after ours up to the link (read from the old file,
        still open), and the new file's records; the new snapshot is not decrypted.
        ``None`` when the new file is not such a continuation (then: load it whole).
        """
        old_fd, old_header = self._identity.fd, self._header
        if old_fd is None or old_header is None or self._queue:
            return None
        fd = open_regular(self.path, os.O_RDONLY)
        if fd is None:
            return None
        try:
            # The header, then the journal: the snapshot (most of the file) is not read.
            head = self._pread(fd, 0, crypto.HEAD_BYTES)
            header, stop = crypto.skip_snapshot(head)
            if header.gen == old_header.gen:
                raise CorruptCacheError("not a new file")
            key = crypto.file_key(header, self.key_source)
            tail = self._pread(fd, stop)
            if tail[:1] != b"\n":
                raise CorruptCacheError("the snapshot does not end where its length says")
            records, consumed = crypto.split_records(tail, 1, header.version)
            if not records:
                raise CorruptCacheError("no link")
            first = parse_json(crypto.unseal(records[0], key, header, 1), "a journal record")
            link = first.pop(LINK, None)
            if not isinstance(link, dict) or len(link) != 1:
                raise CorruptCacheError("no link")
            gen, _, count = next(iter(link)).partition(":")
            if gen != old_header.gen or not count.isdigit() or int(count) < self._records:
                raise CorruptCacheError("a link to another file")
            missed = int(count) - self._records
            old, _ = crypto.split_records(self._read_from(self._offset), 0, old_header.version)
            if len(old) < missed:
                raise CorruptCacheError("the old file ends early")
            queue = [
                crypto.unseal(r, self._key, old_header, seq)
                for seq, r in enumerate(old[:missed], self._records + 1)
            ]
            queue.append(json.dumps(first, separators=(",", ":")).encode())
            queue.extend(crypto.unseal(r, key, header, seq) for seq, r in enumerate(records[1:], 2))
        except CorruptCacheError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        self._check_mode(fd)
        self._identity.remember(fd, head[: head.find(b"\n") + 1])
        self._header, self._key = header, key
        self._snapshot_end, self._offset = stop + 1, stop + consumed
        self._records, self._size = len(records), stop + len(tail)
        return queue

    def append(self, delta: bytes, full: Callable[[], bytes]) -> None:
        self._refuse_if_read_only()
        self.sync()  # a record a failed call left unsynced (normally sync() ran already)
        replaced, _ = self._identity.check()
        journal = self._offset - self._snapshot_end
        header = self._header
        if (
            replaced
            or header is None
            or header.version < crypto.VERSION  # an old file: rewrite it in today's format
            or self._suspect
            or header.fp != self.key_source.new_header(header)[0].fp  # rotated
        ):
            self.save(full())
            return
        limit = max(MAX_RECORDS, self._snapshot_end // RECORD_SHARE)  # records
        if self._records >= limit or journal > max(self._snapshot_end, MIN_JOURNAL_BYTES):
            self._compact(delta, full(), header)
            return
        record = crypto.seal(delta, self._key, header, self._records + 1)
        try:
            fd = open_regular(self.path, os.O_WRONLY)
        except CacheError:
            fd = None
        if fd is None:  # gone, or replaced by something that is not a file
            self.save(full())
            return
        try:
            try:
                st = os.fstat(fd)
            except OSError as exc:
                raise StoreError(f"Cannot write {self.path}: {exc.strerror}.") from None
            if (st.st_dev, st.st_ino) != self._identity.inode or st.st_nlink != 1:
                # Another name for this file (a hard link) would receive our records
                # too: replace the file instead, which breaks the link.
                os.close(fd)
                fd = None
                self.save(full())
                return
            with self._writing():
                self._write_at(fd, record)
            self._unsynced, fd = fd, None  # fsynced by sync(), outside the lock
        finally:
            if fd is not None:
                os.close(fd)
        self.stats.saves += 1
        self.stats.appends += 1
        self._offset += len(record)
        self._size = self._offset
        self._records += 1

    def _write_at(self, fd: int, record: bytes) -> None:
        try:
            os.ftruncate(fd, self._offset)  # cut a dead tail a killed writer left
            os.lseek(fd, self._offset, os.SEEK_SET)
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            # Part of the record may be in the file (and seen by readers): never write
            # at this place again; the next write replaces the whole file.
            self._suspect = True
            raise StoreError(
                f"Cannot write {self.path}: {exc.strerror}. Check free disk space and the "
                "file's permissions; the change is kept in memory and written by the next write."
            ) from None

    def clear(self) -> None:
        """Delete the file and everything the store left beside it.

        That includes ``.corrupt-*`` copies and ``.tmp`` files of killed writers, which hold
        tokens too. The lock file stays: other processes may be waiting on it.
        """
        self._refuse_if_read_only()
        with self.lock(), self._writing():
            for path in [self.path, *leftovers(self.path)]:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StoreError(
                        f"Cannot delete {path}: {exc.strerror}. Delete it by hand; the "
                        "sign-out is not complete until it is gone."
                    ) from None
            self._forget()

    def rekey(self, new_source: crypto.KeySource) -> None:
        """Re-encrypt the file under ``new_source`` (the current key must still decrypt it)."""
        with self.lock():
            data = self.load()
            changes = self.read_changes() or []
            self.key_source = new_source
            self._header = None
            if data is not None:
                self.save(_apply(data, changes))

    def close(self) -> None:
        with contextlib.suppress(CacheError):
            self.sync()
        self._identity.forget()
        self.generation.close()

    def _refuse_if_read_only(self) -> None:
        if self.read_only:
            raise StoreError(
                f"The token cache {self.path} was opened read-only; nothing was written."
            )

    def _forget(self) -> None:
        self._identity.forget()
        self._header, self._key = None, ""
        self._snapshot_end = self._offset = self._size = self._records = 0
        self._queue = []

    def _check_mode(self, fd: int) -> None:
        """A cache file others can read is made private (0600), with one WARNING."""
        if os.name != "posix":
            return
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if not mode & 0o077:
            return
        if not self.read_only:
            try:
                os.fchmod(fd, 0o600)
            except OSError:
                pass  # not our file: say so below, leave it
            else:
                mode = 0
        if self.path not in _warned_mode:
            _warned_mode.add(self.path)
            done = "it was made private (0600)" if not mode else f"run: chmod 600 {self.path}"
            logger.warning("The token cache %s was readable by other users; %s.", self.path, done)

    def _pread(self, fd: int, offset: int, count: Optional[int] = None) -> bytes:
        """``count`` bytes of the file open at ``fd`` from ``offset`` (``None``: to its end)."""
        try:
            if count is None:
                # As many bytes as the file holds: pread allocates what it is asked for, so a
                # fixed large count costs page faults per read (MemoryError under ulimit -v).
                count = max(0, os.fstat(fd).st_size - offset)
            return os.pread(fd, count, offset)
        except OSError as exc:
            raise StoreError(f"Cannot read {self.path}: {exc.strerror}.") from None

    def _read_from(self, offset: int) -> bytes:
        fd = self._identity.fd
        if fd is not None:
            return self._pread(fd, offset)
        try:
            with open(self.path, "rb") as fh:  # Windows: no kept descriptor
                fh.seek(offset)
                return fh.read()
        except OSError as exc:
            raise StoreError(f"Cannot read {self.path}: {exc.strerror}.") from None

    def _set_aside(
        self, blob: bytes, reason: str, outcome: str = "the cache starts empty, so sign in again"
    ) -> bool:
        if self.read_only:
            raise CorruptCacheError(
                f"The token cache {self.path} is damaged ({reason}). Nothing was changed "
                "(read-only). Run a command that writes (or sign in) to set it aside and "
                "start over, or delete it."
            )
        # Under the lock, and only if the file is still the damaged one we read: a
        # writer may have replaced it with a good one meanwhile.
        with self.lock():
            found = _read_keep_open(self.path)
            if found is None:
                return False
            os.close(found[1])
            if found[0] != blob:
                return False
            with self._writing():
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


class _Guarded:
    """The cross-process lock, with an OS error while taking it as :class:`StoreError`.

    (A read-only file system lets the cache be read, but the lock file cannot be made.)
    """

    def __init__(self, lock: CrossProcessLock) -> None:
        self.lock = lock
        self.path = lock.path

    @property
    def held(self) -> bool:
        """Whether this process holds the lock now."""
        return self.lock.held

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lock, name)  # timeout, and whatever else the lock offers

    def __enter__(self) -> CrossProcessLock:
        return self.acquire()

    def attempt(self) -> bool:
        """Take the lock only if it is free now (see :meth:`CrossProcessLock.attempt`)."""
        try:
            taken = self.lock.attempt()
        except CacheError:
            raise
        except OSError as exc:
            raise self._error(exc) from None
        return taken

    def acquire(self, timeout: Optional[float] = None) -> CrossProcessLock:
        """Take the lock, waiting at most ``timeout`` seconds (default: the lock's)."""
        try:
            held = self.lock.acquire(timeout)
        except CacheError:  # LockTimeoutError is an OSError too
            raise
        except OSError as exc:
            raise self._error(exc) from None
        return held

    def _error(self, exc: OSError) -> StoreError:
        return StoreError(
            f"Cannot take the token-cache lock {self.path}: {exc.strerror}. The cache "
            "can be read but not written here; check the directory (read-only file "
            "system? permissions?)."
        )

    def __exit__(self, *exc: object) -> None:
        self.lock.__exit__(None, None, None)


def _apply(data: bytes, changes: list[bytes]) -> bytes:
    """The whole cache ``data`` with journal ``changes`` applied."""
    if not changes:
        return data
    state = parse_json(data, "the cache snapshot")
    for change in changes:
        apply_delta(state, parse_json(change, "a journal record"))
    return json.dumps(state, separators=(",", ":")).encode()
