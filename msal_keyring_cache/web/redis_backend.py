"""Per-user records in Redis or Redis Cluster (the 0.1.0 data format, unchanged).

One hash per user, ``<prefix>:u:{<digest>}``: field ``v`` (a random version, new on
every write) and ``d`` (the Fernet token). The ``{…}`` hash tag keeps a user in one
Redis Cluster slot. A save is one Lua compare-and-set on ``v`` that also sets the TTL,
so Redis expires idle users itself.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Callable, ClassVar, Optional, TypeVar

from ..config import redact
from ..errors import ConfigError, StoreError
from .base import Backend, Record

__all__ = ["RedisBackend"]

logger = logging.getLogger("msal_keyring_cache.web")

#: Extra tries redis-py makes on a connection error or timeout (connect() only).
CONNECTION_RETRIES = 2

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
_FOREIGN = "?"  # the version of a key that is not a hash
_FIELDS = ("v", "d")
T = TypeVar("T")


class RedisBackend(Backend):
    """Records in Redis through a redis-py client (standalone or cluster)."""

    kind: ClassVar[str] = "redis"

    def __init__(self, client: Any) -> None:
        self.client = client
        self._errors = _redis_errors()
        self._cluster = type(client).__name__ == "RedisCluster"
        self._cas = self._call("preparing", client.register_script, _CAS_SCRIPT)

    @classmethod
    def connect(cls, url: str, timeout: float, cluster: bool) -> RedisBackend:
        """A client for ``url`` with socket timeouts and a bounded retry."""
        return cls(_connect(url, timeout, cluster))

    def __repr__(self) -> str:
        return "RedisBackend(cluster)" if self._cluster else "RedisBackend()"

    def load(self, name: str) -> Optional[Record]:
        try:
            version, data = self.client.hmget(name, _FIELDS)
        except self._errors as exc:
            if "WRONGTYPE" in str(exc):
                return Record(_FOREIGN, None, damaged=True)
            raise _store_error("loading a user's token cache", exc) from None
        if version is None and data is None:
            return None
        return Record(_text(version), b"" if data is None else _bytes(data))

    def save(self, name: str, seen: str, value: bytes, ttl: int) -> bool:
        args = [seen, secrets.token_hex(8), value, ttl]
        return bool(self._call("saving a user's token cache", self._cas, keys=[name], args=args))

    def delete(self, name: str) -> bool:
        return bool(self._call("deleting a user's token cache", self.client.delete, name))

    def close(self) -> None:
        self._call("closing", self.client.close)

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise _store_error(what, exc) from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")  # decode_responses


def _short(exc: BaseException) -> str:
    text = redact(" ".join(str(exc).split()))[:200].rstrip(".")
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
            'Per-user web caches in Redis need redis-py: pip install "msal-keyring-cache[redis]"'
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
