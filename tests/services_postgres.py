"""A real PostgreSQL server for the web-cache tests, on a random loopback port.

``initdb`` makes a cluster in a temporary directory owned by an unprivileged user
(PostgreSQL refuses to run as root: the ``postgres`` user of Debian's package, else one
made with ``useradd``, else ``nobody``), password authentication on, persistence as
configured (``fsync=off`` for the tests: nothing here survives the session anyway).
Stopped (fast shutdown) and removed after.

Fixtures: ``postgres_server`` (session) and ``postgres_launcher`` (servers a test may
stop or configure). Under ``CI=true`` a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

START_TIMEOUT = 30.0
USER, PASSWORD = "webtest", "pw-" + secrets.token_hex(8)


def bin_dir() -> Optional[str]:
    """Where initdb and postgres are (Debian keeps them out of PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = candidates[0] if candidates else shutil.which("initdb")
    return os.path.dirname(os.path.realpath(found)) if found else None


def _run_as() -> Optional[pwd.struct_passwd]:
    """The unprivileged user to run PostgreSQL as (None: we are not root, run as us)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "msalkc-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    if shutil.which("useradd"):
        subprocess.run(["useradd", "--system", "--no-create-home", "msalkc-pg"],
                       check=False, capture_output=True)  # fmt: skip
        try:
            return pwd.getpwnam("msalkc-pg")
        except KeyError:
            pass
    return pwd.getpwnam("nobody")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """One PostgreSQL server on 127.0.0.1:``port`` with a database ``webtest``."""

    fsync: bool = False
    #: More ``-c name=value`` server settings (e.g. shared_preload_libraries).
    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    workdir: str = ""
    process: Any = None
    log: str = field(init=False, default="")
    _user: Optional[pwd.struct_passwd] = field(init=False, default=None)

    def _cmd(self, args: list[str], **kwargs: Any) -> Any:
        options: dict[str, Any] = {}
        if self._user is not None:
            options = {"user": self._user.pw_uid, "group": self._user.pw_gid}
        return subprocess.run(args, check=True, capture_output=True, timeout=120,
                              cwd=self.workdir, **options, **kwargs)  # fmt: skip

    def start(self) -> PostgresServer:
        where = bin_dir()
        assert where, "PostgreSQL is not installed"
        self._user = _run_as()
        self.workdir = tempfile.mkdtemp(prefix="msalkc-pg-")
        if self._user is not None:
            os.chown(self.workdir, self._user.pw_uid, self._user.pw_gid)
        data, pwfile = os.path.join(self.workdir, "data"), os.path.join(self.workdir, "pw")
        with open(pwfile, "w") as out:
            out.write(PASSWORD + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        self._cmd([os.path.join(where, "initdb"), "-D", data, "-U", USER, "--pwfile", pwfile,
                   "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"])  # fmt: skip
        self.log = os.path.join(self.workdir, "postgres.log")
        for _ in range(5):  # the free port may be taken between the check and the bind
            self.port = _free_port()
            args = [os.path.join(where, "postgres"), "-D", data, "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", f"unix_socket_directories={self.workdir}",
                    "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=200",
                    "-c", "logging_collector=off"]  # fmt: skip
            for name, value in self.settings.items():
                args += ["-c", f"{name}={value}"]
            options: dict[str, Any] = {}
            if self._user is not None:
                options = {"user": self._user.pw_uid, "group": self._user.pw_gid}
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(args, stdout=log, stderr=log, cwd=self.workdir,
                                                **options)  # fmt: skip
            if self._wait_ready():
                self._create_db()
                return self
            self.stop()
        raise RuntimeError(f"PostgreSQL did not start; see {self.log}")

    def _wait_ready(self) -> bool:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return True
            except psycopg.Error:
                time.sleep(0.1)
        return False

    def _create_db(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE webtest")

    def dsn(self, db: str = "webtest") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    @property
    def url(self) -> str:
        return self.dsn()

    def dump(self) -> bytes:
        """``pg_dump`` of the database: everything at rest, as text."""
        where = bin_dir()
        assert where
        done = subprocess.run([os.path.join(where, "pg_dump"), "--no-owner", self.dsn()],
                              check=True, capture_output=True, timeout=120)  # fmt: skip
        return done.stdout

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: does not wait for clients
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def require_sql(*modules: str) -> None:
    """SQLAlchemy (and ``modules``) importable, else skip — or fail under CI=true."""
    import importlib

    from tests.helpers import require

    for module in ("sqlalchemy", *modules):
        try:
            importlib.import_module(module)
        except ImportError:
            require(False, f"{module} is not installed (the test extra has it)")


def require_postgres() -> None:
    from tests.helpers import require

    require(bin_dir() is not None, "PostgreSQL (initdb) is not installed")
    require_sql("psycopg")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session."""
    require_postgres()
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_launcher() -> Iterator[Any]:
    """``launch()`` starts a private PostgreSQL server a test may stop; removed after."""
    require_postgres()
    started: list[PostgresServer] = []

    def launch(**settings: str) -> PostgresServer:
        server = PostgresServer(settings=settings)
        started.append(server)
        return server.start()

    try:
        yield launch
    finally:
        for server in started:
            server.remove()
