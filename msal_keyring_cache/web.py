"""Per-user encrypted token caches in Redis or Redis Cluster, for web apps and web APIs.

One :class:`UserCaches` serves every request of an app (it is thread-safe)::

    caches = UserCaches.from_url("redis://localhost:6379/0", key=FERNET_KEY, prefix="myapp")

    with caches.for_user(user_id) as cache:          # one msal cache for this request
        app = msal.ConfidentialClientApplication(..., token_cache=cache)
        result = app.acquire_token_silent(SCOPES, account=...)
    # on exit: saved if anything changed

How it is stored (docs/web.md has the details):

* One Redis hash per user, ``<prefix>:u:{<digest>}``: field ``v`` (a random version,
  new on every write) and ``d`` (the Fernet token). ``<digest>`` is an HMAC of the
  user id under a key derived from the Fernet key, so key names reveal no user id; the
  ``{…}`` hash tag keeps everything of one user in one Redis Cluster slot.
* The Fernet token encrypts ``{"u": <binding>, "c": <msal cache>}``; ``<binding>``
  identifies the user, so a value copied onto another user's key is refused.
* Saves are optimistic: a Lua compare-and-set on ``v``. When another request of the
  same user saved first, this request's own changes (a three-way diff against what it
  loaded) are applied on top of the new value and the save is retried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar, Union

import msal

from .config import DEFAULT_ENV_PREFIX, Settings
from .errors import CacheError, ConfigError, StoreError

__all__ = ["UserCaches", "WebStats", "three_way_merge"]

logger = logging.getLogger("msal_keyring_cache.web")

_DEFAULTS = Settings()
#: Attempts of the compare-and-set loop before giving up with StoreError.
DEFAULT_MAX_ATTEMPTS = 50
#: Extra tries redis-py makes on a connection error or timeout (from_url/from_env only).
CONNECTION_RETRIES = 2
_NAME_LABEL = b"msal-keyring-cache redis key names v1"
_BINDING_LABEL = b"msal-keyring-cache user binding v1\0"

# Compare-and-set on the version field. A key of another type (damaged by hand) has
# version "?", which is what a load reports for it, so it can be overwritten.
_CAS_SCRIPT = """
local t = redis.call('TYPE', KEYS[1])['ok']
local cur = ''
if t == 'hash' then
  cur = redis.call('HGET', KEYS[1], 'v') or ''
elseif t ~= 'none' then
  cur = '?'
end
if cur ~= ARGV[1] then return 0 end
if t ~= 'hash' and t ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

_FOREIGN = b"?"  # the version of a key that is not a hash
T = TypeVar("T")
Keys = Union[str, Sequence[str]]


@dataclass
class WebStats:
    """What a :class:`UserCaches` did in this process (tests and benchmarks read it)."""

    loads: int = 0
    saves: int = 0
    conflicts: int = 0  #: compare-and-set lost to another request: merged and retried
    refused: int = 0  #: values bound to another user, not served
    corrupt: int = 0  #: values that did not decrypt or parse, treated as empty
    migrated: int = 0  #: values re-encrypted with the first key / moved to its key name
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + count)


@dataclass
class _Loaded:
    version: str  # of the primary key ("" when absent, "?" when of a foreign type)
    cache: dict[str, Any]
    legacy: Optional[str] = None  # key name under an older key, to delete once saved
    rewrite: bool = False  # decrypted with an older key or found under an older name


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


class UserCaches:
    """Encrypted msal token caches in Redis, one per user, safe under concurrent requests.

    :param client: a redis-py client: ``redis.Redis`` or ``redis.cluster.RedisCluster``.
        Give it socket timeouts and a bounded ``retry`` (:meth:`from_url` does).
    :param key: a Fernet key or several; the first encrypts, every one decrypts, so a new
        key can be put in front to rotate.
    :param prefix: start of every Redis key name (no ``{`` or ``}``).
    :param ttl: seconds a user's cache lives after its last write.
    :param max_attempts: compare-and-set attempts per save before ``StoreError``.
    """

    def __init__(
        self,
        client: Any,
        *,
        key: Keys,
        prefix: str = _DEFAULTS.redis_prefix,
        ttl: int = _DEFAULTS.redis_ttl,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        from cryptography.fernet import Fernet

        from .crypto import fingerprint, is_fernet_key

        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys or not all(isinstance(k, str) and is_fernet_key(k) for k in keys):
            raise ConfigError(
                "UserCaches needs one or more Fernet keys (32 url-safe base64-encoded bytes "
                "each); make one with: msal-keyring-cache generate-key"
            )
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(
                f"Redis key prefix {prefix!r} is not valid: expected a non-empty text "
                "without '{' or '}' (braces are Redis Cluster hash tags)"
            )
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise ConfigError(f"Redis TTL {ttl!r} is not valid: expected whole seconds > 0")
        if max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self.max_attempts = max_attempts
        self.stats = WebStats()
        self._fernets = [Fernet(k.encode("ascii")) for k in keys]
        self._fingerprints = [fingerprint(k) for k in keys]
        # Key names use an HMAC key derived per Fernet key (domain-separated by label).
        self._name_keys = [
            hmac.new(base64.urlsafe_b64decode(k), _NAME_LABEL, hashlib.sha256).digest()
            for k in keys
        ]
        self._errors = _redis_errors()
        self._cas = self._call("preparing", client.register_script, _CAS_SCRIPT)

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
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> UserCaches:
        """Connect to ``url`` (``redis://``, ``rediss://``, ``unix://``) and return the caches.

        ``cluster=True`` for Redis Cluster (the URL names any one node). ``timeout``
        bounds every socket wait; with the few bounded retries a dead or hanging server
        gives ``StoreError`` within about ``3 × timeout``.
        """
        timeout = _DEFAULTS.redis_timeout if timeout is None else timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"Redis timeout {timeout!r} is not valid: expected seconds > 0")
        client = _connect(url, float(timeout), cluster)
        return cls(
            client,
            key=key,
            prefix=_DEFAULTS.redis_prefix if prefix is None else prefix,
            ttl=_DEFAULTS.redis_ttl if ttl is None else ttl,
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
        """Build from settings: ``<env_prefix>_REDIS_URL``, ``_KEY`` (or ``_KEY_FILE``),
        ``_REDIS_PREFIX``, ``_REDIS_TTL``, ``_REDIS_TIMEOUT``; ``overrides`` win."""
        settings = Settings.resolve(env_prefix, environ, **overrides)
        if not settings.redis_url:
            raise ConfigError(
                f"No Redis URL: set {settings.env_var('redis_url', env_prefix)} "
                "(e.g. redis://localhost:6379/0) or pass redis_url=."
            )
        keys = settings.key
        if keys is None and settings.key_file:
            from .crypto import read_key_file

            keys = read_key_file(settings.key_file)
        if not keys:
            raise ConfigError(
                f"No key for the web caches: set {settings.env_var('key', env_prefix)} "
                f"or {settings.env_var('key_file', env_prefix)} (Fernet keys; make one with: "
                "msal-keyring-cache generate-key)."
            )
        return cls.from_url(
            settings.redis_url,
            key=keys,
            prefix=settings.redis_prefix,
            ttl=settings.redis_ttl,
            timeout=settings.redis_timeout,
            cluster=cluster,
        )

    def __repr__(self) -> str:
        return f"<UserCaches prefix={self.prefix!r} keys={self._fingerprints}>"

    # -- public API --------------------------------------------------------------

    @contextmanager
    def for_user(self, user_id: str) -> Iterator[msal.SerializableTokenCache]:
        """The token cache of ``user_id`` for one request; saved on exit if it changed.

        Use a stable id of the signed-in user (e.g. the account's ``home_account_id``).
        If the block raises, changes made so far are still saved (a failure to save is
        then logged, and the block's exception propagates).
        """
        names, binding = self._names(user_id), self._binding(user_id)
        loaded = self._load(names, binding)
        cache = msal.SerializableTokenCache()
        if loaded.cache:
            cache.deserialize(json.dumps(loaded.cache))
        try:
            yield cache
        except Exception:
            try:
                self._finish(names, binding, loaded, cache)
            except CacheError as exc:
                logger.warning("Could not save a user's token cache after an error: %s", exc)
            raise
        self._finish(names, binding, loaded, cache)

    def merge(self, user_id: str, serialized: str) -> None:
        """Add the entries of a serialized msal cache to the user's cache (one save).

        For sign-in callbacks: redeem the code into a fresh ``SerializableTokenCache``,
        learn the user id from the result, then ``merge(user_id, temp.serialize())``.
        Entries the user already has under the same key are replaced.
        """
        incoming = json.loads(serialized) if serialized else {}
        if not isinstance(incoming, dict):
            raise ConfigError("merge() expects a serialized msal token cache (a JSON object)")
        # msal's own lock around its table: it has no public bulk-add API.
        with self.for_user(user_id) as cache, cache._lock:
            for kind, entries in incoming.items():
                if isinstance(entries, dict):
                    cache._cache.setdefault(kind, {}).update(entries)

    def delete_user(self, user_id: str) -> bool:
        """Delete everything stored for ``user_id`` (sign-out). True if anything was there."""
        deleted = 0
        for name in self._names(user_id):  # one DEL per name: they live in different slots
            deleted += int(self._call("deleting a user's token cache", self.client.delete, name))
        return deleted > 0

    def key_name(self, user_id: str) -> str:
        """The Redis key holding ``user_id``'s cache (reveals nothing of the user id)."""
        return self._names(user_id)[0]

    def close(self) -> None:
        """Close the Redis connections."""
        self._call("closing", self.client.close)

    # -- machinery ---------------------------------------------------------------

    def _names(self, user_id: str) -> list[str]:
        raw = _user_bytes(user_id)
        return [
            f"{self.prefix}:u:{{{hmac.new(k, raw, hashlib.sha256).hexdigest()[:32]}}}"
            for k in self._name_keys
        ]

    def _binding(self, user_id: str) -> str:
        # Inside the ciphertext only, so it need not be keyed; the prefix binds the app too.
        data = _BINDING_LABEL + self.prefix.encode() + b"\0" + _user_bytes(user_id)
        return hashlib.sha256(data).hexdigest()

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise _store_error(what, exc) from None

    def _read(self, name: str) -> tuple[Optional[bytes], Optional[bytes]]:
        try:
            version, data = self.client.hmget(name, ["v", "d"])
        except self._errors as exc:
            if "WRONGTYPE" in str(exc):
                logger.warning("Redis key %s is not a token cache hash; treating it as empty "
                               "(it is replaced on the next save)", name)  # fmt: skip
                self.stats.add("corrupt")
                return _FOREIGN, None
            raise _store_error("loading a user's token cache", exc) from None
        return _as_bytes(version), _as_bytes(data)

    def _load(self, names: list[str], binding: str) -> _Loaded:
        self.stats.add("loads")
        for index, name in enumerate(names):
            version, data = self._read(name)
            if version is None and data is None:
                continue  # absent: look under the name of an older key (rotation)
            if version == _FOREIGN and data is None:  # not a hash: already logged
                if index:
                    continue
                return _Loaded(_FOREIGN.decode(), {})
            if index:
                cache, _ = self._open(name, data, binding)
                return _Loaded("", cache or {}, legacy=name, rewrite=cache is not None)
            cache, old_key = self._open(name, data, binding)
            return _Loaded((version or b"").decode("ascii", "replace"), cache or {},
                           rewrite=old_key)  # fmt: skip
        return _Loaded("", {})

    def _open(
        self, name: str, data: Optional[bytes], binding: str
    ) -> tuple[Optional[dict[str, Any]], bool]:
        """Decrypt and check a value: (cache or None if unusable, decrypted by an old key)."""
        from cryptography.fernet import InvalidToken

        if not data:
            self._unusable(name, "has no encrypted data")
            return None, False
        plain, old_key = None, False
        for index, fernet in enumerate(self._fernets):
            try:
                plain, old_key = fernet.decrypt(data), index > 0
                break
            except InvalidToken:
                continue
        if plain is None:
            self._unusable(name, "does not decrypt with any configured key")
            return None, False
        try:
            payload = json.loads(plain)
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("c"), dict):
            self._unusable(name, "does not hold a token cache")
            return None, False
        if not hmac.compare_digest(str(payload.get("u", "")).encode(), binding.encode()):
            self.stats.add("refused")
            logger.warning(
                "Refused the value of Redis key %s: it belongs to another user (copied "
                "there?). Treating this user's cache as empty; it is replaced on the next "
                "save.",
                name,
            )
            return None, False
        return payload["c"], old_key

    def _unusable(self, name: str, why: str) -> None:
        self.stats.add("corrupt")
        logger.warning("The value of Redis key %s %s; treating this user's cache as empty "
                       "(the user signs in again).", name, why)  # fmt: skip

    def _finish(
        self,
        names: list[str],
        binding: str,
        loaded: _Loaded,
        cache: msal.SerializableTokenCache,
    ) -> None:
        mine = json.loads(cache.serialize())
        if mine == loaded.cache and not loaded.rewrite:
            return
        self._save(names[0], binding, loaded, mine)

    def _save(self, name: str, binding: str, loaded: _Loaded, mine: dict[str, Any]) -> None:
        version, target = loaded.version, mine
        for attempt in range(self.max_attempts):
            payload = json.dumps({"u": binding, "c": target}, separators=(",", ":"))
            token = self._fernets[0].encrypt(payload.encode())
            new_version = secrets.token_hex(8)
            args = [version, new_version, token, self.ttl]
            if self._call("saving a user's token cache", self._cas, keys=[name], args=args):
                self.stats.add("saves")
                if loaded.rewrite:
                    self.stats.add("migrated")
                if loaded.legacy:
                    self._call("removing a user's cache under an old key", self.client.delete,
                               loaded.legacy)  # fmt: skip
                return
            # Another request of this user saved first: put our changes on top of theirs.
            self.stats.add("conflicts")
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))  # noqa: S311 - jitter
            raw_version, data = self._read(name)
            version = (raw_version or b"").decode("ascii", "replace")
            theirs: dict[str, Any] = {}
            if data is not None:
                theirs = self._open(name, data, binding)[0] or {}
            target = three_way_merge(loaded.cache, mine, theirs)
        raise StoreError(
            f"Could not save a user's token cache after {self.max_attempts} attempts: other "
            "requests of the same user kept changing it at the same time. Retry the request; "
            "if this persists, raise max_attempts."
        )


def _user_bytes(user_id: str) -> bytes:
    if not isinstance(user_id, str) or not user_id:
        raise ConfigError("user_id must be a non-empty text (a stable id of the signed-in user)")
    return user_id.encode("utf-8")


def _as_bytes(value: Any) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")  # a client made with decode_responses=True


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200].rstrip(".")
    return text or "no details"


def _store_error(what: str, exc: BaseException) -> StoreError:
    logger.debug("Redis call failed while %s: %s", what, type(exc).__name__)
    return StoreError(
        f"Redis failed while {what}: {type(exc).__name__}: {_short(exc)}. Check that the "
        "Redis server (or every Redis Cluster node) is running and reachable; the request "
        "was not served from a stale or empty cache."
    )


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError(
            'Per-user web caches need redis-py: pip install "msal-keyring-cache[redis]"'
        ) from None
    return redis


def _redis_errors() -> tuple[type[BaseException], ...]:
    redis = _import_redis()
    from redis.exceptions import RedisClusterException

    return (redis.RedisError, RedisClusterException, OSError)


def _connect(url: str, timeout: float, cluster: bool) -> Any:
    redis = _import_redis()
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    # Bounded: a dead or hanging server costs at most (1 + CONNECTION_RETRIES) socket
    # timeouts, never redis-py's default of ten retries with growing back-off.
    retry = Retry(ExponentialBackoff(cap=min(0.5, timeout), base=0.05), CONNECTION_RETRIES)
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    try:
        if cluster:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(url, retry=retry, **options)
        return redis.Redis.from_url(url, retry=retry, **options)
    except ValueError as exc:
        raise ConfigError(f"The Redis URL is not valid: {_short(exc)}") from None
    except _redis_errors() as exc:
        raise StoreError(
            f"Could not connect to Redis{' Cluster' if cluster else ''}: "
            f"{type(exc).__name__}: {_short(exc)}. Check that it is running and reachable."
        ) from None
