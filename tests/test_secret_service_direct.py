"""The kept Secret Service connection (direct reads and writes) on the real gnome-keyring.

A store goes straight to the Secret Service only when the stamp file says keyring's
SecretService backend wrote last AND nothing could make keyring choose or read differently
(another backend named, one set by the application, a keyringrc.cfg, KEYRING_PROPERTY_*,
no session bus). A locked collection is never taken for an empty one.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import keyring
import keyring.core
import pytest
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

from msal_keyring_cache import BackendUnavailableError
from msal_keyring_cache.stores.credential import MIN_VALUE_LENGTH, KeyringStore
from tests.fakes import ScopedKeyring
from tests.services_secret_service import SecretService
from tests.test_keyring_store import memory_keyring  # noqa: F401 - the fixture, shared

pytestmark = pytest.mark.secret_service

DATA = json.dumps({"RefreshToken": {"k": {"secret": "direct-secret-0f3a"}}}).encode()


@pytest.fixture
def service(use_secret_service: SecretService) -> str:
    return f"direct-{uuid.uuid4().hex[:8]}"


def make(tmp_path: Path, service: str, **kwargs: Any) -> KeyringStore:
    return KeyringStore(
        service, "cache", lock_path=str(tmp_path / "ss.lock"), keyring_timeout=10, **kwargs
    )


def written(tmp_path: Path, service: str) -> KeyringStore:
    """A store that saved DATA through the Secret Service (the stamp remembers it)."""
    first = make(tmp_path, service)
    with first.lock():
        first.save(DATA)
    first.close()
    return make(tmp_path, service)


def test_a_remembered_secret_service_is_read_directly(tmp_path: Path, service: str) -> None:
    again = written(tmp_path, service)
    again.resolve()
    assert again.direct
    facts = again.describe()
    assert facts.extra["direct_reads"] is True
    assert facts.extra["keyring_backend"] == "keyring.backends.SecretService.Keyring"
    assert "Secret Service" in facts.protection_text
    assert again.load() == DATA
    assert again.direct  # the read was the plain case: it stayed on the kept connection


def test_direct_reads_also_when_keyring_is_not_told_anything(
    tmp_path: Path, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = written(tmp_path, service)
    writer.close()
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND")
    # keyring's config directory may exist (it keeps data there); only a keyringrc.cfg counts.
    config = tmp_path / "xdg-config"
    (config / "python_keyring").mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    again = make(tmp_path, service)
    again.resolve()
    assert again.direct
    assert again.load() == DATA


@pytest.mark.parametrize(
    "change",
    ["another backend", "set_keyring", "keyring property", "no session bus", "keyringrc", "macOS"],
)
def test_anything_that_changes_keyrings_choice_turns_direct_reads_off(
    tmp_path: Path,
    service: str,
    monkeypatch: pytest.MonkeyPatch,
    memory_keyring: type[ScopedKeyring],  # noqa: F811
    change: str,
) -> None:
    written(tmp_path, service).close()
    if change == "another backend":
        monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.fakes.ScopedKeyring")
    elif change == "set_keyring":
        monkeypatch.setattr(keyring.core, "_keyring_backend", ScopedKeyring())
    elif change == "keyring property":
        monkeypatch.setenv("KEYRING_PROPERTY_PREFERRED_COLLECTION", "/no/such/collection")
    elif change == "macOS":  # a posix system whose keyring is the Keychain
        monkeypatch.setattr(sys, "platform", "darwin")
    elif change == "no session bus":
        monkeypatch.delenv("PYTHON_KEYRING_BACKEND")  # keyring's class, remembered, is used
        monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS")
    else:
        config = tmp_path / "xdg-config"
        (config / "python_keyring").mkdir(parents=True)
        (config / "python_keyring" / "keyringrc.cfg").write_text(
            "[backend]\ndefault-keyring = keyring.backends.SecretService.Keyring\n"
        )
        monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    again = make(tmp_path, service)
    again.resolve()
    monkeypatch.undo()
    assert not again.direct
    assert again.describe().extra["direct_reads"] is False


def test_a_keyringrc_in_the_home_config_turns_direct_reads_off(
    tmp_path: Path, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    written(tmp_path, service).close()
    monkeypatch.delenv("XDG_CONFIG_HOME")
    home = Path.home()
    (home / ".config" / "python_keyring").mkdir(parents=True, exist_ok=True)
    rc = home / ".config" / "python_keyring" / "keyringrc.cfg"
    rc.write_text("[backend]\ndefault-keyring = keyring.backends.SecretService.Keyring\n")
    again = make(tmp_path, service)
    again.resolve()
    assert not again.direct
    assert again.load() == DATA


def test_a_locked_collection_is_never_taken_for_an_empty_one(
    tmp_path: Path, service: str, use_secret_service: SecretService
) -> None:
    writer = written(tmp_path, service)
    writer.clear()  # nothing stored now, but the stamp still remembers the Secret Service
    writer.close()
    use_secret_service.lock()
    reader = make(tmp_path, service)
    reader.resolve()
    assert reader.direct
    with pytest.raises(BackendUnavailableError, match="is locked"):
        reader.load()
    with pytest.raises(BackendUnavailableError, match="is locked"):
        make(tmp_path, service).clear()


def test_direct_writes_replace_the_item_and_clear_deletes_it(
    tmp_path: Path, service: str, use_secret_service: SecretService
) -> None:
    store = written(tmp_path, service)
    store.resolve()
    assert store.direct
    for n in range(2):
        with store.lock():
            store.save(DATA.replace(b"0f3a", f"{n}".encode()))
    assert store.direct
    mine = [a for a, _ in use_secret_service.items() if a.get("service") == service]
    assert len(mine) == 1  # replaced, not added
    keyring.set_password(service, "by-keyring", "x")  # the same item as keyring writes
    assert _content_types(use_secret_service, service) == {"text/plain"}
    keyring.delete_password(service, "by-keyring")
    reader = make(tmp_path, service)
    assert reader.load() == DATA.replace(b"0f3a", b"1")
    store.clear()
    assert store.direct  # the plain case never hands over to keyring
    assert not [a for a, _ in use_secret_service.items() if a.get("service") == service]
    assert make(tmp_path, service).load() is None
    store.close()
    store.close()  # closing twice is fine
    assert store.load() is None  # and a closed store opens a new connection


def test_an_empty_store_reads_and_clears_on_the_kept_connection(
    tmp_path: Path, service: str
) -> None:
    store = written(tmp_path, service)
    store.clear()
    store.close()
    again = make(tmp_path, service)
    again.resolve()
    assert again.load() is None
    again.clear()
    assert again.direct  # "not there" from an unlocked collection is a plain answer
    again.close()


def test_a_direct_clear_on_a_locked_collection_fails_loudly(
    tmp_path: Path, service: str, use_secret_service: SecretService
) -> None:
    written(tmp_path, service).close()
    use_secret_service.lock()
    store = make(tmp_path, service)
    store.resolve()
    assert store.direct
    with pytest.raises(BackendUnavailableError, match="is locked"):
        store.clear()
    use_secret_service.unlock()
    assert make(tmp_path, service).load() == DATA


def test_a_daemon_handover_leaves_one_daemon_serving_the_private_bus(
    use_secret_service: SecretService,
) -> None:
    # The tests' unlock() replaces the daemon. With the system's service files on the bus
    # and an unlock() that did not wait for the old daemon to leave, a call during the
    # handover started a second daemon (D-Bus activation) in about half of the handovers,
    # and the two later took the name from each other: a test's call then failed
    # "disconnected without replying". (This test failed 2 of 3 runs on that fixture.)
    from tests.services_secret_service import _keyring_pids

    for _ in range(3):
        use_secret_service.lock()
        use_secret_service.unlock()
        assert len(_keyring_pids(use_secret_service.env)) == 1
        assert use_secret_service.items() is not None  # the one left answers


def test_clear_deletes_every_chunk_written_on_the_kept_connection(
    tmp_path: Path, service: str, use_secret_service: SecretService
) -> None:
    written(tmp_path, service).close()
    store = make(tmp_path, service, max_value_length=MIN_VALUE_LENGTH)
    store.resolve()
    big = json.dumps({"RefreshToken": {f"k{n}": {"secret": f"s{n}"} for n in range(60)}})
    with store.lock():
        store.save(big.encode())
    assert store.direct
    mine = [a for a, _ in use_secret_service.items() if a.get("service", "").startswith(service)]
    assert len(mine) > 3  # chunks and their manifest
    assert make(tmp_path, service).load() == big.encode()
    store.clear()
    assert store.direct
    assert not [
        a for a, _ in use_secret_service.items() if a.get("service", "").startswith(service)
    ]
    store.close()


def test_closing_a_store_releases_its_connection(
    tmp_path: Path, service: str, use_secret_service: SecretService
) -> None:
    written(tmp_path, service).close()
    unused = make(tmp_path, service)
    unused.resolve()
    assert unused.direct
    unused.close()  # resolved but never used: nothing to close, no error
    # The bus itself observes: every connection has a unique name while it is open.
    observer = open_dbus_connection(bus=use_secret_service.env["DBUS_SESSION_BUS_ADDRESS"])
    try:
        before = _connections(observer)
        store = make(tmp_path, service)
        store.resolve()
        assert store.load() == DATA
        assert store.direct
        opened = _connections(observer) - before  # the kept connection (and any other's)
        assert opened
        store.close()
        # The bus notices a closed socket asynchronously: wait for it, within a bound.
        for _ in range(200):
            if opened - _connections(observer):
                break
            time.sleep(0.01)
        assert opened - _connections(observer)  # the store's is gone
    finally:
        observer.close()


def test_a_forked_child_opens_its_own_connection(
    tmp_path: Path, service: str, use_secret_service: SecretService
) -> None:
    store = written(tmp_path, service)
    store.resolve()
    assert store.load() == DATA  # the parent's connection is open
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one read on the inherited store
        verdict = b"E"
        try:
            address = use_secret_service.env["DBUS_SESSION_BUS_ADDRESS"]
            observer = open_dbus_connection(bus=address)
            before = _connections(observer)
            same = store.load() == DATA and store.direct
            verdict = b"1" if same and _connections(observer) - before else b"0"
        finally:
            os.write(write, verdict)
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"  # the child read on a connection of its own
    os.close(read)
    assert store.load() == DATA  # and the parent's still answers
    store.close()


def _content_types(secret_service: SecretService, service: str) -> set[str]:
    collection: Any = secret_service.collection()
    try:
        return {
            item.get_secret_content_type() for item in collection.search_items({"service": service})
        }
    finally:
        collection.connection.close()


def _connections(observer: Any) -> set[str]:
    reply = observer.send_and_get_reply(message_bus.ListNames())
    return {name for name in reply.body[0] if name.startswith(":")}
