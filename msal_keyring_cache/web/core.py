"""One encrypted msal token cache per user, over any per-user :class:`~.base.Backend`.

One :class:`UserCaches` serves every request of an app (it is thread-safe)::

    caches = UserCaches.from_url("redis://localhost:6379/0", key=FERNET_KEY, prefix="myapp")
    # or "sqlite:////var/lib/myapp/tokens.db", "postgresql://user:pw@db/myapp",
    # or UserCaches.from_engine(engine, ...)

    with caches.for_user(user_id) as cache:          # one msal cache for this request
        app = msal.ConfidentialClientApplication(..., token_cache=cache)
        result = app.acquire_token_silent(SCOPES, account=...)
    # on exit: saved if anything changed

The core does the same on every store (docs/web.md has the details):

* Names reveal no user id and values are encrypted and bound to their user
  (:mod:`.seal`); a value copied onto another user or app is refused.
* Saves are optimistic: a compare-and-set on the record's version. When another request
  of the same user saved first, this request's own changes (a three-way diff against what
  it loaded) are applied on top of the new value and the save is retried
  (:mod:`.merge`).
"""

from __future__ import annotations

import base64
import logging
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..config import DEFAULT_ENV_PREFIX, MAX_TTL, Settings
from ..errors import CacheError, ConfigError, StoreError
from .base import Backend, Record
from .merge import UserTokenCache, copy_state, parse_cache, parse_payload, three_way_merge
from .seal import Sealer, User
from .session import check_server_side

__all__ = ["UserCaches", "UserTokenCache", "WebStats", "three_way_merge"]

logger = logging.getLogger("msal_keyring_cache.web")

_DEFAULTS = Settings()
#: Attempts of the compare-and-set loop before giving up with StoreError.
DEFAULT_MAX_ATTEMPTS = 50
#: Longest timeout accepted (seconds): a web request must not wait longer for its tokens.
MAX_TIMEOUT = 600.0
_SESSION_USER = "session:"  # binding of a session's cache when no user id is given

Keys = Union[str, Sequence[str]]


@dataclass
class WebStats:
    """What a :class:`UserCaches` did in this process (tests and benchmarks read it)."""

    loads: int = 0
    saves: int = 0
    conflicts: int = 0  #: compare-and-set lost to another request: merged and retried
    refused: int = 0  #: values bound to another user or app, not served
    corrupt: int = 0  #: values that did not decrypt or parse, treated as empty
    migrated: int = 0  #: values re-encrypted with the first key / moved to its name
    purged: int = 0  #: expired records deleted by purge_expired()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + count)


@dataclass
class _Loaded:
    version: str  # of the primary name ("" when absent)
    cache: dict[str, Any]  # handed to msal, which changes it
    plain: bytes = b""  # the decrypted value: parsed again only for a merge
    legacy: Optional[str] = None  # name under an older key, to delete once saved
    rewrite: bool = False  # decrypted with an older key or found under an older name

    def base(self) -> dict[str, Any]:
        """What was loaded, as it was (msal has changed ``cache`` since)."""
        payload = parse_payload(self.plain) if self.plain else None
        return payload["c"] if payload else {}


class UserCaches:
    """Encrypted msal token caches, one per user, safe under concurrent requests.

    :param backend: where records live: a :class:`~.base.Backend`, or a redis-py client
        (``redis.Redis`` / ``redis.cluster.RedisCluster``: give it socket timeouts and a
        bounded ``retry``, as :meth:`from_url` does).
    :param key: a Fernet key or several; the first encrypts, every one decrypts, so a new
        key can be put in front to rotate.
    :param prefix: names this app's records (no ``{`` or ``}``, at most 64 characters) and
        is bound into every value.
    :param ttl: seconds a user's cache lives after its last write (at most 10 years).
    :param max_attempts: compare-and-set attempts per save before ``StoreError``.
    """

    def __init__(
        self,
        backend: Any,
        *,
        key: Keys,
        prefix: str = _DEFAULTS.web_prefix,
        ttl: int = _DEFAULTS.web_ttl,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.stats = WebStats()
        self._seals = Sealer(key, prefix, self.stats.add)
        _check_ttl(ttl)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise ConfigError("max_attempts must be a whole number from 1 to 1000")
        if not 1 <= max_attempts <= 1000:
            raise ConfigError("max_attempts must be a whole number from 1 to 1000")
        if not isinstance(backend, Backend):
            from .redis_backend import RedisBackend

            backend = RedisBackend(backend)
        self.backend: Backend = backend
        self.prefix = prefix
        self.ttl = ttl
        self.max_attempts = max_attempts

    # -- construction ----------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key: Keys,
        prefix: Optional[str] = None,
        ttl: Optional[int] = None,
        timeout: Optional[float] = None,
        cluster: bool = False,
        table: Optional[str] = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> UserCaches:
        """Connect to ``url`` and return the caches.

        * ``redis://``, ``rediss://``, ``unix://``: Redis; ``cluster=True`` for Redis
          Cluster (the URL names any one node).
        * ``sqlite:///PATH``: an SQLite file (WAL, busy timeout), for one server.
        * ``postgresql://USER:PASSWORD@HOST:PORT/DB``: PostgreSQL through psycopg 3.
        * any other SQLAlchemy URL (``mysql+pymysql://…``): through its dialect.

        ``timeout`` bounds every wait for the server (connecting, each command or
        statement, a busy lock); a dead server gives ``StoreError`` within a few timeouts.
        ``table`` names the SQL table (default ``msal_keyring_cache``).
        """
        if not isinstance(url, str) or not url.strip():
            raise ConfigError("The web cache URL is empty: expected redis://, sqlite:/// …")
        seconds = _check_timeout(_DEFAULTS.web_timeout if timeout is None else timeout)
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        backend: Backend
        if scheme in ("redis", "rediss", "unix"):
            if table is not None:
                raise ConfigError("table= is for SQL databases, not Redis")
            from .redis_backend import RedisBackend

            backend = RedisBackend.connect(url, seconds, cluster)
        elif scheme:
            if cluster:
                raise ConfigError("cluster=True is for Redis Cluster, not SQL databases")
            from .sql_backend import SqlBackend

            backend = SqlBackend.connect(url, seconds, table)
        else:
            raise ConfigError(
                "The web cache URL is not valid: expected redis://, rediss://, unix://, "
                "sqlite:///PATH, postgresql://… or another SQLAlchemy URL"
            )
        try:
            return cls(
                backend,
                key=key,
                prefix=_DEFAULTS.web_prefix if prefix is None else prefix,
                ttl=_DEFAULTS.web_ttl if ttl is None else ttl,
                max_attempts=max_attempts,
            )
        except BaseException:
            backend.close()
            raise

    @classmethod
    def from_engine(
        cls,
        engine: Any,
        *,
        key: Keys,
        prefix: Optional[str] = None,
        ttl: Optional[int] = None,
        table: Optional[str] = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> UserCaches:
        """The caches in a table of an app's own SQLAlchemy engine (not closed by :meth:`close`).

        The engine's own settings apply: give it connect and statement timeouts.
        """
        from .sql_backend import SqlBackend

        return cls(
            SqlBackend(engine, table=table),
            key=key,
            prefix=_DEFAULTS.web_prefix if prefix is None else prefix,
            ttl=_DEFAULTS.web_ttl if ttl is None else ttl,
            max_attempts=max_attempts,
        )

    @classmethod
    def in_sessions(
        cls, *, key: Keys, prefix: Optional[str] = None, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> UserCaches:
        """Caches kept only in server-side sessions (:meth:`for_session`); no store.

        :meth:`for_user`, :meth:`delete_user` and the like then raise ``ConfigError``.
        """
        from .session import NoStore

        return cls(
            NoStore(),
            key=key,
            prefix=_DEFAULTS.web_prefix if prefix is None else prefix,
            max_attempts=max_attempts,
        )

    @classmethod
    def from_env(
        cls,
        env_prefix: str = DEFAULT_ENV_PREFIX,
        environ: Optional[Mapping[str, str]] = None,
        *,
        cluster: bool = False,
        **overrides: Any,
    ) -> UserCaches:
        """Build from settings: ``<env_prefix>_WEB_URL``, ``_KEY`` (or ``_KEY_FILE``),
        ``_WEB_PREFIX``, ``_WEB_TTL``, ``_WEB_TIMEOUT`` (the ``_REDIS_*`` names are
        aliases); ``overrides`` win."""
        settings = Settings.resolve(env_prefix, environ, **overrides)
        if not settings.web_url:
            raise ConfigError(
                f"No web cache URL: set {settings.env_var('web_url', env_prefix)} "
                "(e.g. redis://localhost:6379/0 or sqlite:////var/lib/app/tokens.db) "
                "or pass web_url=."
            )
        keys = settings.key
        if keys is None and settings.key_file:
            from ..crypto import read_key_file

            keys = read_key_file(settings.key_file)
        if not keys:
            raise ConfigError(
                f"No key for the web caches: set {settings.env_var('key', env_prefix)} "
                f"or {settings.env_var('key_file', env_prefix)} (Fernet keys; make one with: "
                "msal-keyring-cache generate-key)."
            )
        return cls.from_url(
            settings.web_url,
            key=keys,
            prefix=settings.web_prefix,
            ttl=settings.web_ttl,
            timeout=settings.web_timeout,
            cluster=cluster,
        )

    def __repr__(self) -> str:
        return (
            f"<UserCaches {self.backend!r} prefix={self.prefix!r} "
            f"keys={list(self._seals.keys.fingerprints)}>"
        )

    # -- public API --------------------------------------------------------------------

    # Not decorated: mutmut mutates no decorated function (nor a property's), so the
    # bodies are plain methods, wrapped after them.
    def _client(self) -> Any:
        """The redis-py client of a Redis store (``AttributeError`` for other stores)."""
        return getattr(self.backend, "client")  # noqa: B009 - a clear AttributeError

    client = property(_client)

    def _per_user(self, user_id: str) -> Iterator[UserTokenCache]:
        """The token cache of ``user_id`` for one request; saved on exit if it changed.

        Use a stable id of the signed-in user (e.g. the account's ``home_account_id``).
        If the block raises, changes made so far (a token msal just got) are still saved;
        a failure to save is then logged, and the block's exception propagates.
        """
        user = self._seals.user(user_id)
        loaded = self._load(user)
        cache = UserTokenCache(loaded.cache)
        try:
            yield cache
        except BaseException:
            try:
                self._finish(user, loaded, cache)
            except CacheError as exc:
                logger.warning("Could not save a user's token cache after an error: %s", exc)
            raise
        self._finish(user, loaded, cache)

    for_user = contextmanager(_per_user)

    def _in_session(
        self, session: MutableMapping[str, Any], user_id: Optional[str] = None
    ) -> Iterator[UserTokenCache]:
        """The token cache kept in a server-side ``session`` (dict-like); saved on exit.

        For Flask-Session, Django sessions (database, cache or file backend) and Starlette
        sessions backed by a server-side store. The value is encrypted and bound to
        ``user_id`` (or, without one, to a random id kept in the same session), so a value
        copied into another session or user is refused. Refuses signed-cookie sessions
        (Flask's default, Django's ``signed_cookies``): the cache must not travel to the
        browser. A value changed in the session since it was loaded is merged as
        :meth:`for_user` merges.
        """
        check_server_side(session)
        slot = f"{self.prefix}:tokens"
        if user_id is None:
            sid = session.get(f"{self.prefix}:id")
            if not isinstance(sid, str) or not sid:
                sid = base64.urlsafe_b64encode(_random(16)).decode("ascii")
                session[f"{self.prefix}:id"] = sid
            binding = self._seals.binding(_SESSION_USER + sid)
        else:
            binding = self._seals.user(user_id).binding
        self.stats.add("loads")
        raw = session.get(slot)
        base = self._seals.open_text(slot, raw, binding)
        cache = UserTokenCache(copy_state(base))  # msal changes its copy; base stays for a merge
        try:
            yield cache
        except BaseException:
            self._finish_session(session, slot, binding, raw, base, cache)
            raise
        self._finish_session(session, slot, binding, raw, base, cache)

    for_session = contextmanager(_in_session)

    def merge(self, user_id: str, serialized: str) -> None:
        """Add the entries of a serialized msal cache to the user's cache (one save).

        For sign-in callbacks: redeem the code into a fresh ``SerializableTokenCache``,
        learn the user id from the result, then ``merge(user_id, temp.serialize())``.
        Entries the user already has under the same key are replaced.
        """
        incoming = parse_cache(serialized)
        with self.for_user(user_id) as cache:
            cache.absorb(incoming)

    def delete_user(self, user_id: str) -> bool:
        """Delete everything stored for ``user_id`` (sign-out). True if anything was there."""
        deleted = False
        for name in self._seals.user(user_id).names:  # one per name: separate slots / rows
            deleted = self.backend.delete(name) or deleted
        return deleted

    def purge_expired(self) -> int:
        """Delete the records whose TTL has passed; how many (Redis expires keys itself: 0)."""
        count = self.backend.purge_expired()
        self.stats.add("purged", count)
        return count

    def key_name(self, user_id: str) -> str:
        """The name (Redis key, SQL row) holding ``user_id``'s cache; reveals no user id."""
        return self._seals.user(user_id).names[0]

    def close(self) -> None:
        """Close the connections this object opened."""
        self.backend.close()

    def __enter__(self) -> UserCaches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- machinery ---------------------------------------------------------------------

    def _binding(self, user_id: str) -> str:
        return self._seals.binding(user_id)

    def _load(self, user: User) -> _Loaded:
        self.stats.add("loads")
        for index, name in enumerate(user.names):
            record = self.backend.load(name)
            if record is None:
                continue  # absent: look under the name of an older key (rotation)
            if record.value is None:  # expired, or not a value at all
                if record.damaged:
                    self._seals.unusable(name, "is not a token cache record")
                if index:
                    continue
                return _Loaded(record.version, {})
            cache, old_key, plain = self._seals.decrypt(name, record.value, user.binding)
            if index:
                return _Loaded("", cache or {}, plain, legacy=name, rewrite=cache is not None)
            return _Loaded(record.version, cache or {}, plain, rewrite=old_key)
        return _Loaded("", {})

    def _finish(self, user: User, loaded: _Loaded, cache: UserTokenCache) -> None:
        if not cache.changed and not loaded.rewrite:
            return
        self._save(user, loaded, cache.state())

    def _save(self, user: User, loaded: _Loaded, mine: dict[str, Any]) -> None:
        name, version, target = user.names[0], loaded.version, mine
        base: Optional[dict[str, Any]] = None
        for attempt in range(self.max_attempts):
            if self.backend.save(name, version, self._seals.seal(user.binding, target), self.ttl):
                self.stats.add("saves")
                if loaded.rewrite:
                    self.stats.add("migrated")
                if loaded.legacy:
                    self.backend.delete(loaded.legacy)
                return
            # Another request of this user saved first: put our changes on top of theirs.
            self.stats.add("conflicts")
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))  # noqa: S311 - jitter
            if base is None:
                base = loaded.base()
            record = self.backend.load(name)
            version, theirs = _version(record), {}
            if record is not None and record.value is not None:
                theirs = self._seals.open(name, record.value, user.binding)[0] or {}
            target = three_way_merge(base, mine, theirs)
        raise StoreError(
            f"Could not save a user's token cache after {self.max_attempts} attempts: other "
            "requests of the same user kept changing it at the same time. Retry the request; "
            "if this persists, raise max_attempts."
        )

    def _finish_session(
        self,
        session: MutableMapping[str, Any],
        slot: str,
        binding: str,
        raw: Any,
        base: dict[str, Any],
        cache: UserTokenCache,
    ) -> None:
        if not cache.changed:
            return
        mine = cache.state()
        current = session.get(slot)
        if current != raw:  # changed in the session since we loaded it: merge on top
            self.stats.add("conflicts")
            mine = three_way_merge(base, mine, self._seals.open_text(slot, current, binding))
        session[slot] = self._seals.seal(binding, mine).decode("ascii")
        self.stats.add("saves")


def _version(record: Optional[Record]) -> str:
    return "" if record is None else record.version


def _random(size: int) -> bytes:
    import os

    return os.urandom(size)


def _check_ttl(ttl: Any) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL:
        raise ConfigError(
            f"The web cache TTL {ttl!r} is not valid: expected whole seconds from 1 to "
            f"{MAX_TTL} (10 years)"
        )
    return ttl


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigError(f"The web cache timeout {timeout!r} is not valid: expected seconds")
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise ConfigError(
            f"The web cache timeout {timeout!r} is not valid: expected seconds > 0 and "
            f"at most {MAX_TIMEOUT:g}"
        )
    return float(timeout)
