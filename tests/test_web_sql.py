"""What only the SQL stores do: the table, SQLite's WAL and busy timeout, killed writers,
row locks, an app's own engine, purge, and no password anywhere."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import ConfigError, StoreError
from msal_keyring_cache.testing import LoopbackIdentityProvider
from msal_keyring_cache.web import UserCaches
from msal_keyring_cache.web.sql_backend import ddl, define_table
from tests.helpers import PYTHON, child_env
from tests.services_postgres import require_sql
from tests.services_web import AT, scopes


@pytest.fixture(autouse=True)
def _sql() -> None:
    require_sql()


def _sign_in(idp: LoopbackIdentityProvider, cache: Any, user: str, scope: str) -> None:
    app = idp.confidential_app(token_cache=cache)
    result = app.acquire_token_by_username_password(user, "pw", scopes=[scope])
    assert "access_token" in result


def test_sqlite_file_is_wal_private_to_the_table_and_documented_ddl_matches(
    tmp_path: Path, key: str, idp: LoopbackIdentityProvider
) -> None:
    path = tmp_path / "tokens.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE app_users (id INTEGER PRIMARY KEY)")  # the app's own table
    conn.executescript(ddl("sqlite", table="tokens"))  # created ahead, as the docs show
    conn.close()
    caches = UserCaches.from_url(f"sqlite:///{path}", key=key, prefix="app", table="tokens")
    with caches.for_user("amy") as cache:
        _sign_in(idp, cache, "amy@example.com", "api://loopback/amy")
    caches.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"app_users", "tokens"}
    columns = [r[1] for r in conn.execute("PRAGMA table_info(tokens)")]
    assert columns == ["name", "version", "value", "expires_at"]
    assert conn.execute("SELECT count(*) FROM tokens").fetchone() == (1,)
    conn.close()
    assert "CREATE TABLE tokens" in ddl("sqlite", table="tokens")
    assert "BYTEA" in ddl("postgresql")
    with pytest.raises(ConfigError, match="dialect"):
        ddl("nosuchdb")


def test_define_table_for_an_apps_metadata() -> None:
    import sqlalchemy as sa

    metadata = sa.MetaData()
    table = define_table(metadata, "web_tokens")
    assert metadata.tables["web_tokens"] is table
    assert [c.name for c in table.columns] == ["name", "version", "value", "expires_at"]
    for bad in ("1abc", "a-b", "x" * 60, "drop table;"):
        with pytest.raises(ConfigError, match="table name"):
            define_table(sa.MetaData(), bad)


def test_from_engine_uses_the_apps_engine_and_leaves_it_open(
    tmp_path: Path, key: str, idp: LoopbackIdentityProvider
) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    caches = UserCaches.from_engine(engine, key=key, prefix="mine")
    with caches.for_user("bea") as cache:
        _sign_in(idp, cache, "bea@example.com", "api://loopback/bea")
    caches.close()
    with engine.connect() as conn:  # still usable: not disposed by close()
        assert conn.execute(sa.text("SELECT count(*) FROM msal_keyring_cache")).scalar() == 1
    again = UserCaches.from_engine(engine, key=key, prefix="mine")
    assert scopes(again, "bea") == {"api://loopback/bea"}
    with pytest.raises(ConfigError, match="Engine"):
        UserCaches.from_engine("sqlite:///x.db", key=key)


def test_sqlite_refuses_memory_and_bad_urls(key: str) -> None:
    for url in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ConfigError, match="in-memory"):
            UserCaches.from_url(url, key=key)
    with pytest.raises(ConfigError, match="not valid"):
        UserCaches.from_url("no url at all", key=key)
    with pytest.raises(ConfigError, match="cluster"):
        UserCaches.from_url("sqlite:////tmp/x.db", key=key, cluster=True)


def test_sqlite_locked_by_another_writer_is_a_store_error_within_the_timeout(
    tmp_path: Path, key: str, idp: LoopbackIdentityProvider
) -> None:
    path = tmp_path / "tokens.db"
    caches = UserCaches.from_url(f"sqlite:///{path}", key=key, timeout=1)
    with caches.for_user("cal") as cache:
        _sign_in(idp, cache, "cal@example.com", "api://loopback/first")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's long write transaction
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked"), caches.for_user("cal") as cache:
            _sign_in(idp, cache, "cal@example.com", "api://loopback/second")
        assert time.monotonic() - started < 15  # the 1 s busy timeout, plus slack
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert scopes(caches, "cal") == {"api://loopback/first"}  # nothing half-written


KILLED_WRITER = """
import os, signal, sys
kind, where, name = sys.argv[1:4]
if kind == "sqlite":
    import sqlite3
    conn = sqlite3.connect(where, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE msal_keyring_cache SET value = ?, version = version + 1 WHERE name = ?",
                 (b"half-written", name))
else:
    import psycopg
    conn = psycopg.connect(where)
    conn.execute("UPDATE msal_keyring_cache SET value = %s, version = version + 1 WHERE name = %s",
                 (b"half-written", name))
print("written", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # dies inside its transaction, connection and all
"""


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_writer_killed_mid_save_loses_nothing(
    kind: str, tmp_path: Path, key: str, idp: LoopbackIdentityProvider, request: Any
) -> None:
    if kind == "sqlite":
        where = str(tmp_path / "tokens.db")
        url = f"sqlite:///{where}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = where = server.url
    caches = UserCaches.from_url(url, key=key, prefix="killed" + str(os.getpid()), timeout=5)
    with caches.for_user("kim") as cache:
        _sign_in(idp, cache, "kim@example.com", "api://loopback/kept")
    done = subprocess.run([PYTHON, "-c", KILLED_WRITER, kind, where, caches.key_name("kim")],
                          env=child_env(), capture_output=True, timeout=60)  # fmt: skip
    assert done.returncode == -signal.SIGKILL
    assert b"written" in done.stdout
    assert scopes(caches, "kim") == {"api://loopback/kept"}  # the half-write never landed
    with caches.for_user("kim") as cache:  # and the next save works
        _sign_in(idp, cache, "kim@example.com", "api://loopback/next")
    assert scopes(caches, "kim") == {"api://loopback/kept", "api://loopback/next"}
    assert caches.stats.corrupt == 0
    caches.close()


@pytest.mark.postgres
def test_postgres_row_lock_is_bounded_by_the_timeout(
    postgres_server: Any, key: str, idp: LoopbackIdentityProvider
) -> None:
    import psycopg

    caches = UserCaches.from_url(postgres_server.url, key=key, prefix="locked", timeout=1)
    with caches.for_user("lou") as cache:
        _sign_in(idp, cache, "lou@example.com", "api://loopback/first")
    holder = psycopg.connect(postgres_server.url)
    holder.execute("SELECT 1 FROM msal_keyring_cache WHERE name = %s FOR UPDATE",
                   (caches.key_name("lou"),))  # fmt: skip
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="timeout"), caches.for_user("lou") as cache:
            _sign_in(idp, cache, "lou@example.com", "api://loopback/second")
        assert time.monotonic() - started < 15  # lock_timeout = 1 s, plus slack
    finally:
        holder.rollback()
        holder.close()
    assert scopes(caches, "lou") == {"api://loopback/first"}
    caches.close()


@pytest.mark.postgres
def test_postgres_password_never_shown(
    postgres_server: Any, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.services_postgres import PASSWORD

    wrong = postgres_server.url.replace(PASSWORD, "hunter2-wrong")
    caches = UserCaches.from_url(wrong, key=key, timeout=2)
    refused = pytest.raises(StoreError)
    with caplog.at_level(logging.DEBUG), refused as caught, caches.for_user("x"):
        pass
    assert "password authentication failed" in str(caught.value)
    good = UserCaches.from_url(postgres_server.url, key=key)
    for text in (str(caught.value), repr(caches), repr(good), caplog.text):
        assert "hunter2" not in text
        assert PASSWORD not in text
    good.close()


@pytest.mark.postgres
def test_two_processes_create_the_table_at_once(postgres_server: Any, key: str) -> None:
    import psycopg

    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS race_tokens")
    child = (
        "import sys; from msal_keyring_cache.web import UserCaches\n"
        "c = UserCaches.from_url(sys.argv[1], key=sys.argv[2], table='race_tokens')\n"
        "with c.for_user(sys.argv[3]) as cache: cache.absorb({'AppMetadata': {'k': {}}})\n"
    )
    procs = [subprocess.Popen([PYTHON, "-c", child, postgres_server.url, key, f"u{i}"],
                              env=child_env()) for i in range(4)]  # fmt: skip
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    with psycopg.connect(postgres_server.url) as conn:
        assert conn.execute("SELECT count(*) FROM race_tokens").fetchone() == (4,)


def test_purge_runs_while_requests_run(tmp_path: Path, key: str) -> None:
    caches = UserCaches.from_url(f"sqlite:///{tmp_path / 't.db'}", key=key, prefix="p")
    for i in range(20):
        caches.merge(f"u{i}", '{"AppMetadata": {"k": {"client_id": "c"}}}')
    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("UPDATE msal_keyring_cache SET expires_at = 0 WHERE rowid % 2 = 0")
    conn.commit()
    conn.close()
    errors: list[BaseException] = []

    def requests() -> None:
        try:
            for i in range(20):
                caches.merge(f"u{i}", '{"AppMetadata": {"k2": {"client_id": "c"}}}')
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=requests)
    thread.start()
    purged = caches.purge_expired()
    thread.join(60)
    assert not errors
    assert 0 <= purged <= 10
    for i in range(20):  # every user ends with the entry of the last request, whatever ran first
        with caches.for_user(f"u{i}") as cache:
            assert "k2" in cache.state().get("AppMetadata", {})


def test_web_purge_command(tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import io

    from msal_keyring_cache.cli.web import add_web_purge

    url = f"sqlite:///{tmp_path / 'c.db'}"
    caches = UserCaches.from_url(url, key=key)
    for user in ("a", "b", "c"):
        caches.merge(user, '{"AppMetadata": {"k": {"client_id": "c"}}}')
    conn = sqlite3.connect(tmp_path / "c.db")
    conn.execute("UPDATE msal_keyring_cache SET expires_at = 0 WHERE name != ?",
                 (caches.key_name("a"),))  # fmt: skip
    conn.commit()
    conn.close()
    parser = argparse.ArgumentParser()
    add_web_purge(parser.add_subparsers())
    args = parser.parse_args(["web-purge", "--json"])
    out = io.StringIO()

    class Ctx:  # what the CLI's context gives a command
        env_prefix = "MSAL_KEYRING_CACHE"
        json = True

        def dump(self, doc: Any) -> None:
            import json

            out.write(json.dumps(doc))

        def print(self, text: str) -> None:
            out.write(text)

    monkeypatch.setenv("MSAL_KEYRING_CACHE_WEB_URL", url)
    monkeypatch.setenv("MSAL_KEYRING_CACHE_KEY", key)
    assert args.handler(Ctx()) == 0
    import json

    assert json.loads(out.getvalue())["purged"] == 2
    assert {r[0] for r in sqlite3.connect(tmp_path / "c.db").execute(
        "SELECT name FROM msal_keyring_cache")} == {caches.key_name("a")}  # fmt: skip
    assert caches.purge_expired() == 0


def test_one_statement_to_load_and_one_to_save(
    tmp_path: Path, key: str, idp: LoopbackIdentityProvider
) -> None:
    import sqlalchemy as sa

    caches = UserCaches.from_url(f"sqlite:///{tmp_path / 's.db'}", key=key, prefix="count")
    statements: list[str] = []

    @sa.event.listens_for(caches.backend.engine, "connect")  # type: ignore[attr-defined]
    def trace(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(statements.append)  # what SQLite itself runs

    caches.backend.engine.dispose()  # new connections: traced from the start
    with caches.for_user("sam") as cache:  # table creation happens here: not counted
        _sign_in(idp, cache, "sam@example.com", "api://loopback/one")
    statements.clear()
    with caches.for_user("sam") as cache:
        _sign_in(idp, cache, "sam@example.com", "api://loopback/two")
    kinds = [s.split()[0].upper() for s in statements]
    assert kinds == ["SELECT", "UPDATE"]  # autocommit: no BEGIN/COMMIT round trips
    statements.clear()
    with caches.for_user("sam") as cache:  # read-only request
        assert len(list(cache.search(AT))) == 2
    assert [s.split()[0].upper() for s in statements] == ["SELECT"]
    statements.clear()
    with caches.for_user("new-user") as cache:
        _sign_in(idp, cache, "new@example.com", "api://loopback/new")
    assert [s.split()[0].upper() for s in statements] == ["SELECT", "INSERT"]
    caches.close()


@pytest.mark.postgres
def test_a_frozen_postgres_server_is_a_store_error_within_the_timeout(
    postgres_launcher: Any, key: str, idp: LoopbackIdentityProvider
) -> None:
    server = postgres_launcher()
    caches = UserCaches.from_url(server.url, key=key, prefix="frozen", timeout=1)
    with caches.for_user("fay") as cache:  # connected, table made
        _sign_in(idp, cache, "fay@example.com", "api://loopback/before")
    frozen = [server.process.pid, *_children(server.process.pid)]
    for pid in frozen:  # alive, connections open, answering nothing
        os.kill(pid, signal.SIGSTOP)
    try:
        outcome: list[BaseException] = []

        def load() -> None:
            try:
                with caches.for_user("fay"):
                    pass
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        thread.join(30)  # the bound: a couple of timeouts (one retry on a fresh connection)
        assert not thread.is_alive(), "the request hung"
        assert len(outcome) == 1
        assert isinstance(outcome[0], StoreError)
        assert "did not answer" in str(outcome[0]) or "timeout" in str(outcome[0])
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert scopes(caches, "fay") == {"api://loopback/before"}  # fine again once it answers
    caches.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.postgres
def test_postgres_runs_one_statement_to_load_and_one_to_save(
    postgres_launcher: Any, key: str, idp: LoopbackIdentityProvider
) -> None:
    """Counted by the server itself (pg_stat_statements): no BEGIN, COMMIT or other call."""
    import psycopg

    server = postgres_launcher(shared_preload_libraries="pg_stat_statements")
    watch = psycopg.connect(server.url, autocommit=True)
    watch.execute("CREATE EXTENSION pg_stat_statements")

    def counted() -> dict[str, int]:
        rows = watch.execute(
            "SELECT query, calls FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND query NOT LIKE '%pg_stat_statements%'"
        ).fetchall()
        watch.execute("SELECT pg_stat_statements_reset()")
        return {" ".join(q.split()[:1]).upper(): int(n) for q, n in rows}

    caches = UserCaches.from_url(server.url, key=key, prefix="count", timeout=5)
    with caches.for_user("sam") as cache:  # connects and creates the table: not counted
        _sign_in(idp, cache, "sam@example.com", "api://loopback/one")
    counted()
    for n in range(5):  # past psycopg's prepare threshold: prepared statements from here
        with caches.for_user("sam") as cache:
            _sign_in(idp, cache, "sam@example.com", f"api://loopback/n{n}")
    assert counted() == {"SELECT": 5, "UPDATE": 5}
    with caches.for_user("sam") as cache:  # a read-only request: one statement
        assert len(list(cache.search(AT))) == 6
    assert counted() == {"SELECT": 1}
    with caches.for_user("new-user") as cache:
        _sign_in(idp, cache, "new@example.com", "api://loopback/new")
    assert counted() == {"SELECT": 1, "INSERT": 1}
    caches.close()
    watch.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_values_are_stored_as_raw_fernet_bytes_and_base64_rows_still_read(
    kind: str, tmp_path: Path, key: str, idp: LoopbackIdentityProvider, request: Any
) -> None:
    import base64

    from cryptography.fernet import Fernet

    from tests.services_web import make_web_store

    store = make_web_store(kind, request, tmp_path)
    caches = store.caches(key, prefix="raw" + str(os.getpid()))
    with caches.for_user("rae") as cache:
        _sign_in(idp, cache, "rae@example.com", "api://loopback/raw")
    name = caches.key_name("rae")
    stored = store.get(name)
    assert stored[:1] == b"\x80"  # Fernet's version byte: not base64 text
    token = base64.urlsafe_b64encode(stored)
    assert b'"u":' in Fernet(key).decrypt(token)  # exactly the token's bytes
    store.put(name, token)  # a row written as base64 text (before values were raw)
    assert scopes(caches, "rae") == {"api://loopback/raw"}
    with caches.for_user("rae") as cache:  # saved again: raw again
        _sign_in(idp, cache, "rae@example.com", "api://loopback/next")
    assert store.get(name)[:1] == b"\x80"
    assert scopes(caches, "rae") == {"api://loopback/raw", "api://loopback/next"}
    assert caches.stats.corrupt == 0
    store.put(name, b"\x80" + b"damaged" * 10)  # raw but not a token: empty, not a crash
    assert scopes(caches, "rae") == set()
    assert caches.stats.corrupt == 1
    caches.close()


def test_processes_racing_to_create_the_table_all_go_on(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the web contract's four processes on a new SQLite file: one process's
    # CREATE TABLE fails with "already exists" while another's is not yet committed. A
    # creator that meets that looks again a little later (bounded) instead of failing
    # the request. Fault injection: the other process's table "appears" after two tries.
    import sqlalchemy as sa

    from msal_keyring_cache.web import sql_backend

    real = sa.Table.create
    tries: list[int] = []

    def racing(table: Any, bind: Any, checkfirst: bool = False) -> None:
        tries.append(1)
        if len(tries) <= 2:
            raise sa.exc.OperationalError("CREATE TABLE", {}, Exception("table exists"))
        real(table, bind, checkfirst=checkfirst)

    monkeypatch.setattr(sa.Table, "create", racing)
    caches = UserCaches.from_url(f"sqlite:///{tmp_path / 'tokens.db'}", key=key, prefix="app")
    with caches.for_user("amy") as cache:
        assert cache.serialize() == "{}"
    assert len(tries) == 3
    caches.close()
    # Never unbounded: a table that cannot be made fails after a few tries, saying why.
    tries.clear()

    def always(table: Any, bind: Any, checkfirst: bool = False) -> None:
        tries.append(1)
        raise sa.exc.OperationalError("CREATE TABLE", {}, Exception("disk I/O error"))

    monkeypatch.setattr(sa.Table, "create", always)
    caches = UserCaches.from_url(f"sqlite:///{tmp_path / 'other.db'}", key=key, prefix="app")
    with pytest.raises(StoreError, match="creating the token cache table"), caches.for_user("x"):
        pass
    assert len(tries) == sql_backend._CREATE_TRIES
    caches.close()
