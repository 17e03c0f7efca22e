"""Per-user encrypted token caches for web apps and web APIs.

:class:`UserCaches` keeps one encrypted msal token cache per signed-in user in Redis
(or Redis Cluster), in any SQL database through SQLAlchemy 2 (SQLite, PostgreSQL, …),
or inside a server-side session; docs/web.md tells how. The pieces:

* :mod:`.core`: the caches (loads, optimistic saves, key rotation, TTL, stats, sessions);
* :mod:`.seal`: names, user binding and encryption of values;
* :mod:`.merge`: a user's msal cache, copied and merged entry by entry;
* :mod:`.base`: what a store must do (:class:`Backend`, :class:`Record`);
* :mod:`.redis_backend`, :mod:`.sql_backend`: the stores;
* :mod:`.session`: which sessions may hold a cache.
"""

from __future__ import annotations

from .base import Backend, Record
from .core import UserCaches, UserTokenCache, WebStats, three_way_merge

__all__ = ["Backend", "Record", "UserCaches", "UserTokenCache", "WebStats", "three_way_merge"]
