"""The msal adapter: a ``SerializableTokenCache`` kept in a :class:`~.stores.base.Store`.

Rules (see docs/how-it-works):

* **Reads** (``search``, ``find``, msal's private ``_get*``) first ask the store
  whether it changed since this cache last loaded or saved it — exactly and without
  decrypting — and reload only then. Where the store has a shared change counter
  (:attr:`~.stores.base.Store.generation`), a read that finds it where this cache
  vouched for it asks nothing more: no lock, no system call (the warm hit).
* **One lock** in the process: msal's own ``RLock`` is this cache's in-process lock
  too, so msal's code (a search being iterated holds it) and this cache's catch-ups
  and writes can never wait for each other in opposite orders.
* **Writes**: each msal call that changes the cache (``add``, ``modify`` and the
  ``remove_*``/``update_rt`` helpers built on it) runs as one transaction: take the
  in-process lock, then the cross-process lock, take in what another process wrote
  meanwhile, apply the change on top of it, write once if any entry changed. The
  write holds just the entries this process changed (a journal record) where the
  store supports it, else the whole cache. The lock order is always in-process →
  cross-process.
* **Group commit**: when the cross-process lock is busy, the change is handed to the
  writer that gets the lock next, which writes every waiting writer's change at once
  (:mod:`.batch`); uncontended, each msal call writes alone, as above.
* msal prunes expired access tokens while it searches, holding its lock; a change
  made while the calling thread already holds the lock (that prune, or code changing
  the cache while iterating a search) changes only memory and is folded into the next
  write, never written on its own.
* A write that fails stays pending: the caller gets the :class:`~.errors.CacheError`,
  memory keeps the change, and the next write stores it (on top of whatever others
  wrote meanwhile, so a refresh token rotated during the failure is not lost).
* After ``fork`` the child gets fresh in-process locks (the parent's could be held
  by a thread that does not exist in the child).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import msal

from . import index
from .errors import CacheError, ConfigError, CorruptCacheError
from .stores.base import Description, Store, apply_delta, parse_json, validate_cache
from .watch import Generation

if TYPE_CHECKING:
    from . import batch

__all__ = ["BackendInfo", "PersistentTokenCache"]

logger = logging.getLogger("msal_keyring_cache")
_MISSING: Any = object()
#: The cache's table of group-commit ids: ``{id: {}}`` for the changes a leader wrote for
#: others (msal ignores top-level keys it does not know, and keeps them).
BATCH = "~batch"
_KEEP_IDS = 512  # ids kept: more than the writers that can wait at once
# A follower waiting for its leader tries the lock itself after _GRACE seconds, then every
# _POLL: a leader that died or hangs without the lock must not hold it up, and a live one
# (which waits for one write before its own) must not lose the lock to its followers.
_GRACE, _POLL = 1.0, 0.25


@dataclass(frozen=True)
class BackendInfo:
    """Which store a cache uses and why (``cache.backend_info``). Holds no secret."""

    #: Which store: ``file``, ``keyring``, ``memory`` …
    backend: str
    #: Why that store, in plain words.
    reason: str
    #: Where it lives and how it is protected, as the store described itself.
    description: Optional[Description] = None

    @property
    def details(self) -> dict[str, Any]:
        """:attr:`description` as a flat dict (empty when there is none)."""
        return self._flat()

    def _flat(self) -> dict[str, Any]:
        return self.description.as_dict() if self.description else {}

    def __str__(self) -> str:
        return f"{self.backend} ({self.reason})"


class PersistentTokenCache(msal.SerializableTokenCache):  # type: ignore[misc]
    """An msal token cache persisted in ``store``, safe across threads and processes.

    Pass it as ``token_cache=`` to ``msal.PublicClientApplication`` or
    ``msal.ConfidentialClientApplication``. Usually made by
    :func:`~msal_keyring_cache.build_cache`.

    ``has_state_changed`` keeps msal's meaning: whether this object's content changed
    since the last ``serialize()``/``deserialize()`` (every change is already stored, so
    code that saves a copy when it is true only writes a redundant copy).
    """

    #: Group commit: when the lock is busy, hand this process's change to the writer
    #: that gets it next, which writes it with its own (:mod:`~msal_keyring_cache.batch`).
    group_commit: bool = True

    def __init__(self, store: Store, *, backend_info: Optional[BackendInfo] = None) -> None:
        super().__init__()
        self.store = store
        self.backend_info = backend_info or BackendInfo(store.backend, "store given explicitly")
        # msal's RLock (self._lock) is the one in-process lock: see the module docstring.
        self._depth = 0  # nesting of write transactions (owned by the lock's holder)
        # The store's shared change counter, or one that never vouches.
        self._generation = store.generation or Generation("")
        # Entries as they were before this process's unsaved changes, by (type, key):
        # the next write stores those that differ now. Kept in memory only.
        self._before: dict[tuple[str, str], Any] = {}
        self._rewrite = False  # a change not expressible per entry (deserialize)
        # Changes whose write failed, by (type, key): re-applied after every catch-up
        # and written by the next write. A failed whole rewrite keeps _rewrite set.
        self._pending: dict[tuple[str, str], Any] = {}
        _caches.add(self)
        #: msal's ``http_cache=`` mapping, persisted beside this cache (discovery answers:
        #: a new process then makes no request on a silent hit), or ``None``, the default.
        #: ``build_cache(..., http_cache=True)`` sets it; see :mod:`~msal_keyring_cache.http_cache`.
        self.http_cache: Optional[MutableMapping[str, Any]] = None

    def __repr__(self) -> str:
        return f"<PersistentTokenCache backend={self.backend_info}>"

    # -- reads -----------------------------------------------------------------

    def search(
        self,
        credential_type: str,
        target: Optional[list[str]] = None,
        query: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        # The warm hit: the shared counter vouches, nothing is checked (the hot path).
        gen = self._generation
        if gen.view[0] == gen.seen and _monotonic() < gen.until:
            view = _Indexed(self, target, kwargs.get("now")) if credential_type == _AT else self
            return _search(view, credential_type, target, query, **kwargs)  # type: ignore[no-any-return]
        return self._search_checked(credential_type, target, query, kwargs)

    def _search_checked(
        self,
        credential_type: str,
        target: Optional[list[str]],
        query: Optional[dict[str, Any]],
        kwargs: dict[str, Any],
    ) -> Iterator[dict[str, Any]]:
        """:meth:`search` when the counter does not vouch: one exact check, then msal's
        search holding the lock (its lookups do not check again; its prunes stay in memory)."""
        view = _Indexed(self, target, kwargs.get("now")) if credential_type == _AT else self
        if self._lock._is_owned():  # a write transaction, or msal iterating: no catch-up
            yield from _search(view, credential_type, target, query, **kwargs)
            return
        with self._lock:
            self._check()
            yield from _search(view, credential_type, target, query, **kwargs)

    def find(self, credential_type: str, *args: Any, **kwargs: Any) -> Any:
        # msal < 1.29 reads through find() (newer ones call search(), checked there).
        self._refresh()
        return super().find(credential_type, *args, **kwargs)

    def _get(self, credential_type: str, key: str, default: Any = None) -> Any:
        # msal's O(1) reads (_get_access_token, _get_app_metadata) all come here.
        gen = self._generation
        if gen.view[0] != gen.seen or _monotonic() >= gen.until:
            self._refresh()
        return _get(self, credential_type, key, default)

    def serialize(self) -> str:
        """The current cache as JSON (msal's format), after taking in the store's changes.

        The ids of group-committed writes (a table of this library's own) are left out:
        what an app or ``export`` gets is msal's document only.
        """
        self._refresh()
        with self._lock:
            self.has_state_changed = False
            return json.dumps({k: v for k, v in self._cache.items() if k != BATCH}, indent=4)

    # -- writes ----------------------------------------------------------------

    def add(self, event: dict[str, Any], **kwargs: Any) -> None:
        try:
            with self._writing():
                super().add(event, **kwargs)
        except CacheError as exc:
            if event.get("grant_type") != "refresh_token" or self._depth:
                raise
            # msal stores a rotated refresh token in a second call (update_rt) right after
            # this one: raising here would stop msal before it and lose that token. The
            # change stays pending; the second call writes again and raises if it fails.
            logger.warning("Could not save the token cache yet (%s); retrying.", exc)

    def modify(
        self,
        credential_type: str,
        old_entry: dict[str, Any],
        new_key_value_pairs: Optional[dict[str, Any]] = None,
    ) -> None:
        if not self._lock._is_owned():
            with self._writing():
                self.modify(credential_type, old_entry, new_key_value_pairs)
            return
        # The calling thread holds the lock already: inside a write transaction (msal's
        # add calls this), or inside msal's code — its prune of expired access tokens in
        # search, or a caller changing the cache while iterating a search. Memory only;
        # the next write stores it (writing now would interleave with msal's own step).
        key = self.key_makers[credential_type](**old_entry)
        with self._lock:
            current = self._cache.get(credential_type, {}).get(key, _MISSING)
            self._before.setdefault((credential_type, key), current)
            super().modify(credential_type, old_entry, new_key_value_pairs)

    def deserialize(self, state: Optional[str]) -> None:
        """Replace the whole cache with ``state`` (msal's JSON) and store it: one write.

        ``state`` is checked entry by entry first (the shape: objects, text, numbers; see
        :func:`~.stores.base.validate_cache`): a bad entry raises
        :class:`~msal_keyring_cache.ConfigError` and changes nothing. Unlike :meth:`merge`
        it does not insist on the fields msal needs, as msal's own ``deserialize`` does not.
        """
        parsed = _imported(state, complete=False)
        with self._writing():
            with self._lock:
                self._cache = parsed
                self.has_state_changed = False  # msal: deserialize() resets the flag
            self._rewrite = True

    def merge(self, state: str) -> int:
        """Add every entry of another cache's JSON, keeping the newer of two same entries.

        Returns how many entries were added or replaced. One write, if any. ``state`` is
        validated entry by entry first: anything msal could not use raises
        :class:`~msal_keyring_cache.ConfigError` and changes nothing.
        """
        incoming = _imported(state)
        changed = 0
        with self._writing(), self._lock:
            for kind, entries in incoming.items():
                if not isinstance(entries, dict):
                    continue  # an unknown top-level key msal ignores
                mine = self._cache.setdefault(kind, {})
                if not isinstance(mine, dict):
                    mine = self._cache[kind] = {}
                for key, entry in entries.items():
                    old = mine.get(key, _MISSING)
                    if old == entry or (old is not _MISSING and _age(entry) < _age(old)):
                        continue
                    self._before.setdefault((kind, key), old)
                    mine[key] = entry
                    changed += 1
            if changed:
                self.has_state_changed = True
        return changed

    def clear(self) -> None:
        """Delete everything this cache stores (all accounts, all tokens)."""
        with self._lock, self.store.lock():
            self.store.clear()
            self._cache = {}
            self.has_state_changed = True  # memory changed since the last serialize()
            self._before.clear()
            self._pending.clear()
            self._rewrite = False

    def reload(self) -> None:
        """Load the store's content now, whether or not it changed."""
        with self._lock:
            self._reload()
            if self.store.changed():
                self._catch_up()

    def close(self) -> None:
        """Release what the store and the :attr:`http_cache` hold open (files, connections)."""
        self.store.close()
        close_http = getattr(self.http_cache, "close", None)
        if callable(close_http):
            close_http()

    # -- machinery ---------------------------------------------------------------

    def _refresh(self) -> None:
        """Take in what the store has and we have not (when the counter does not vouch)."""
        if self._lock._is_owned():
            # Inside a write transaction (which caught up under the cross-process lock),
            # or inside msal's code iterating the cache: memory is not replaced under it.
            return
        with self._lock:
            self._check()

    def _check(self) -> None:
        """Under the lock: an exact check, a catch-up if needed, then vouch for it."""
        gen = self._generation
        value = gen.peek()  # before the exact check: a later write changes it
        if self.store.changed():
            self._catch_up()
        gen.vouch(value)

    def _catch_up(self) -> None:
        """Take in what the store has and we have not: journal records, or everything."""
        deltas = self.store.read_changes()
        if deltas is None:
            self._reload()
            deltas = self.store.read_changes() if self.store.changed() else []
        if not deltas:
            return
        changes = [parse_json(delta, "a journal record") for delta in deltas]
        with self._lock:
            for change in changes:
                apply_delta(self._cache, change)
            self._reapply_pending()
        logger.debug("Applied %d change(s) from the %s store", len(deltas), self.store.backend)

    def _reload(self) -> None:
        data = self.store.load()
        parsed: dict[str, Any] = {}
        if data:
            try:
                parsed = parse_json(data, "the stored cache")
            except CorruptCacheError:
                logger.warning(
                    "The %s store holds data that is not an msal token cache; starting "
                    "empty (it will be replaced on the next sign-in).",
                    self.store.backend,
                )
                parsed = {}
        with self._lock:
            if self._rewrite:  # a whole rewrite that failed is still to be written
                return
            self._cache = parsed  # other processes' writes: has_state_changed is untouched
            self._before.clear()  # unsaved prunes are redone by msal's next search
            self._reapply_pending()
        logger.debug(
            "Loaded the token cache from the %s store (%d bytes)",
            self.store.backend,
            len(data or b""),
        )

    def _transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            lock: Any = self.store.lock()
            held = False
            meet = self.store.rendezvous() if self.group_commit and not self._rewrite else None
            if meet is not None:
                try:
                    held = bool(lock.attempt())
                except Exception:  # the plain path below takes the lock and says why not
                    meet = None
            if meet is not None and not held:
                with self._grouped(lock, meet):
                    yield
                return
            failure: Optional[CacheError] = None
            if not held:
                try:
                    lock.__enter__()
                    held = True
                except CacheError as exc:  # a timeout, a read-only file system
                    failure = exc
            try:
                if held and self.store.changed():
                    self._catch_up()
            except CacheError as exc:
                failure = exc
            # Even without the lock or the others' changes, msal's change is applied in
            # memory and kept pending (the identity provider may already have rotated a
            # refresh token); the caller gets the error after it.
            wrote: Optional[dict[tuple[str, str], Any]] = None
            try:
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0
                    if failure is None:
                        wrote = self._persist()
                    else:
                        self._keep_pending()
            finally:
                if held:
                    lock.__exit__(None, None, None)
            if failure is not None:
                raise failure
            self._sync(wrote)

    # Not decorated: mutmut mutates no decorated function (nor a property's), so the
    # bodies are plain methods, wrapped here.
    _writing = contextmanager(_transaction)

    def _group(self, lock: Any, meet: str) -> Iterator[None]:
        """A write while the lock is busy: write together with the other waiting writers.

        msal's change is made on the store's state read without the lock, then it is
        pending (re-applied over whatever is taken in later) until written — by the
        group's leader, or by this writer itself (see :mod:`.batch` and
        docs/how-it-works.md, "Group commit").
        """
        limit = float(getattr(lock, "timeout", 60.0))
        deadline = time.monotonic() + (limit if limit >= 0 else math.inf)
        try:
            if self.store.changed():
                self._catch_up()
        except CacheError:
            pass  # taken in again under the lock, where a failure counts
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            changes = self._changes()
            self._pending.update(changes)
            if self._rewrite:  # deserialize(): a whole rewrite, written alone
                self._write_alone(lock, deadline)
            elif changes:
                self._write_grouped(lock, meet, changes, deadline)

    _grouped = contextmanager(_group)

    def _write_alone(self, lock: Any, deadline: float) -> None:
        lock.acquire(max(0.0, deadline - time.monotonic()))  # a timeout keeps it pending
        try:
            wrote = self._persist()
        finally:
            lock.__exit__(None, None, None)
        self._sync(wrote)

    def _write_grouped(
        self, lock: Any, meet: str, changes: dict[tuple[str, str], Any], deadline: float
    ) -> None:
        from . import batch  # only under contention: an uncontended process never loads it

        ident = secrets.token_hex(16)
        role = batch.join(meet, ident, _encode(changes))
        if isinstance(role, batch.Leader):
            self._lead(role, lock)
            return
        held = False
        if isinstance(role, batch.Ticket):
            answer = self._follow(role, lock, deadline)
            if answer is True:  # written, durably, by the leader
                for key in changes:
                    self._pending.pop(key, None)
                return
            held = answer is None
        if not held:  # a timeout raises; our change stays pending for the next write
            lock.acquire(max(0.0, deadline - time.monotonic()))
        wrote: Optional[dict[tuple[str, str], Any]] = None
        try:
            # Take in the store without our change first: a leader that died after
            # writing may have written it (with our id), and it must not be written
            # again over what others wrote since.
            self._pending.clear()
            try:
                if self.store.changed():
                    self._catch_up()
            finally:
                table = self._cache.get(BATCH)
                found = role is not None and isinstance(table, dict) and ident in table
                if not found:
                    self._pending.update(changes)
                    with self._lock:
                        self._reapply_pending()
            if self._pending:
                wrote = self._persist()
        finally:
            lock.__exit__(None, None, None)
        if found:
            # Written by a leader that then died or failed before its fsync (we wrote
            # nothing: nothing was pending): ours to make durable before this call returns.
            self.store.sync(seen=True)
        else:
            self._sync(wrote)

    def _follow(self, ticket: batch.Ticket, lock: Any, deadline: float) -> Optional[bool]:
        """Wait for the leader: ``True`` written, ``False`` not, ``None`` we hold the lock."""
        try:
            wait = _GRACE
            while True:
                left = deadline - time.monotonic()
                answer = ticket.wait(min(wait, max(left, 0.0)))
                if answer is not None:
                    return answer
                wait = _POLL
                # A leader that died or hangs without the lock must not hold us up.
                try:
                    if lock.attempt():
                        return None
                except Exception:
                    return False
                if left <= 0:
                    return False
        finally:
            ticket.close()  # before we write: a leader that has not written leaves us out

    def _lead(self, leader: batch.Leader, lock: Any) -> None:
        """Take the lock, then write our change and every follower's in one write."""
        try:
            lock.__enter__()
        except BaseException:
            leader.close()  # the followers write themselves
            raise
        accepted: list[batch.Request] = []
        own = dict(self._pending)
        wrote: Optional[dict[tuple[str, str], Any]] = None
        try:
            requests = leader.collect()
            try:
                if self.store.changed():
                    self._catch_up()
                with self._lock:
                    for request in requests:
                        if request.alive() and self._take(request.change):
                            self._mark(request.ident)
                            accepted.append(request)
                        else:
                            request.answer(False)
                wrote = self._persist()
            except BaseException:
                for request in requests:
                    request.answer(False)
                accepted = []
                raise
            finally:
                if not accepted:  # theirs are not ours to keep pending
                    self._pending = {k: v for k, v in self._pending.items() if k in own}
        finally:
            lock.__exit__(None, None, None)
        try:
            self._sync(wrote)
        except BaseException:
            for request in accepted:
                request.answer(False)  # they write themselves; not ours to keep pending
            self._pending = {k: v for k, v in self._pending.items() if k in own}
            raise
        for request in accepted:
            request.answer(True)
        if accepted:
            logger.debug("Wrote %d other writers' changes with ours", len(accepted))

    def _take(self, data: bytes) -> bool:
        """Apply a follower's change over memory, as our own (under _lock); False if bad."""
        try:
            change = parse_json(data, "a change from another writer")
            apply_delta({}, change)  # checks the shape (and applies it to nothing)
        except CorruptCacheError:
            return False
        for kind, entries in change.items():
            table = self._cache.get(kind)
            if not isinstance(table, dict):
                table = self._cache[kind] = {}
            for key, entry in entries.items():
                self._before.setdefault((kind, key), table.get(key, _MISSING))
                if entry is None:
                    table.pop(key, None)
                else:
                    table[key] = entry
        return True

    def _mark(self, ident: str) -> None:
        """Record a follower's id in the write (under _lock), dropping the oldest ids."""
        table = self._cache.get(BATCH)
        if not isinstance(table, dict):
            table = self._cache[BATCH] = {}
        self._before.setdefault((BATCH, ident), table.get(ident, _MISSING))
        table[ident] = {}
        while len(table) > _KEEP_IDS:
            oldest = next(iter(table))
            self._before.setdefault((BATCH, oldest), table[oldest])
            del table[oldest]

    def _sync(self, wrote: Optional[dict[tuple[str, str], Any]]) -> None:
        """Make a write durable (after the lock is released); a failure keeps it pending."""
        if wrote is None:
            return
        try:
            self.store.sync()
        except BaseException:
            for key, value in wrote.items():
                self._pending.setdefault(key, value)
            raise

    def _changes(self) -> dict[tuple[str, str], Any]:
        """Entries changed since the last write (and those still pending), by (type, key)."""
        changes: dict[tuple[str, str], Any] = {}
        with self._lock:
            for credential_type, key in [*self._before, *self._pending]:
                now = self._cache.get(credential_type, {}).get(key, _MISSING)
                before = self._before.get((credential_type, key), _MISSING)
                if now != before or (credential_type, key) in self._pending:
                    changes[(credential_type, key)] = now
            self._before.clear()
        return changes

    def _keep_pending(self) -> None:
        self._pending.update(self._changes())

    def _reapply_pending(self) -> None:
        """Put changes whose write failed back on top of what the store holds (under _lock).

        They stay in ``_pending`` until written, and :meth:`_changes` takes every pending
        entry whatever it was before: nothing to note in ``_before``.
        """
        for (credential_type, key), value in self._pending.items():
            table = self._cache.setdefault(credential_type, {})
            if value is _MISSING:
                table.pop(key, None)
            else:
                table[key] = value

    def _persist(self) -> Optional[dict[tuple[str, str], Any]]:
        # Runs under the cross-process lock, and must: the delta is this call's change
        # applied on top of what others wrote (known only after catching up under the
        # lock), and the record it becomes is sealed with its place in the file (the next
        # sequence number, known only under the lock). Moving the JSON encoding (~4 µs for
        # a sign-in's entries) and the encryption (~2 µs) out of the lock would need a
        # speculative record that is thrown away whenever another process wrote first. The
        # fsync that makes the write durable (0.1-9 ms by disk; on a slow one about half
        # of the critical section when it was inside) runs after the lock: _sync().
        changes = self._changes()
        try:
            if self._rewrite:
                self.store.save(self._dump())
            elif changes:
                self.store.append(_encode(changes), self._dump)
            else:
                return None
        except BaseException:
            # Nothing is forgotten: the change stays in memory and pending, and the next
            # write (after taking in what others wrote) stores it.
            self._pending.update(changes)
            raise
        self._rewrite = False
        self._pending.clear()
        logger.debug("Saved the token cache to the %s store", self.store.backend)
        return changes

    def _dump(self) -> bytes:
        with self._lock:
            return json.dumps(self._cache, separators=(",", ":")).encode()


def _encode(changes: dict[tuple[str, str], Any]) -> bytes:
    """Changes by (type, key) as a journal delta (JSON)."""
    delta: dict[str, dict[str, Any]] = {}
    for (credential_type, key), now in changes.items():
        delta.setdefault(credential_type, {})[key] = None if now is _MISSING else now
    return json.dumps(delta, separators=(",", ":")).encode()


def _imported(state: Optional[str], *, complete: bool = True) -> dict[str, Any]:
    """A cache document from outside, parsed and validated (``ConfigError`` if unusable)."""
    if not state:
        return {}
    try:
        doc = parse_json(state, "the cache to import")
    except CorruptCacheError as exc:
        raise ConfigError(f"Not an msal token cache: {exc}; nothing was imported.") from None
    return validate_cache(doc, complete=complete)


_search: Any = getattr(msal.SerializableTokenCache, "search", None)  # msal >= 1.29
_AT = "AccessToken"


class _Indexed:
    """The cache as msal's access-token search sees it: its own, except that the table
    msal scans holds only the candidates of the scope index (:mod:`.index`). msal reads
    that table only to scan, under the lock, after its O(1) lookup: a hit costs nothing
    more. Everything else (the lock, lookups, deletions) is the cache's."""

    __slots__ = ("_get_access_token", "_is_matching", "_now", "_real", "_target")
    CredentialType = msal.TokenCache.CredentialType

    def __init__(self, cache: PersistentTokenCache, target: Any, now: Optional[float]) -> None:
        self._real = cache
        self._target = target
        self._now = now
        # What msal's search uses on a hit, set here: a hit takes no __getattr__ detour.
        self._get_access_token = cache._get_access_token
        self._is_matching = cache._is_matching

    def _table(self) -> dict[str, Any]:
        real = self._real._cache
        table = real.get(_AT)
        if isinstance(table, dict) and type(table) is not index.Table:
            table = real[_AT] = index.Table(table)  # once per reload: then kept current
        now = int(time.time() if self._now is None else self._now)  # as msal's scan does
        subset = index.candidates(table, self._target, now)
        return real if subset is None else {_AT: subset}

    _cache = property(_table)  # not decorated: see PersistentTokenCache._writing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_get = msal.SerializableTokenCache._get
_monotonic = time.monotonic
_caches: weakref.WeakSet[PersistentTokenCache] = weakref.WeakSet()


def _after_fork() -> None:
    # A thread of the parent may have held these locks at fork time; it does not exist
    # in the child, so the child starts with fresh ones. The store's kept descriptors
    # stay valid (reads use pread, so a shared file offset does not matter).
    for cache in list(_caches):
        cache._lock = threading.RLock()
        cache._depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _age(entry: Any) -> int:
    """When an entry was written, by the fields msal sets; 0 if unknown."""
    if not isinstance(entry, dict):
        return 0
    for name in ("last_modification_time", "cached_at"):
        try:
            return int(entry[name])
        except (KeyError, TypeError, ValueError):
            continue
    return 0
