"""A user's msal cache as tables of entries: the per-request cache, copies and the merge.

msal keeps its cache as ``{credential type: {entry key: entry}}``. Two requests of one
user that both changed it are reconciled entry by entry (:func:`three_way_merge`); what
a value decrypts to is ``{"u": <binding>, "c": <tables>}`` (:func:`parse_payload`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

import msal

from ..errors import ConfigError

__all__ = ["UserTokenCache", "copy_state", "parse_cache", "parse_payload", "three_way_merge"]


class UserTokenCache(msal.SerializableTokenCache):  # type: ignore[misc]
    """The msal cache of one user for one request; remembers whether msal changed it."""

    def __init__(self, state: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self._cache = state if state is not None else {}  # owned from now on: not copied
        self.changed = False

    def add(self, event: Any, **kwargs: Any) -> None:
        super().add(event, **kwargs)
        self.changed = True

    def modify(self, credential_type: Any, old_entry: Any, new_key_value_pairs: Any = None) -> None:
        super().modify(credential_type, old_entry, new_key_value_pairs)
        self.changed = True

    def deserialize(self, state: Optional[str]) -> None:
        super().deserialize(state)
        self.changed = True

    def absorb(self, incoming: Mapping[str, Any]) -> None:
        """Add the entries of another cache's tables (same key: replaced)."""
        with self._lock:
            for kind, entries in incoming.items():
                if isinstance(entries, dict):
                    self._cache.setdefault(kind, {}).update(copy_state({kind: entries})[kind])
            self.changed = True

    def state(self) -> dict[str, Any]:
        """The cache's tables (not a copy: the request is over when this is read)."""
        with self._lock:
            return dict(self._cache)


def copy_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy deep enough for msal: it replaces entries, never edits one in place."""
    return {
        kind: {k: dict(v) if isinstance(v, dict) else v for k, v in table.items()}
        if isinstance(table, dict)
        else table
        for kind, table in state.items()
    }


def three_way_merge(
    base: Mapping[str, Any], mine: Mapping[str, Any], theirs: Mapping[str, Any]
) -> dict[str, Any]:
    """Apply the changes ``base`` → ``mine`` on top of ``theirs``; return the result.

    Changes are per credential type and entry key: added or changed entries of
    ``mine`` are set, entries removed in ``mine`` are removed. On an entry both sides
    changed, ``mine`` wins. ``theirs`` is not modified.
    """
    result = {kind: dict(v) if isinstance(v, dict) else v for kind, v in theirs.items()}
    for kind in set(base) | set(mine):
        old, new = base.get(kind, {}), mine.get(kind, {})  # absent = an empty table
        if not isinstance(old, dict) or not isinstance(new, dict):
            if old != new:  # not a table of entries: whole-value semantics
                if kind in mine:
                    result[kind] = new
                else:
                    result.pop(kind, None)
            continue
        target = result.get(kind)
        if not isinstance(target, dict):
            target = result[kind] = {}
        for key in set(old) | set(new):
            if key in new:
                if new[key] != old.get(key):
                    target[key] = new[key]
            else:
                target.pop(key, None)
    return result


def parse_payload(plain: bytes) -> Optional[dict[str, Any]]:
    """The ``{"u": …, "c": {…}}`` document in a decrypted value, or None."""
    try:
        payload = json.loads(plain)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("c"), dict):
        return None
    return payload


def parse_cache(serialized: Any) -> dict[str, Any]:
    if not serialized:
        return {}
    if not isinstance(serialized, str):
        raise ConfigError("merge() expects a serialized msal token cache (JSON text)")
    try:
        incoming = json.loads(serialized)
    except (ValueError, RecursionError):
        incoming = None
    if not isinstance(incoming, dict):
        raise ConfigError("merge() expects a serialized msal token cache (a JSON object)")
    return incoming
