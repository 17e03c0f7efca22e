"""The same web-cache behaviour on every store: Redis, Redis Cluster, PostgreSQL, SQLite.

Real servers (tests/services_redis.py, tests/services_postgres.py), a real SQLite file,
real msal apps against the loopback identity provider; what is stored is looked at from
outside the library (tests/services_web.py).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from msal_keyring_cache import StoreError, generate_key
from msal_keyring_cache.testing import LoopbackIdentityProvider
from msal_keyring_cache.web import UserCaches
from tests.helpers import PYTHON, ROOT, child_env
from tests.services_web import ACCOUNT, AT, STORES, WebStore, new_prefix, scopes, sign_in


@pytest.fixture
def caches(web_store: WebStore, key: str) -> Iterator[UserCaches]:
    made = web_store.caches(key, prefix=new_prefix())
    yield made
    made.close()


def test_concurrent_requests_of_one_user_keep_every_token(
    caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    count = 24
    barrier = threading.Barrier(count, timeout=60)
    errors: list[BaseException] = []

    def request(index: int) -> None:
        try:
            with caches.for_user("alice") as cache:
                barrier.wait()  # every request has loaded the same state before any saves
                sign_in(idp, cache, "alice@example.com", f"api://loopback/s{index}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert scopes(caches, "alice") == {f"api://loopback/s{i}" for i in range(count)}
    assert caches.stats.saves == count
    assert caches.stats.conflicts >= count - 1  # the merge path really ran
    with caches.for_user("alice") as cache:
        assert len(list(cache.search(ACCOUNT))) == 1


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
    web_store: WebStore, idp: LoopbackIdentityProvider, key: str
) -> None:
    prefix = new_prefix()
    args = [web_store.url, "1" if web_store.cluster else "0", key, prefix, str(idp.port)]
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", CHILD, *args, str(n)], env=child_env(), cwd=ROOT, stdout=subprocess.PIPE
        )
        for n in range(4)
    ]
    saves = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        saves += int(out.split()[0])
    assert saves == 20
    caches = web_store.caches(key, prefix=prefix)
    expected = {f"api://loopback/p{n}-{i}" for n in range(4) for i in range(5)}
    assert scopes(caches, "carol") == expected
    caches.close()


def test_users_are_isolated_and_sign_out_deletes_only_one(
    caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    for user in ("alice", "bob"):
        with caches.for_user(user) as cache:
            sign_in(idp, cache, f"{user}@example.com", f"api://loopback/{user}")
    for user in ("alice", "bob"):
        with caches.for_user(user) as cache:
            assert [a["username"] for a in cache.search(ACCOUNT)] == [f"{user}@example.com"]
    assert caches.delete_user("alice") is True
    assert caches.delete_user("alice") is False
    assert scopes(caches, "alice") == set()
    assert scopes(caches, "bob") == {"api://loopback/bob"}


def test_nothing_readable_at_rest(
    web_store: WebStore, caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    idp.reset()
    users = ["alice@example.com", "bob@example.com"]
    for user in users:
        with caches.for_user(user) as cache:
            sign_in(idp, cache, user, "api://loopback/rest")
    assert web_store.names(caches.prefix) == {caches.key_name(u) for u in users}
    dump = web_store.dump()
    assert caches.key_name(users[0]).encode() in dump  # the dump really holds the records
    assert len(idp.issued) >= 4  # an access and a refresh token per user, at least
    for secret in idp.issued:
        assert secret.encode() not in dump
    for text in [*users, "alice", "api://loopback/rest", "refresh_token", "AccessToken"]:
        assert text.encode() not in dump
    for name in web_store.names(caches.prefix):  # one hash tag per user (Redis Cluster slot)
        assert name.count("{") == 1
        assert name.endswith("}")


def test_a_value_copied_onto_another_user_is_refused(
    web_store: WebStore,
    caches: UserCaches,
    idp: LoopbackIdentityProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caches.for_user("alice") as cache:
        sign_in(idp, cache, "alice@example.com", "api://loopback/mine")
    with caches.for_user("bob") as cache:
        sign_in(idp, cache, "bob@example.com", "api://loopback/bobs")
    web_store.put(caches.key_name("bob"), web_store.get(caches.key_name("alice")))
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache.web"):
        assert scopes(caches, "bob") == set()  # never Alice's tokens
    assert caches.stats.refused == 1
    assert "belongs to another user" in caplog.text
    assert scopes(caches, "alice") == {"api://loopback/mine"}
    with caches.for_user("bob") as cache:  # Bob signs in again: his cache is replaced
        sign_in(idp, cache, "bob@example.com", "api://loopback/again")
    assert scopes(caches, "bob") == {"api://loopback/again"}


def test_a_value_copied_between_two_apps_sharing_a_key_is_refused(
    web_store: WebStore, idp: LoopbackIdentityProvider, key: str
) -> None:
    first, second = (
        web_store.caches(key, prefix=new_prefix()),
        web_store.caches(key, prefix=new_prefix()),
    )
    with first.for_user("alice") as cache:
        sign_in(idp, cache, "alice@example.com", "api://loopback/first-app")
    with second.for_user("alice") as cache:
        sign_in(idp, cache, "alice@example.com", "api://loopback/second-app")
    web_store.put(second.key_name("alice"), web_store.get(first.key_name("alice")))
    assert scopes(second, "alice") == set()  # the first app's tokens are not served here
    assert second.stats.refused == 1
    assert scopes(first, "alice") == {"api://loopback/first-app"}
    first.close()
    second.close()


def test_a_token_acquired_in_a_block_that_raises_is_saved(
    caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    def request() -> None:
        with caches.for_user("dan") as cache:
            sign_in(idp, cache, "dan@example.com", "api://loopback/rotated")
            raise RuntimeError("the request failed after the token was acquired")

    with pytest.raises(RuntimeError, match="after the token"):
        request()
    assert scopes(caches, "dan") == {"api://loopback/rotated"}
    assert caches.stats.saves == 1


def test_a_read_only_request_does_not_write(
    caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    with caches.for_user("erin") as cache:
        sign_in(idp, cache, "erin@example.com", "api://loopback/one")
    for _ in range(3):
        with caches.for_user("erin") as cache:
            app = idp.confidential_app(token_cache=cache)
            account = app.get_accounts()[0]
            assert app.acquire_token_silent(["api://loopback/one"], account=account)
    assert caches.stats.saves == 1


@pytest.mark.parametrize("damage", ["garbage", "wrong-key"])
def test_a_damaged_value_is_an_empty_cache(
    web_store: WebStore,
    caches: UserCaches,
    idp: LoopbackIdentityProvider,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caches.for_user("dave") as cache:
        sign_in(idp, cache, "dave@example.com", "api://loopback/old")
    from cryptography.fernet import Fernet

    value = b"gAAAA-not-fernet" if damage == "garbage" else Fernet(generate_key()).encrypt(b"{}")
    web_store.put(caches.key_name("dave"), value)
    caplog.set_level(logging.WARNING, logger="msal_keyring_cache.web")
    with caches.for_user("dave") as cache:
        assert list(cache.search(AT)) == []
        sign_in(idp, cache, "dave@example.com", "api://loopback/fresh")
    assert caches.stats.corrupt == 1
    assert caches.key_name("dave") in caplog.text
    assert scopes(caches, "dave") == {"api://loopback/fresh"}


def test_an_expired_record_is_empty_and_purged(
    web_store: WebStore, caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    for user in ("old", "new"):
        with caches.for_user(user) as cache:
            sign_in(idp, cache, f"{user}@example.com", f"api://loopback/{user}")
    web_store.expire(caches.key_name("old"))
    assert scopes(caches, "old") == set()
    purged = caches.purge_expired()
    assert purged == (1 if web_store.sql else 0)  # Redis deletes expired keys by itself
    assert web_store.names(caches.prefix) == {caches.key_name("new")}
    assert caches.purge_expired() == 0
    with caches.for_user("old") as cache:  # signs in again: a new record
        sign_in(idp, cache, "old@example.com", "api://loopback/again")
    assert scopes(caches, "old") == {"api://loopback/again"}
    assert scopes(caches, "new") == {"api://loopback/new"}


def test_key_rotation_re_encrypts_and_moves_on_next_use(
    web_store: WebStore, idp: LoopbackIdentityProvider
) -> None:
    old, new, prefix = generate_key(), generate_key(), new_prefix()
    before = web_store.caches(old, prefix=prefix)
    with before.for_user("hana") as cache:
        sign_in(idp, cache, "hana@example.com", "api://loopback/kept")
    rotating = web_store.caches([new, old], prefix=prefix)
    assert scopes(rotating, "hana") == {"api://loopback/kept"}
    assert rotating.stats.migrated == 1
    assert web_store.names(prefix) == {rotating.key_name("hana")}
    after = web_store.caches(new, prefix=prefix)
    assert scopes(after, "hana") == {"api://loopback/kept"}
    assert after.stats.migrated == 0
    assert scopes(before, "hana") == set()  # the old key alone no longer finds it
    for made in (before, rotating, after):
        made.close()


SERVERS = [p for p in STORES if getattr(p, "values", [p])[0] != "sqlite"]


@pytest.mark.parametrize("web_store", SERVERS, indirect=True)  # SQLite: test_web_sql.py
def test_connections_killed_between_load_and_save_lose_nothing(
    web_store: WebStore, caches: UserCaches, idp: LoopbackIdentityProvider
) -> None:
    with caches.for_user("ken") as cache:
        sign_in(idp, cache, "ken@example.com", "api://loopback/before")
    with caches.for_user("ken") as cache:
        assert web_store.kill_connections() >= 1  # the pooled connection this request used
        sign_in(idp, cache, "ken@example.com", "api://loopback/during")
    assert scopes(caches, "ken") == {"api://loopback/before", "api://loopback/during"}


def _silent_listener() -> socket.socket:
    """A loopback port that accepts TCP connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def _fails_within(action: Any, bound: float) -> StoreError:
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"the call did not return within {bound} s"
    assert time.monotonic() - started < bound
    assert len(outcome) == 1
    assert isinstance(outcome[0], StoreError), outcome
    return outcome[0]


def test_an_unreachable_store_is_a_store_error_within_the_timeout(
    web_store: WebStore, key: str, tmp_path: Any
) -> None:
    listener = _silent_listener()
    port = listener.getsockname()[1]
    try:
        if web_store.name == "sqlite":
            url = f"sqlite:///{tmp_path}/missing-dir/tokens.db"  # cannot be opened
        elif web_store.postgres is not None:
            url = f"postgresql://u:hunter2-secret@127.0.0.1:{port}/db"
        else:
            url = f"redis://:hunter2-secret@127.0.0.1:{port}/0"
        caches = UserCaches.from_url(url, key=key, timeout=1, cluster=False)

        def load() -> None:
            with caches.for_user("zed"):
                pass

        # Bound: a few timeouts (libpq's connect timeout is at least 2 s; redis-py retries
        # twice) plus slack; the point is that it returns, with our error.
        error = _fails_within(load, 20)
        assert "hunter2" not in str(error)
        assert "hunter2" not in repr(caches)
        assert "reachable" in str(error)
    finally:
        listener.close()
