"""Real redis-server instances on random loopback ports, for the web-cache tests.

Fixtures:

* ``redis_server`` (session): one standalone server.
* ``redis_cluster`` (session): a 3-node Redis Cluster (no replicas).
* ``redis_launcher``: starts extra servers or clusters a test may stop; all torn down after.
* ``redis_backend``: parametrized over ``standalone`` and ``cluster`` (``RedisBackend``).

Every server runs in a temporary directory with persistence off
(``--save "" --appendonly no``) and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 20.0  # seconds to wait for a server or the cluster to be ready


def _free_port(cluster_bus: bool = False) -> int:
    """A loopback port that is free now (and port + 10000 too, for the cluster bus)."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        ports = [port, port + 10000] if cluster_bus else [port]
        try:
            for p in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free loopback port found")


def _ping(port: int, pid: int) -> bool:
    """Whether our redis-server (process ``pid``) answers on ``port``: another test run's
    server may hold a port we were told was free, and ours then fails to bind."""
    import redis

    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.info("server").get("process_id") == pid)
    except redis.RedisError:
        return False
    finally:
        client.close()


@dataclass
class RedisServer:
    """One redis-server process on 127.0.0.1:``port``."""

    workdir: Path
    cluster: bool = False
    port: int = 0
    process: Any = None
    log: Path = field(init=False)

    def start(self) -> RedisServer:
        for _ in range(5):  # the free port may be taken between the check and the bind
            self.port = _free_port(self.cluster)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.log = self.workdir / f"redis-{self.port}.log"
            args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                    "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                    "--logfile", str(self.log)]  # fmt: skip
            if self.cluster:
                args += ["--cluster-enabled", "yes",
                         "--cluster-config-file", str(self.workdir / f"nodes-{self.port}.conf"),
                         "--cluster-node-timeout", "2000"]  # fmt: skip
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.process.poll() is None:
                if _ping(self.port, self.process.pid):
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"redis-server did not start; see {self.log}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class RedisClusterServers:
    """Three cluster-enabled redis-servers joined by ``redis-cli --cluster create``."""

    workdir: Path
    nodes: list[RedisServer] = field(default_factory=list)

    def start(self) -> RedisClusterServers:
        self.nodes = [RedisServer(self.workdir / f"node{i}", cluster=True).start()
                      for i in range(3)]  # fmt: skip
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addresses,
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        self._wait_ok()
        return self

    def _wait_ok(self) -> None:
        import redis

        deadline = time.monotonic() + 3 * START_TIMEOUT  # gossip is slow on a loaded machine
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                client = redis.Redis(port=node.port, socket_timeout=1, decode_responses=True)
                try:
                    info = client.execute_command("CLUSTER", "INFO")
                    states.append("cluster_state:ok" in info and "cluster_known_nodes:3" in info)
                except redis.RedisError:
                    states.append(False)
                finally:
                    client.close()
            if all(states):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class RedisBackend:
    """What a parametrized web test needs: a URL, whether it is a cluster, a raw client."""

    name: str
    url: str
    cluster: bool

    def client(self) -> Any:
        """A plain redis-py client for looking at what is stored."""
        if self.cluster:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(self.url, socket_timeout=5)
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def caches(self, key: Any, **kwargs: Any) -> Any:
        from msal_keyring_cache.web import UserCaches

        kwargs.setdefault("timeout", 5)
        return UserCaches.from_url(self.url, key=key, cluster=self.cluster, **kwargs)


def _require_redis() -> None:
    from tests.helpers import require_tool

    require_tool("redis-server", "redis-cli")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real standalone redis-server for the session."""
    _require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real 3-node Redis Cluster for the session."""
    _require_redis()
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def redis_launcher(tmp_path: Path) -> Iterator[Any]:
    """``launch(cluster=False)`` starts a private server (or cluster) a test may stop."""
    _require_redis()
    started: list[Any] = []

    def launch(cluster: bool = False) -> Any:
        workdir = tmp_path / f"redis-{len(started)}"
        service = RedisClusterServers(workdir) if cluster else RedisServer(workdir)
        started.append(service)
        return service.start()

    try:
        yield launch
    finally:
        for service in started:
            service.stop()


@pytest.fixture(params=["standalone", "cluster"])
def redis_backend(request: pytest.FixtureRequest) -> RedisBackend:
    """The web tests run once on a standalone server and once on a 3-node cluster."""
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return RedisBackend("cluster", cluster.url, True)
    server = request.getfixturevalue("redis_server")
    return RedisBackend("standalone", server.url, False)
