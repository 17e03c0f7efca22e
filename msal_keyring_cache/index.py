"""Access tokens indexed by scope, so that msal's search does not scan a shared cache.

msal's ``search`` for an access token looks its key up (a hit costs O(1)), but a miss —
and every client-credential call for a scope not yet cached is one — scans every access
token in the cache. A cache shared by many processes, apps or users holds all of theirs,
so each miss costs time in proportion to everyone's tokens (~1 µs per token here).

:class:`Table` is the ``AccessToken`` table as a ``dict`` that also keeps, per scope, the
keys of the entries whose ``target`` names it. :func:`candidates` then gives msal's own
search code the only entries it could yield: those whose ``target`` holds every scope
asked for. Everything else msal's scan would skip, provided none of it has expired (msal
deletes expired access tokens as it scans), which the table also knows. So the results,
their order and msal's side effects are what a full scan gives (tests/test_index.py
checks that against msal's own search); anything the index cannot vouch for — an entry
of an unexpected shape, a token about to expire — gets msal's full scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

__all__ = ["Table", "candidates"]

#: Seconds of margin: a token expiring this soon gets msal's full scan, which deletes it.
MARGIN = 5


class Table(dict):  # type: ignore[type-arg]
    """A dict of msal access-token entries by key, indexed by scope as it changes.

    Every way of changing a dict goes through the index; reading is plain ``dict``.
    """

    __slots__ = ("_broken", "_known", "_meta", "_next", "_scopes", "_soonest")

    def __init__(self, entries: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__()
        self._reset()
        if entries:
            self.update(entries)

    def _reset(self) -> None:
        self._scopes: dict[str, set[str]] = {}  # scope -> keys of the entries naming it
        # key -> (when it was inserted: the dict's order, its scopes, its expiry), as
        # indexed: an entry changed in place later cannot unbalance the index.
        self._meta: dict[str, tuple[int, Optional[frozenset[str]], Optional[int]]] = {}
        self._next = 0
        self._soonest: Optional[int] = None  # the lowest expires_on (None: no entry) …
        self._known = True  # … when known: a removal of that entry makes it unknown
        self._broken = 0  # entries the index cannot describe (not msal's shape)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))  # a copy or pickle is plain data

    # -- changes -----------------------------------------------------------------

    def __setitem__(self, key: str, entry: Any) -> None:
        # Every entry another process writes comes through here: kept to a few lookups.
        if key in self._meta:
            order = self._unindex(key)
        else:
            order = self._next
            self._next = order + 1
        dict.__setitem__(self, key, entry)
        scopes, expires = _describe(entry)
        self._meta[key] = (order, scopes, expires)
        if scopes is None or expires is None:
            self._broken += 1
            return
        index = self._scopes
        for scope in scopes:
            keys = index.get(scope)
            if keys is None:
                index[scope] = {key}
            else:
                keys.add(key)
        if self._known and (self._soonest is None or expires < self._soonest):
            self._soonest = expires

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        self._unindex(key)

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            entry = dict.__getitem__(self, key)
            del self[key]
            return entry
        return dict.pop(self, key, *default)  # the default, or KeyError

    def popitem(self) -> tuple[str, Any]:
        if not self:
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(self))  # LIFO, as dict's own
        return key, self.pop(key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, entry in dict(*args, **kwargs).items():
            self[key] = entry

    def __ior__(self, other: Any) -> Table:  # type: ignore[misc]
        self.update(other)
        return self

    def clear(self) -> None:
        dict.clear(self)
        self._reset()

    # -- the index -----------------------------------------------------------------

    def _unindex(self, key: str) -> int:
        order, scopes, expires = self._meta.pop(key)
        if scopes is None or expires is None:
            self._broken -= 1
            return order
        for scope in scopes:
            keys = self._scopes[scope]
            keys.discard(key)
            if not keys:
                del self._scopes[scope]
        if expires == self._soonest:
            self._known = False  # recomputed when next needed
        return order

    def fresh_until(self) -> Optional[int]:
        """The lowest expiry of the indexed entries (``None``: there is none)."""
        if not self._known:
            self._soonest = min(
                (expires for _, _, expires in self._meta.values() if expires is not None),
                default=None,
            )
            self._known = True
        return self._soonest

    def having(self, scopes: Iterable[str]) -> list[str]:
        """The keys of the entries whose target may name every scope, in the table's order.

        A superset (the entries naming the rarest of the scopes): msal checks the rest.
        """
        found: Optional[set[str]] = None
        for scope in scopes:
            keys = self._scopes.get(scope)
            if not keys:
                return []
            if found is None or len(keys) < len(found):
                found = keys
        if found is None:
            return []
        meta = self._meta
        return sorted(found, key=lambda key: meta[key][0])


def _describe(entry: Any) -> tuple[Optional[frozenset[str]], Optional[int]]:
    """An entry's scopes and expiry as msal's search reads them; ``None`` where it cannot."""
    if not isinstance(entry, dict):
        return None, None
    target = entry.get("target", "")
    if not isinstance(target, str):
        return None, None
    try:
        expires = int(entry["expires_on"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None, None
    return frozenset(target.split()), expires


def candidates(table: Any, target: Any, now: int) -> Optional[dict[str, Any]]:
    """The access tokens msal's search of ``target`` at ``now`` could yield or delete.

    ``None`` when the index cannot vouch for that (the table is not a :class:`Table`, holds
    an entry of an unexpected shape, has a token expiring within :data:`MARGIN` seconds,
    or ``target`` is empty or not scope names): then msal scans everything.
    """
    if type(table) is not Table or table._broken or not target:
        return None
    if not all(isinstance(scope, str) for scope in target):
        return None
    soonest = table.fresh_until()
    if soonest is not None and soonest < now + MARGIN:
        return None
    return {key: dict.__getitem__(table, key) for key in table.having(target)}
