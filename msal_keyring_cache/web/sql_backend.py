"""Per-user records in one SQL table, through SQLAlchemy 2 Core (no ORM model imposed).

The table (default name ``msal_keyring_cache``), created on first use::

    CREATE TABLE msal_keyring_cache (
        name       VARCHAR(200) NOT NULL PRIMARY KEY,  -- <prefix>:u:{<digest>}
        version    BIGINT NOT NULL,                    -- +1 on every write
        value      BLOB / BYTEA NOT NULL,              -- the Fernet token's raw bytes
        expires_at BIGINT NOT NULL                     -- Unix time
    );
    CREATE INDEX msal_keyring_cache_expires ON msal_keyring_cache (expires_at);

(:func:`ddl` prints it for a dialect; :func:`define_table` adds it to an app's own
``MetaData`` for Alembic.) A save is ``UPDATE … WHERE name = :name AND version = :seen``
or, for a new user, an insert that does nothing on conflict: one statement, one round
trip, in autocommit. An expired row reads as absent until it is overwritten or purged.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from typing import Any, Callable, ClassVar, Optional, TypeVar

from ..config import redact
from ..errors import ConfigError, StoreError
from ..waits import abandon_after
from .base import Backend, Record

#: Attempts to create the table when another process creates it at the same time (~0.5 s).
_CREATE_TRIES = 5

__all__ = ["DEFAULT_TABLE", "SqlBackend", "ddl", "define_table"]

logger = logging.getLogger("msal_keyring_cache.web")

DEFAULT_TABLE = "msal_keyring_cache"
NAME_LENGTH = 200
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,50}")
T = TypeVar("T")
_FERNET_VERSION = b"\x80"  # first byte of every Fernet token


def _sa() -> Any:
    try:
        import sqlalchemy
    except ImportError:
        raise ConfigError(
            'Per-user web caches in SQL need SQLAlchemy 2: pip install "msal-keyring-cache[sql]" '
            '(PostgreSQL: "msal-keyring-cache[postgres]")'
        ) from None
    if int(sqlalchemy.__version__.split(".")[0]) < 2:
        raise ConfigError(
            f"SQLAlchemy {sqlalchemy.__version__} is too old: the web caches need SQLAlchemy 2"
        )
    return sqlalchemy


def _check_table(table: Optional[str]) -> str:
    name = DEFAULT_TABLE if table is None else table
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise ConfigError(
            f"The SQL table name {name!r} is not valid: expected 1 to 51 letters, digits "
            "and underscores, not starting with a digit"
        )
    return name


def define_table(metadata: Any, name: Optional[str] = None) -> Any:
    """The web caches' table in ``metadata`` (an ``sqlalchemy.MetaData``), e.g. for Alembic."""
    sa = _sa()
    name = _check_table(name)
    return sa.Table(
        name,
        metadata,
        sa.Column("name", sa.String(NAME_LENGTH), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Index(f"{name}_expires", "expires_at"),
    )


def ddl(dialect: str = "postgresql", table: Optional[str] = None) -> str:
    """The ``CREATE TABLE`` and ``CREATE INDEX`` statements for ``dialect`` (``sqlite``, …)."""
    sa = _sa()
    from sqlalchemy.schema import CreateIndex, CreateTable

    try:
        dialect_cls = sa.dialects.registry.load(dialect)
    except Exception:
        raise ConfigError(f"Unknown SQL dialect {dialect!r}") from None
    t = define_table(sa.MetaData(), table)
    statements: list[Any] = [CreateTable(t), *(CreateIndex(i) for i in t.indexes)]
    text = (str(s.compile(dialect=dialect_cls())).strip() for s in statements)
    return "".join("\n".join(line.rstrip() for line in t.splitlines()) + ";\n" for t in text)


class SqlBackend(Backend):
    """Records in one table of an SQLAlchemy engine."""

    kind: ClassVar[str] = "sql"

    def __init__(self, engine: Any, *, table: Optional[str] = None, own: bool = False) -> None:
        sa = _sa()
        if not isinstance(engine, sa.engine.Engine):
            raise ConfigError("from_engine() needs an sqlalchemy.Engine")
        self.engine = engine
        self.dialect = engine.dialect.name
        self._own = own
        # Every statement is atomic on its own: autocommit saves a BEGIN/COMMIT round trip.
        self._auto = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.table = define_table(sa.MetaData(), table)
        self._errors: tuple[type[BaseException], ...] = (sa.exc.SQLAlchemyError, OSError)
        self._created = False
        self._create_lock = threading.Lock()
        #: Set when the driver cannot bound its own waits (psycopg < 3.2's ``wait``, the
        #: only psycopg on Python 3.9): each call then runs in a thread we stop waiting for.
        self._wait_limit: Optional[float] = None
        # SQLite has one writer at a time: threads of this process queue here, in order,
        # instead of in SQLite's busy handler, which sleeps up to 100 ms between tries.
        self._write_lock: Optional[threading.Lock] = (
            threading.Lock() if self.dialect == "sqlite" else None
        )
        t, c = self.table, self.table.c
        self._select = sa.select(c.version, c.value, c.expires_at).where(
            c.name == sa.bindparam("n")
        )
        self._update = (
            t.update()
            .where(c.name == sa.bindparam("n"), c.version == sa.bindparam("seen"))
            .values(version=c.version + 1, value=sa.bindparam("v"), expires_at=sa.bindparam("e"))
        )
        self._delete = t.delete().where(c.name == sa.bindparam("n"))
        self._purge = t.delete().where(c.expires_at <= sa.bindparam("now"))
        self._insert, self._insert_ignores = _insert(t, self.dialect)
        self._fast: dict[int, _Fast] = {}
        if own:  # our engine, autocommit on every connection: skip SQLAlchemy's execute path
            self._errors = (*self._errors, engine.dialect.loaded_dbapi.Error)
            columns = ["name", "version", "value", "expires_at"]
            for stmt in (self._select, self._update, self._delete, self._purge):
                self._fast[id(stmt)] = _Fast(stmt, engine.dialect)
            if self._insert_ignores:
                self._fast[id(self._insert)] = _Fast(self._insert, engine.dialect, columns)

    @classmethod
    def connect(cls, url: str, timeout: float, table: Optional[str]) -> SqlBackend:
        """An engine for ``url`` whose every wait is bounded by ``timeout`` seconds."""
        sa = _sa()
        _check_table(table)
        try:
            parsed = sa.engine.make_url(url)
        except Exception:
            raise ConfigError(
                "The SQL URL is not valid: expected dialect://user:password@host:port/db "
                "(e.g. postgresql://…, sqlite:///PATH)"
            ) from None
        options: dict[str, Any] = {
            "pool_pre_ping": False,
            "pool_reset_on_return": None,
            "isolation_level": "AUTOCOMMIT",  # each statement is atomic on its own
        }
        backend = parsed.get_backend_name()
        if backend == "postgresql":
            if parsed.drivername in ("postgresql", "postgres"):
                parsed = parsed.set(drivername="postgresql+psycopg")
            ms = int(timeout * 1000)
            options["connect_args"] = {
                "connect_timeout": max(2, int(timeout + 0.999)),  # libpq: whole seconds, >= 2
                # A server host that went away: keepalives and unacknowledged data time out.
                "keepalives": 1,
                "keepalives_idle": max(1, int(timeout)),
                "keepalives_interval": 1,
                "keepalives_count": 3,
                "tcp_user_timeout": ms,
                "options": f"-c statement_timeout={ms} -c lock_timeout={ms} "
                f"-c idle_in_transaction_session_timeout={max(ms, 1000)}",
            }
            options.update(pool_size=10, max_overflow=20, pool_timeout=timeout)
        elif backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise ConfigError(
                    "sqlite:// needs a file (sqlite:///PATH): an in-memory database is "
                    "per connection and would lose the caches"
                )
            options["connect_args"] = {"timeout": timeout, "check_same_thread": False}
            options.update(pool_size=10, max_overflow=20, pool_timeout=timeout)
        else:
            options["pool_timeout"] = timeout
        try:
            engine = sa.create_engine(parsed, **options)
        except ImportError as exc:
            raise ConfigError(
                f"The database driver for {backend} is not installed ({exc.name or 'a module'}); "
                'for PostgreSQL: pip install "msal-keyring-cache[postgres]"'
            ) from None
        except Exception as exc:
            raise ConfigError(
                f"The SQL URL cannot be used: {type(exc).__name__}: {_short(exc)}"
            ) from None
        if backend == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        if parsed.drivername == "postgresql+psycopg":
            bounded = _bounded_psycopg(timeout)
            if bounded is not None:
                sa.event.listen(engine, "do_connect", bounded)
            else:
                made = cls(engine, table=table, own=True)
                # After libpq's own timeouts (connect: at least 2 s), whose errors say more.
                made._wait_limit = 2 * max(timeout, 2.0) + 1.0
                return made
        return cls(engine, table=table, own=True)

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"SqlBackend({redact(url)!r}, table={self.table.name!r})"

    # -- the protocol ----------------------------------------------------------------------

    def load(self, name: str) -> Optional[Record]:
        row = self._run("loading a user's token cache", self._select, {"n": name}, fetch=True)
        if row is None:
            return None
        version, value, expires = row
        if expires <= time.time():
            return Record(str(version), None)  # expired: absent, overwritten by the next save
        return Record(str(version), _token(bytes(value)))

    def save(self, name: str, seen: str, value: bytes, ttl: int) -> bool:
        expires = int(time.time()) + ttl
        what = "saving a user's token cache"
        value = _raw(value)
        if not seen:
            params = {"name": name, "version": 1, "value": value, "expires_at": expires}
            if self._insert_ignores:
                return bool(self._run(what, self._insert, params) == 1)
            sa = _sa()
            try:
                self._run(what, self._insert, params, integrity=True)
            except sa.exc.IntegrityError:
                return False  # another request inserted first
            return True
        try:
            seen_number = int(seen)
        except ValueError:
            return False  # not a version of ours: reload
        params = {"n": name, "seen": seen_number, "v": value, "e": expires}
        return bool(self._run(what, self._update, params) == 1)

    def delete(self, name: str) -> bool:
        return bool(self._run("deleting a user's token cache", self._delete, {"n": name}) > 0)

    def purge_expired(self) -> int:
        count = self._run("purging expired token caches", self._purge, {"now": int(time.time())})
        return int(count or 0)

    def close(self) -> None:
        if self._own:
            self.engine.dispose()

    # -- machinery -------------------------------------------------------------------------

    def _ensure_table(self) -> None:
        with self._create_lock:
            if self._created:
                return
            for attempt in range(_CREATE_TRIES):
                try:
                    self.table.create(self._auto, checkfirst=True)
                    break
                except self._errors as exc:
                    # Processes starting together on a new database race to create the
                    # table ("already exists" until the creator commits): look again, a
                    # little later, a bounded number of times.
                    if attempt == _CREATE_TRIES - 1:
                        raise self._error("creating the token cache table", exc) from None
                    time.sleep(0.05 * (attempt + 1))
            self._created = True

    def _run(self, what: str, statement: Any, params: dict[str, Any], *,
             fetch: bool = False, integrity: bool = False) -> Any:  # fmt: skip
        """The first row (``fetch``) or the row count of ``statement``; StoreError on failure."""
        if self._wait_limit is None:
            return self._run_here(what, statement, params, fetch=fetch, integrity=integrity)
        limit = self._wait_limit
        return abandon_after(
            limit,
            lambda: self._run_here(what, statement, params, fetch=fetch, integrity=integrity),
            lambda: StoreError(
                f"The {self.dialect} database did not answer within {limit:g} s while "
                f"{what}; the request was abandoned. Check that the server is up and not "
                "overloaded, or raise the web timeout (…_WEB_TIMEOUT)."
            ),
            "msal-keyring-cache-sql",
        )

    def _run_here(self, what: str, statement: Any, params: dict[str, Any], *,
                  fetch: bool = False, integrity: bool = False) -> Any:  # fmt: skip
        if not self._created:
            self._ensure_table()
        lock = None if statement is self._select else self._write_lock
        fast = self._fast.get(id(statement))
        for attempt in (0, 1):
            try:
                if lock is not None:
                    with lock:
                        return self._execute(statement, fast, params, fetch)
                return self._execute(statement, fast, params, fetch)
            except self._errors as exc:
                if integrity and type(exc).__name__ == "IntegrityError":
                    raise
                # A connection killed under us is dropped from the pool: try once more on
                # a fresh one (a compare-and-set that did commit is then seen as a conflict
                # and merged, so nothing is written twice or lost).
                if attempt == 0 and getattr(exc, "connection_invalidated", False):
                    continue
                raise self._error(what, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _execute(self, statement: Any, fast: Any, params: dict[str, Any], fetch: bool) -> Any:
        if fast is None:  # an app's engine: through SQLAlchemy, with its settings
            with self._auto.connect() as conn:
                result = conn.execute(statement, params)
                return result.first() if fetch else result.rowcount
        return fast.run(self.engine, params, fetch)

    def _error(self, what: str, exc: BaseException) -> StoreError:
        cause = getattr(exc, "orig", None) or exc
        logger.debug("SQL call failed while %s: %s", what, type(cause).__name__)
        return StoreError(
            f"The {self.dialect} database failed while {what}: {type(cause).__name__}: "
            f"{_short(cause)}. Check that the database is running and reachable; the request "
            "was not served from a stale or empty cache."
        )


class _Fast:
    """A statement compiled once, run on a pooled DBAPI connection directly.

    The profile of a load+save showed SQLAlchemy's execute path (events, result objects)
    costing more CPU than SQLite itself; the pool, the dialect's SQL and its disconnect
    detection are still SQLAlchemy's.
    """

    def __init__(self, statement: Any, dialect: Any, keys: Optional[list[str]] = None) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=keys)
        self.sql = str(compiled)
        self.order = list(compiled.positiontup or []) if compiled.positional else None
        self.defaults = {k: v for k, v in compiled.params.items() if v is not None}
        # psycopg: rows in binary, so a value comes as its bytes, not as hex text twice
        # its size that the server must encode and the client decode.
        self.options: dict[str, Any] = {"binary": True} if dialect.driver == "psycopg" else {}

    def run(self, engine: Any, params: dict[str, Any], fetch: bool) -> Any:
        values = {**self.defaults, **params}
        args: Any = tuple(values[k] for k in self.order) if self.order is not None else values
        conn = engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(self.sql, args, **self.options)
                return cursor.fetchone() if fetch else cursor.rowcount
            finally:
                cursor.close()
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, conn.dbapi_connection, None):
                conn.invalidate()  # never handed out again
                exc.connection_invalidated = True
            raise
        finally:
            conn.close()  # back to the pool (or discarded, if invalidated)


def _insert(table: Any, dialect: str) -> tuple[Any, bool]:
    """An insert that does nothing on a duplicate name, where the dialect has one."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=["name"]), True
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=["name"]), True
    return table.insert(), False


def _bounded_psycopg(timeout: float) -> Optional[Callable[..., Any]]:
    """A ``do_connect`` hook making psycopg connections that wait at most ``timeout``.

    libpq has no client-side query timeout: a server that accepts the connection and then
    freezes would keep a request waiting for ever (the statement timeout runs on the
    server). psycopg's ``Connection.wait`` takes a timeout (3.2+); past twice ``timeout``
    the connection is closed, so the pool drops it, and the call fails.
    """
    import inspect

    import psycopg

    if "timeout" not in inspect.signature(psycopg.Connection.wait).parameters:
        return None  # an older psycopg: only the server-side timeouts apply
    wait_timeout: Optional[type[BaseException]] = getattr(psycopg.errors, "_WaitTimeout", None)
    if wait_timeout is None:
        return None
    timed_out: type[BaseException] = wait_timeout
    limit = 2 * timeout  # after the server's own timeouts, whose errors say more

    class Bounded(psycopg.Connection):
        def wait(self, gen: Any, interval: float = 0.1, timeout: Optional[float] = None) -> Any:
            try:
                return super().wait(gen, interval=interval, timeout=timeout or limit)
            except timed_out:
                self.close()
                raise psycopg.OperationalError(
                    f"the server did not answer within {limit:g} s"
                ) from None

    def connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return Bounded.connect(*cargs, **cparams)

    return connect


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never wait for a writer; FULL: a save that returned survives a crash.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _raw(token: bytes) -> bytes:
    """A Fernet token's bytes as stored: base64-decoded, a quarter smaller.

    Every stored byte is paid for several times per save: sent, written to the WAL (and
    fsynced), TOAST-chunked, read back on the next load.
    """
    return base64.urlsafe_b64decode(token)


def _token(stored: bytes) -> bytes:
    """The Fernet token of a stored value (raw bytes, or base64 text as written before)."""
    if stored[:1] == _FERNET_VERSION:  # raw: base64 text never starts with this byte
        return base64.urlsafe_b64encode(stored)
    return stored  # base64 text, or damaged: the core's decryption reports it


def _short(exc: BaseException) -> str:
    # First line only: drivers append the failing statement and its parameters after it.
    lines = str(exc).strip().splitlines()
    text = redact(" ".join(lines[0].split())) if lines else ""
    return text[:200].rstrip(".") or "no details"
