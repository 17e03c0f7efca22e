"""Per-user web caches on a real redis-server and a real 3-node Redis Cluster."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from typing import Any

import msal
import pytest

from msal_keyring_cache import ConfigError, StoreError, generate_key
from msal_keyring_cache.testing import LoopbackIdentityProvider
from msal_keyring_cache.web import UserCaches, three_way_merge
from tests.helpers import PYTHON, ROOT, child_env

pytestmark = pytest.mark.redis

AT = msal.TokenCache.CredentialType.ACCESS_TOKEN


def _prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


def _sign_in(idp: LoopbackIdentityProvider, cache: Any, user: str, scope: str) -> dict[str, Any]:
    app = idp.confidential_app(token_cache=cache)
    result: dict[str, Any] = app.acquire_token_by_username_password(user, "pw", scopes=[scope])
    assert "access_token" in result, result.get("error_description")
    return result


def _scopes(caches: UserCaches, user: str) -> set[str]:
    with caches.for_user(user) as cache:
        return {entry["target"] for entry in cache.search(AT)}


def _stored(backend: Any, prefix: str) -> dict[str, dict[bytes, bytes]]:
    client = backend.client()
    try:
        return {
            name.decode(): client.hgetall(name) for name in client.scan_iter(match=prefix + "*")
        }
    finally:
        client.close()


def test_concurrent_requests_of_one_user_keep_every_token(
    redis_backend: Any, idp: LoopbackIdentityProvider, key: str
) -> None:
    caches = redis_backend.caches(key, prefix=_prefix())
    count = 24
    barrier = threading.Barrier(count, timeout=60)
    errors: list[BaseException] = []

    def request(index: int) -> None:
        try:
            with caches.for_user("alice") as cache:
                barrier.wait()  # every request has loaded the same state before any saves
                _sign_in(idp, cache, "alice@example.com", f"api://loopback/s{index}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert _scopes(caches, "alice") == {f"api://loopback/s{i}" for i in range(count)}
    assert caches.stats.saves == count
    assert caches.stats.conflicts >= count - 1  # the merge path really ran
    with caches.for_user("alice") as cache:
        assert len(list(cache.search(msal.TokenCache.CredentialType.ACCOUNT))) == 1


CHILD = """
import sys, threading
from msal_keyring_cache.testing import loopback_http_client
from msal_keyring_cache.web import UserCaches
import msal
url, cluster, key, prefix, port, proc = sys.argv[1:7]
caches = UserCaches.from_url(url, key=key, prefix=prefix, cluster=cluster == "1", timeout=5)
def request(i):
    with caches.for_user("carol") as cache:
        app = msal.ConfidentialClientApplication(
            "00000000-0000-0000-0000-00000000c11d", client_credential="secret",
            authority="https://127.0.0.1/loopback-tenant", instance_discovery=False,
            http_client=loopback_http_client(int(port)), token_cache=cache)
        r = app.acquire_token_by_username_password(
            "carol@example.com", "pw", scopes=[f"api://loopback/p{proc}-{i}"])
        assert "access_token" in r
threads = [threading.Thread(target=request, args=(i,)) for i in range(5)]
[t.start() for t in threads]
[t.join() for t in threads]
print(caches.stats.saves, caches.stats.conflicts)
"""


def test_concurrent_processes_of_one_user_keep_every_token(
    redis_backend: Any, idp: LoopbackIdentityProvider, key: str
) -> None:
    prefix = _prefix()
    procs = [
        subprocess.Popen(
            [
                PYTHON,
                "-c",
                CHILD,
                redis_backend.url,
                "1" if redis_backend.cluster else "0",
                key,
                prefix,
                str(idp.port),
                str(n),
            ],
            env=child_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        for n in range(4)
    ]
    saves = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        saves += int(out.split()[0])
    assert saves == 20
    caches = redis_backend.caches(key, prefix=prefix)
    expected = {f"api://loopback/p{n}-{i}" for n in range(4) for i in range(5)}
    assert _scopes(caches, "carol") == expected


def test_users_are_isolated_and_sign_out_deletes_only_one(
    redis_backend: Any, idp: LoopbackIdentityProvider, key: str
) -> None:
    caches = redis_backend.caches(key, prefix=_prefix())
    for user in ("alice", "bob"):
        with caches.for_user(user) as cache:
            _sign_in(idp, cache, f"{user}@example.com", f"api://loopback/{user}")
    for user in ("alice", "bob"):
        with caches.for_user(user) as cache:
            names = [
                a["username"] for a in list(cache.search(msal.TokenCache.CredentialType.ACCOUNT))
            ]
            assert names == [f"{user}@example.com"]
    assert caches.delete_user("alice") is True
    assert caches.delete_user("alice") is False
    assert _scopes(caches, "alice") == set()
    assert _scopes(caches, "bob") == {"api://loopback/bob"}


def test_nothing_in_clear_at_rest(
    redis_backend: Any, idp: LoopbackIdentityProvider, key: str
) -> None:
    prefix = _prefix()
    caches = redis_backend.caches(key, prefix=prefix)
    users = ["alice@example.com", "bob@example.com"]
    for user in users:
        with caches.for_user(user) as cache:
            _sign_in(idp, cache, user, "api://loopback/rest")
    stored = _stored(redis_backend, prefix)
    assert sorted(stored) == sorted(caches.key_name(u) for u in users)
    blob = b"\n".join(n.encode() + b"".join(v for kv in h.items() for v in kv)
                      for n, h in stored.items())  # fmt: skip
    assert len(idp.issued) > 0
    for secret in idp.issued:
        assert secret.encode() not in blob
    for user in users:
        assert user.encode() not in blob
    for name in stored:  # one hash tag per user: Redis Cluster keeps a user in one slot
        assert name.count("{") == 1
        assert name.endswith("}")


def test_swapped_ciphertext_is_refused(
    redis_backend: Any, idp: LoopbackIdentityProvider, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caches = redis_backend.caches(key, prefix=_prefix())
    with caches.for_user("alice") as cache:
        _sign_in(idp, cache, "alice@example.com", "api://loopback/mine")
    with caches.for_user("bob") as cache:
        _sign_in(idp, cache, "bob@example.com", "api://loopback/bobs")
    client = redis_backend.client()
    alice = client.hgetall(caches.key_name("alice"))
    client.hset(caches.key_name("bob"), mapping=alice)  # an attacker copies Alice's value
    client.close()
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache.web"):
        assert _scopes(caches, "bob") == set()  # never Alice's tokens
    assert caches.stats.refused == 1
    assert "belongs to another user" in caplog.text
    assert _scopes(caches, "alice") == {"api://loopback/mine"}
    with caches.for_user("bob") as cache:  # Bob signs in again: his cache is replaced
        _sign_in(idp, cache, "bob@example.com", "api://loopback/again")
    assert _scopes(caches, "bob") == {"api://loopback/again"}


@pytest.mark.parametrize("damage", ["garbage", "wrong-key", "wrong-type"])
def test_corrupt_value_is_an_empty_cache(
    redis_backend: Any,
    idp: LoopbackIdentityProvider,
    key: str,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caches = redis_backend.caches(key, prefix=_prefix())
    name = caches.key_name("dave")
    client = redis_backend.client()
    if damage == "wrong-type":
        client.set(name, b"not a hash")
    else:
        from cryptography.fernet import Fernet

        value = (
            b"gAAAA-not-fernet" if damage == "garbage" else Fernet(generate_key()).encrypt(b"{}")
        )
        client.hset(name, mapping={"v": "1", "d": value})
    client.close()
    caplog.set_level(logging.WARNING, logger="msal_keyring_cache.web")
    with caches.for_user("dave") as cache:
        assert list(cache.search(AT)) == []
        _sign_in(idp, cache, "dave@example.com", "api://loopback/fresh")
    assert caches.stats.corrupt == 1
    assert name in caplog.text
    assert _scopes(caches, "dave") == {"api://loopback/fresh"}


def test_ttl_is_set_and_refreshed_on_write(
    redis_backend: Any, idp: LoopbackIdentityProvider, key: str
) -> None:
    caches = redis_backend.caches(key, prefix=_prefix(), ttl=1000)
    with caches.for_user("erin") as cache:
        _sign_in(idp, cache, "erin@example.com", "api://loopback/one")
    client = redis_backend.client()
    name = caches.key_name("erin")
    assert 990 <= client.ttl(name) <= 1000
    client.expire(name, 50)
    with caches.for_user("erin") as cache:  # a read-only request does not write
        assert len(list(cache.search(AT))) == 1
    assert client.ttl(name) <= 50
    with caches.for_user("erin") as cache:
        _sign_in(idp, cache, "erin@example.com", "api://loopback/two")
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
        _sign_in(idp, cache, "frank@example.com", "api://loopback/before")

    def save_after_stop() -> None:
        with caches.for_user("frank") as cache:
            service.stop()  # dies between this request's load and its save
            _sign_in(idp, cache, "frank@example.com", "api://loopback/during")

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


def test_key_rotation_re_encrypts_and_moves_on_next_use(
    redis_backend: Any, idp: LoopbackIdentityProvider
) -> None:
    old, new, prefix = generate_key(), generate_key(), _prefix()
    before = redis_backend.caches(old, prefix=prefix)
    with before.for_user("hana") as cache:
        _sign_in(idp, cache, "hana@example.com", "api://loopback/kept")
    rotating = redis_backend.caches([new, old], prefix=prefix)
    assert _scopes(rotating, "hana") == {"api://loopback/kept"}
    assert rotating.stats.migrated == 1
    assert set(_stored(redis_backend, prefix)) == {rotating.key_name("hana")}
    after = redis_backend.caches(new, prefix=prefix)
    assert _scopes(after, "hana") == {"api://loopback/kept"}
    assert after.stats.migrated == 0
    assert _scopes(before, "hana") == set()  # the old key alone no longer finds it


def test_from_env(redis_server: Any, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="MYAPP_REDIS_URL"):
        UserCaches.from_env("MYAPP", environ={})
    with pytest.raises(ConfigError, match="MYAPP_KEY"):
        UserCaches.from_env("MYAPP", environ={"MYAPP_REDIS_URL": redis_server.url})
    env = {"MYAPP_REDIS_URL": redis_server.url, "MYAPP_KEY": key, "MYAPP_REDIS_PREFIX": "envapp",
           "MYAPP_REDIS_TTL": "1234"}  # fmt: skip
    caches = UserCaches.from_env("MYAPP", environ=env)
    assert caches.prefix == "envapp"
    assert caches.ttl == 1234
    assert caches.key_name("x").startswith("envapp:u:{")
    assert key not in repr(caches)


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


def test_missing_redis_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis-py were not installed
    with pytest.raises(ConfigError, match=r"msal-keyring-cache\[redis\]"):
        UserCaches.from_url("redis://127.0.0.1:1/0", key=key)


def test_nothing_secret_in_logs(
    redis_server: Any, idp: LoopbackIdentityProvider, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caches = UserCaches.from_url(redis_server.url, key=key, prefix=_prefix())
    with caplog.at_level(logging.DEBUG):
        with caches.for_user("ivan@example.com") as cache:
            _sign_in(idp, cache, "ivan@example.com", "api://loopback/log")
        caches.client.hset(caches.key_name("ivan@example.com"), "d", b"damaged")
        assert _scopes(caches, "ivan@example.com") == set()
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
            _sign_in(idp, cache, f"{user}@example.com", "api://loopback/node")
    next(n for n in cluster.nodes if n.port == down).stop()

    def load_dead() -> None:
        with caches.for_user(users[0]):
            pass

    _fails_cleanly(load_dead)
    assert _scopes(caches, alive) == {"api://loopback/node"}  # other slots keep working
