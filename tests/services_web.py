"""Every per-user web store behind one test interface, for the shared behaviour suite.

``web_store`` is parametrized over ``redis`` (standalone), ``cluster`` (3-node Redis
Cluster), ``postgresql`` (a real server, tests/services_postgres.py) and ``sqlite`` (a
file). Each :class:`WebStore` makes caches and looks at what is stored *from outside*
the library (raw Redis commands, SQL through psycopg/sqlite3, the database files).
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import msal
import pytest

from msal_keyring_cache.testing import LoopbackIdentityProvider
from msal_keyring_cache.web import UserCaches

STORES = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=pytest.mark.redis),
    pytest.param("postgresql", marks=pytest.mark.postgres),
    "sqlite",
]


@dataclass
class WebStore:
    name: str
    url: str
    cluster: bool = False
    redis: Any = None  # tests.services_redis.RedisBackend
    postgres: Any = None  # tests.services_postgres.PostgresServer
    path: Optional[Path] = None  # the SQLite file

    def caches(self, key: Any, **kwargs: Any) -> Any:
        from msal_keyring_cache.web import UserCaches

        kwargs.setdefault("timeout", 5)
        return UserCaches.from_url(self.url, key=key, cluster=self.cluster, **kwargs)

    @property
    def sql(self) -> bool:
        return self.redis is None

    # -- looking from outside ----------------------------------------------------------

    def dump(self) -> bytes:
        """Everything the store holds at rest, as bytes to grep."""
        if self.redis is not None:
            client = self.redis.client()
            try:
                parts = []
                for name in client.scan_iter(match="*"):
                    parts.append(name)
                    if client.type(name) == b"hash":
                        parts.extend(v for kv in client.hgetall(name).items() for v in kv)
                return b"\n".join(parts)
            finally:
                client.close()
        if self.postgres is not None:
            return bytes(self.postgres.dump())
        assert self.path is not None
        files = [self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-journal")]
        return b"".join(p.read_bytes() for p in files if p.exists())

    def names(self, prefix: str) -> set[str]:
        if self.redis is not None:
            client = self.redis.client()
            try:
                return {n.decode() for n in client.scan_iter(match=prefix + ":*")}
            finally:
                client.close()
        rows = self.query("SELECT name FROM msal_keyring_cache")
        return {r[0] for r in rows if r[0].startswith(prefix + ":")}

    def get(self, name: str) -> bytes:
        """The stored value (Fernet token) under ``name``."""
        if self.redis is not None:
            client = self.redis.client()
            try:
                return bytes(client.hget(name, "d"))
            finally:
                client.close()
        return bytes(self.query("SELECT value FROM msal_keyring_cache WHERE name = %s", name)[0][0])

    def put(self, name: str, value: bytes) -> None:
        """Overwrite the stored value under ``name`` (as an attacker with write access)."""
        if self.redis is not None:
            client = self.redis.client()
            try:
                client.hset(name, "d", value)
            finally:
                client.close()
            return
        self.execute("UPDATE msal_keyring_cache SET value = %s WHERE name = %s", value, name)

    def expire(self, name: str) -> None:
        """Make ``name``'s record expired now (no waiting)."""
        if self.redis is not None:
            client = self.redis.client()
            try:
                client.delete(name)  # Redis expires a key by deleting it
            finally:
                client.close()
            return
        self.execute("UPDATE msal_keyring_cache SET expires_at = 0 WHERE name = %s", name)

    def kill_connections(self) -> int:
        """Kill every client connection on the server side; how many."""
        if self.redis is not None:
            killed = 0
            nodes = self.redis.nodes if self.cluster else [self.redis.url]
            import redis

            for url in nodes:
                client = redis.Redis.from_url(url, socket_timeout=5)
                try:
                    killed += int(client.client_kill_filter(_type="normal", skipme=True))
                finally:
                    client.close()
            return killed
        assert self.postgres is not None
        rows = self.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = 'webtest' AND pid <> pg_backend_pid()"
        )
        return len(rows)

    def query(self, sql: str, *params: Any) -> list[Any]:
        if self.postgres is not None:
            import psycopg

            with psycopg.connect(self.postgres.url, autocommit=True) as conn:
                return list(conn.execute(sql, params).fetchall()) if "SELECT" in sql else []
        assert self.path is not None
        with sqlite3.connect(self.path, timeout=10) as conn:
            return list(conn.execute(sql.replace("%s", "?"), params).fetchall())

    def execute(self, sql: str, *params: Any) -> None:
        if self.postgres is not None:
            import psycopg

            with psycopg.connect(self.postgres.url, autocommit=True) as conn:
                conn.execute(sql, params)
            return
        assert self.path is not None
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            conn.execute(sql.replace("%s", "?"), params)
            conn.commit()
        finally:
            conn.close()


@pytest.fixture(params=STORES)
def web_store(request: pytest.FixtureRequest, tmp_path: Path) -> WebStore:
    """The shared web-cache behaviour runs once per store."""
    return make_web_store(request.param, request, tmp_path)


def make_web_store(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> WebStore:
    """A :class:`WebStore` of kind ``name`` (session servers come from ``request``)."""
    from tests.services_redis import RedisBackend

    if name in ("redis", "cluster"):
        if name == "cluster":
            cluster = request.getfixturevalue("redis_cluster")
            backend = RedisBackend("cluster", cluster.url, True)
            backend.nodes = [n.url for n in cluster.nodes]  # type: ignore[attr-defined]
        else:
            server = request.getfixturevalue("redis_server")
            backend = RedisBackend("standalone", server.url, False)
        return WebStore(name, backend.url, backend.cluster, redis=backend)
    if name == "postgresql":
        server = request.getfixturevalue("postgres_server")
        store = WebStore("postgresql", server.url, postgres=server)
        store.execute("DROP TABLE IF EXISTS msal_keyring_cache")  # each test starts empty
        return store
    from tests.services_postgres import require_sql

    require_sql()
    path = tmp_path / "web" / "tokens.db"
    path.parent.mkdir()
    return WebStore("sqlite", f"sqlite:///{path}", path=path)


AT = msal.TokenCache.CredentialType.ACCESS_TOKEN
ACCOUNT = msal.TokenCache.CredentialType.ACCOUNT


def new_prefix() -> str:
    """A fresh app prefix, so tests sharing a server never see each other's users."""
    return "t" + uuid.uuid4().hex[:10]


def sign_in(idp: LoopbackIdentityProvider, cache: Any, user: str, scope: str) -> dict[str, Any]:
    """A real username/password sign-in into ``cache``; its result."""
    app = idp.confidential_app(token_cache=cache)
    result: dict[str, Any] = app.acquire_token_by_username_password(user, "pw", scopes=[scope])
    assert "access_token" in result, result.get("error_description")
    return result


def scopes(caches: UserCaches, user: str) -> set[str]:
    """The scopes of ``user``'s stored access tokens."""
    with caches.for_user(user) as cache:
        return {entry["target"] for entry in cache.search(AT)}
