"""Per-user web caches on a real redis-server and a real 3-node Redis Cluster."""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

import msal
import pytest

from msal_keyring_cache import ConfigError, StoreError
from msal_keyring_cache.testing import LoopbackIdentityProvider
from msal_keyring_cache.web import UserCaches, three_way_merge
from tests.helpers import ROOT
from tests.services_web import ACCOUNT, AT, new_prefix, scopes, sign_in

pytestmark = pytest.mark.redis


def _stored(backend: Any, prefix: str) -> dict[str, dict[bytes, bytes]]:
    client = backend.client()
    try:
        return {
            name.decode(): client.hgetall(name) for name in client.scan_iter(match=prefix + "*")
        }
    finally:
        client.close()


@pytest.mark.parametrize("damage", ["wrong-type", "no-data"])
def test_a_key_of_another_shape_is_an_empty_cache(
    redis_backend: Any,
    idp: LoopbackIdentityProvider,
    key: str,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caches = redis_backend.caches(key, prefix=new_prefix())
    name = caches.key_name("dave")
    client = redis_backend.client()
    if damage == "wrong-type":
        client.set(name, b"not a hash")
    else:
        client.hset(name, mapping={"v": "1"})
    client.close()
    caplog.set_level(logging.WARNING, logger="msal_keyring_cache.web")
    with caches.for_user("dave") as cache:
        assert list(cache.search(AT)) == []
        sign_in(idp, cache, "dave@example.com", "api://loopback/fresh")
    assert caches.stats.corrupt == 1
    assert name in caplog.text
    assert scopes(caches, "dave") == {"api://loopback/fresh"}


def test_ttl_is_set_and_refreshed_on_write(
    redis_backend: Any, idp: LoopbackIdentityProvider, key: str
) -> None:
    caches = redis_backend.caches(key, prefix=new_prefix(), ttl=1000)
    with caches.for_user("erin") as cache:
        sign_in(idp, cache, "erin@example.com", "api://loopback/one")
    client = redis_backend.client()
    name = caches.key_name("erin")
    assert 990 <= client.ttl(name) <= 1000
    client.expire(name, 50)
    with caches.for_user("erin") as cache:  # a read-only request does not write
        assert len(list(cache.search(AT))) == 1
    assert client.ttl(name) <= 50
    with caches.for_user("erin") as cache:
        sign_in(idp, cache, "erin@example.com", "api://loopback/two")
    assert 990 <= client.ttl(name) <= 1000
    client.close()


def _fails_cleanly(action: Any) -> StoreError:
    """Run ``action`` in a thread; it must raise StoreError and must not hang."""
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)  # a no-hang guard far above the bound (3 × 1 s timeouts), not a timing
    assert not thread.is_alive(), "the call hung"
    assert len(outcome) == 1
    assert isinstance(outcome[0], StoreError), outcome
    return outcome[0]


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
def test_redis_stopped_gives_a_clear_store_error(
    redis_launcher: Any, idp: LoopbackIdentityProvider, key: str, cluster: bool
) -> None:
    service = redis_launcher(cluster=cluster)
    caches = UserCaches.from_url(service.url, key=key, cluster=cluster, timeout=1)
    with caches.for_user("frank") as cache:
        sign_in(idp, cache, "frank@example.com", "api://loopback/before")

    def save_after_stop() -> None:
        with caches.for_user("frank") as cache:
            service.stop()  # dies between this request's load and its save
            sign_in(idp, cache, "frank@example.com", "api://loopback/during")

    error = _fails_cleanly(save_after_stop)
    assert "Redis failed while saving" in str(error)
    assert error.__cause__ is None
    assert error.__suppress_context__

    def load_while_down() -> None:
        with caches.for_user("frank"):
            pass

    error = _fails_cleanly(load_while_down)
    assert "Redis failed while loading" in str(error)
    for secret in idp.issued:
        assert secret not in str(error)


def test_hanging_redis_gives_a_timeout_store_error(
    redis_launcher: Any, idp: LoopbackIdentityProvider, key: str
) -> None:
    import signal

    service = redis_launcher()
    caches = UserCaches.from_url(service.url, key=key, timeout=1)
    with caches.for_user("gina"):
        pass  # connected once
    service.process.send_signal(signal.SIGSTOP)  # alive but not answering
    try:

        def load() -> None:
            with caches.for_user("gina"):
                pass

        error = _fails_cleanly(load)
        assert "Timeout" in str(error)
    finally:
        service.process.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("names", ["WEB", "REDIS"])
def test_from_env_with_the_new_and_the_old_names(redis_server: Any, key: str, names: str) -> None:
    with pytest.raises(ConfigError, match="MYAPP_WEB_URL"):
        UserCaches.from_env("MYAPP", environ={})
    with pytest.raises(ConfigError, match="MYAPP_KEY"):
        UserCaches.from_env("MYAPP", environ={f"MYAPP_{names}_URL": redis_server.url})
    url = redis_server.url.replace("redis://", "redis://:hunter2-secret@")
    env = {f"MYAPP_{names}_URL": url, "MYAPP_KEY": key, f"MYAPP_{names}_PREFIX": "envapp",
           f"MYAPP_{names}_TTL": "1234", f"MYAPP_{names}_TIMEOUT": "2"}  # fmt: skip
    caches = UserCaches.from_env("MYAPP", environ=env)
    assert caches.prefix == "envapp"
    assert caches.ttl == 1234
    assert caches.client.connection_pool.connection_kwargs["socket_timeout"] == 2.0
    assert caches.key_name("x").startswith("envapp:u:{")
    assert key not in repr(caches)
    with caches.for_user("x"):
        pass
    with pytest.raises(ConfigError) as caught:
        UserCaches.from_env(
            "MYAPP", environ={**env, f"MYAPP_{names}_URL": url.rsplit(":", 1)[0] + ":port/0"}
        )
    from msal_keyring_cache import Settings

    for shown in (repr(caches), str(caught.value), repr(Settings.resolve("MYAPP", env))):
        assert "hunter2" not in shown
    bad = {**env, f"MYAPP_{names}_TTL": "99999999999999999999"}
    with pytest.raises(ConfigError, match="315360000"):
        UserCaches.from_env("MYAPP", environ=bad)


def test_bad_arguments_raise_config_error(redis_server: Any, key: str) -> None:
    with pytest.raises(ConfigError, match="Fernet"):
        UserCaches.from_url(redis_server.url, key="not-a-key")
    with pytest.raises(ConfigError, match="prefix"):
        UserCaches.from_url(redis_server.url, key=key, prefix="a{b}")
    with pytest.raises(ConfigError, match="URL"):
        UserCaches.from_url("http://nope", key=key)
    caches = UserCaches.from_url(redis_server.url, key=key)
    with pytest.raises(ConfigError, match="user_id"), caches.for_user(""):
        pass
    with pytest.raises(ConfigError, match="lone surrogate"), caches.for_user("bad\ud800id"):
        pass
    with pytest.raises(ConfigError, match="user_id"):
        caches.delete_user("x" * 5000)
    for ttl in (0, -1, 10**20, 1.5, True):
        with pytest.raises(ConfigError, match="TTL"):
            UserCaches.from_url(redis_server.url, key=key, ttl=ttl)
    for timeout in (0, -1, float("nan"), float("inf"), 10**9, "5"):
        with pytest.raises(ConfigError, match="timeout"):
            UserCaches.from_url(redis_server.url, key=key, timeout=timeout)
    for prefix in ("", "x" * 65, "tab\there", "sur\udc00rogate", 7):
        with pytest.raises(ConfigError, match="prefix"):
            UserCaches.from_url(redis_server.url, key=key, prefix=prefix)
    for keys in ([], [key, "short"], [key.encode()], None):
        with pytest.raises(ConfigError, match="Fernet"):
            UserCaches.from_url(redis_server.url, key=keys)
    with pytest.raises(ConfigError, match="merge"):
        caches.merge("x", "[" * 5000)
    with pytest.raises(ConfigError, match="table"):
        UserCaches.from_url(redis_server.url, key=key, table="t")
    caches.close()


def test_data_written_by_0_1_0_stays_readable(
    redis_backend: Any, idp: LoopbackIdentityProvider
) -> None:
    old = json.loads((ROOT / "tests" / "data" / "web_redis_0_1_0.json").read_text())
    client = redis_backend.client()
    client.hset(old["name"], mapping={"v": old["v"], "d": old["d"]})
    caches = redis_backend.caches(old["key"], prefix=old["prefix"])
    assert caches.key_name(old["user_id"]) == old["name"]  # the same key name
    with caches.for_user(old["user_id"]) as cache:
        # The raw table: msal's search() hides access tokens that expired since 0.1.0 wrote them.
        assert {e["target"] for e in cache.state()["AccessToken"].values()} == {old["scope"]}
        assert [a["username"] for a in cache.search(ACCOUNT)] == [old["username"]]
        assert len(list(cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN))) == 1
        sign_in(idp, cache, old["username"], "api://loopback/new")
    stored = client.hgetall(old["name"])
    assert set(stored) == {b"v", b"d"}  # still the 0.1.0 layout: a hash of v and d
    assert stored[b"v"] != old["v"].encode()
    from cryptography.fernet import Fernet

    payload = json.loads(Fernet(old["key"]).decrypt(stored[b"d"]))
    assert set(payload) == {"u", "c"}
    assert payload["u"] == caches._binding(old["user_id"])
    with caches.for_user(old["user_id"]) as cache:
        targets = {e["target"] for e in cache.state()["AccessToken"].values()}
    assert targets == {old["scope"], "api://loopback/new"}
    client.close()
    caches.close()


def test_missing_redis_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis-py were not installed
    with pytest.raises(ConfigError, match=r"msal-keyring-cache\[redis\]"):
        UserCaches.from_url("redis://127.0.0.1:1/0", key=key)


def test_nothing_secret_in_logs(
    redis_server: Any, idp: LoopbackIdentityProvider, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caches = UserCaches.from_url(redis_server.url, key=key, prefix=new_prefix())
    with caplog.at_level(logging.DEBUG):
        with caches.for_user("ivan@example.com") as cache:
            sign_in(idp, cache, "ivan@example.com", "api://loopback/log")
        caches.client.hset(caches.key_name("ivan@example.com"), "d", b"damaged")
        assert scopes(caches, "ivan@example.com") == set()
    assert "treating this user's cache as empty" in caplog.text
    for secret in [*idp.issued, key]:
        assert secret not in caplog.text


def test_three_way_merge() -> None:
    base = {"AccessToken": {"a": 1, "b": 2, "c": 3}, "Account": {"x": 1}}
    mine = {"AccessToken": {"a": 1, "b": 20, "d": 4}, "Account": {"x": 1}}  # b~, c-, d+
    theirs = {"AccessToken": {"a": 10, "b": 2, "c": 3, "e": 5}, "Account": {}}
    merged = three_way_merge(base, mine, theirs)
    assert merged == {"AccessToken": {"a": 10, "b": 20, "d": 4, "e": 5}, "Account": {}}
    assert theirs["AccessToken"]["b"] == 2  # not modified
    assert three_way_merge({}, {"RefreshToken": {"r": 1}}, {}) == {"RefreshToken": {"r": 1}}
    assert json.dumps(three_way_merge(base, base, theirs)) == json.dumps(theirs)


def test_one_cluster_node_down_fails_only_its_users(
    redis_launcher: Any, idp: LoopbackIdentityProvider, key: str
) -> None:
    cluster = redis_launcher(cluster=True)
    caches = UserCaches.from_url(cluster.url, key=key, cluster=True, timeout=1)
    users = [f"user{i}" for i in range(30)]
    owner = {u: caches.client.get_node_from_key(caches.key_name(u)).port for u in users}
    down = owner[users[0]]
    alive = next(u for u in users if owner[u] != down)
    for user in (users[0], alive):
        with caches.for_user(user) as cache:
            sign_in(idp, cache, f"{user}@example.com", "api://loopback/node")
    next(n for n in cluster.nodes if n.port == down).stop()

    def load_dead() -> None:
        with caches.for_user(users[0]):
            pass

    _fails_cleanly(load_dead)
    assert scopes(caches, alive) == {"api://loopback/node"}  # other slots keep working
