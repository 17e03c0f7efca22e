"""msal-extensions' API on our stores: its own test expectations, ported, plus what we add.

Ported from msal-extensions' tests (test_persistence, test_agnostic_backend,
test_crossplatlock, test_cache_lock_file_perf), rewritten against the loopback identity
provider and real processes instead of mocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import build_cache, compat
from msal_keyring_cache.compat import (
    CrossPlatLock,
    FilePersistence,
    FilePersistenceWithDataProtection,
    KeychainPersistence,
    LibsecretPersistence,
    LockError,
    PersistedTokenCache,
    PersistenceNotFound,
    build_encrypted_persistence,
)
from msal_keyring_cache.testing import LoopbackIdentityProvider

from .helpers import PYTHON, child_env

SCOPES = ["User.Read"]


@pytest.fixture(autouse=True)
def _file_key(key: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Configured as an app would (environment), and no credential store: the file fallback."""
    monkeypatch.setenv("MSAL_KEYRING_CACHE_KEY", key)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    return key


@pytest.fixture
def location(tmp_path: Path) -> str:
    return str(tmp_path / "folder" / "persistence.bin")


def every_persistence(location: str) -> list[Any]:
    return [
        FilePersistence(location),
        FilePersistenceWithDataProtection(location),
        KeychainPersistence(location),
        LibsecretPersistence(location, "my_schema_name", {"my_attr1": "foo"}),
        build_encrypted_persistence(location),
    ]


def sign_in(app: Any, username: str) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result: dict[str, Any] = app.acquire_token_by_username_password(username, "pw", SCOPES)
    assert "access_token" in result, result
    return result


# -- persistence (msal-extensions' test_persistence) ----------------------------------------


@pytest.mark.parametrize("index", range(5))
def test_persistence_round_trip_is_encrypted(location: str, index: int) -> None:
    persistence = every_persistence(location)[index]
    payload = "arbitrary content"
    persistence.save(payload)
    assert persistence.load() == payload
    assert persistence.is_encrypted
    assert persistence.get_location() == location
    assert persistence.time_last_modified() > 0
    assert b"arbitrary content" not in Path(location).read_bytes()  # encrypted at rest


@pytest.mark.parametrize("index", range(5))
def test_nonexistent_persistence_raises_persistence_not_found(location: str, index: int) -> None:
    persistence = every_persistence(location)[index]
    with pytest.raises(PersistenceNotFound):
        persistence.load()
    with pytest.raises(PersistenceNotFound):
        persistence.time_last_modified()
    with pytest.raises(IOError):  # noqa: PT011 - msal-extensions' callers catch IOError
        persistence.load()


def test_a_later_save_moves_time_last_modified(location: str) -> None:
    persistence = FilePersistence(location)
    persistence.save("one")
    first = persistence.time_last_modified()
    os.utime(location, (first - 10, first - 10))
    persistence.save("two")
    assert persistence.time_last_modified() > first - 10
    assert FilePersistence(location).load() == "two"  # another object sees it


# -- token cache (msal-extensions' test_agnostic_backend) -----------------------------------


@pytest.mark.parametrize("builder", [build_encrypted_persistence, FilePersistence])
def test_token_cache_round_trip_between_two_apps(
    idp: LoopbackIdentityProvider, location: str, builder: Any
) -> None:
    idp.reset()
    persistence = builder(location)
    apps = [idp.confidential_app(token_cache=PersistedTokenCache(persistence)) for _ in range(2)]
    first = apps[0].acquire_token_for_client(["https://graph.microsoft.com/.default"])
    assert first["token_source"] == "identity_provider"
    second = apps[1].acquire_token_for_client(["https://graph.microsoft.com/.default"])
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    assert idp.token_requests == 1
    assert PersistedTokenCache(persistence).is_encrypted


def test_a_missing_persistence_is_an_empty_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cache = PersistedTokenCache(FilePersistence("non_existing_file"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # msal deprecates find()
        assert cache.find("") == []


def test_has_state_changed_pattern_works(idp: LoopbackIdentityProvider, location: str) -> None:
    cache = PersistedTokenCache(build_encrypted_persistence(location))
    app = idp.public_app(token_cache=cache)
    sign_in(app, "alice@example.com")
    assert cache.has_state_changed  # msal's meaning: changed since the last serialize()
    copy = cache.serialize()
    assert not cache.has_state_changed
    assert json.loads(copy)["RefreshToken"]


def test_a_foreign_persistence_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    from msal_extensions import FilePersistence as Theirs

    with pytest.raises(compat.ConfigError, match="change that import line"):
        PersistedTokenCache(Theirs(str(tmp_path / "x.json")))


# -- where msal-extensions raises ------------------------------------------------------------


def test_libsecret_persistence_works_where_msal_extensions_raises(
    idp: LoopbackIdentityProvider, location: str
) -> None:
    import msal_extensions

    with pytest.raises((ImportError, RuntimeError, ValueError)):
        msal_extensions.LibsecretPersistence(location)  # headless: no gi, no libsecret
    persistence = LibsecretPersistence(location, "my_schema_name", {"my_attr1": "foo"})
    app = idp.public_app(token_cache=PersistedTokenCache(persistence))
    result = sign_in(app, "alice@example.com")
    assert persistence.is_encrypted
    assert result["refresh_token"].encode() not in Path(location).read_bytes()
    # The file is this library's: build_cache reads it with the configured key.
    secure = build_cache(backend="file", path=location)
    assert [a["username"] for a in idp.public_app(token_cache=secure).get_accounts()] == [
        "alice@example.com"
    ]


@pytest.mark.secret_service
def test_libsecret_persistence_uses_the_secret_service_when_one_answers(
    idp: LoopbackIdentityProvider, location: str, use_secret_service: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("MSAL_KEYRING_CACHE_KEY")
    monkeypatch.setenv(
        "DBUS_SESSION_BUS_ADDRESS", use_secret_service.env["DBUS_SESSION_BUS_ADDRESS"]
    )
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.SecretService.Keyring")
    persistence = LibsecretPersistence(location, f"schema-{os.getpid()}", {"my_attr1": "foo"})
    cache = PersistedTokenCache(persistence)
    assert cache.store.backend == "keyring"
    sign_in(idp.public_app(token_cache=cache), "alice@example.com")
    items = [
        a for a, _ in use_secret_service.items() if a.get("service") == f"schema-{os.getpid()}"
    ]
    assert len(items) == 1
    assert items[0]["username"] == "my_attr1=foo"
    assert not os.path.exists(location)  # no file: the credential store holds it
    persistence.store.clear()


# -- bringing msal-extensions' plaintext file along -----------------------------------------


def test_a_plaintext_msal_extensions_file_is_taken_in_encrypted(
    idp: LoopbackIdentityProvider, location: str
) -> None:
    import msal_extensions

    legacy = idp.public_app(
        token_cache=msal_extensions.PersistedTokenCache(msal_extensions.FilePersistence(location))
    )
    token = sign_in(legacy, "alice@example.com")["refresh_token"]
    assert token.encode() in Path(location).read_bytes()  # theirs: plaintext

    idp.reset()
    app = idp.public_app(token_cache=PersistedTokenCache(FilePersistence(location)))
    accounts = app.get_accounts()
    assert [a["username"] for a in accounts] == ["alice@example.com"]
    assert app.acquire_token_silent(SCOPES, account=accounts[0])["token_source"] == "cache"
    assert idp.token_requests == 0
    assert token.encode() not in Path(location).read_bytes()  # now encrypted in place
    assert not os.path.exists(location + ".lockfile")
    assert not list(Path(location).parent.glob("*.corrupt-*"))


def test_an_empty_msal_extensions_marker_is_not_taken_for_a_damaged_cache(location: str) -> None:
    Path(location).parent.mkdir(parents=True)
    Path(location).write_bytes(b"")
    persistence = build_encrypted_persistence(location)
    with pytest.raises(PersistenceNotFound):
        persistence.load()
    assert not list(Path(location).parent.glob("*.corrupt-*"))


# -- lock (msal-extensions' test_crossplatlock and test_cache_lock_file_perf) ---------------


def test_lock_file_is_deleted_after_release(tmp_path: Path) -> None:
    lockfile = tmp_path / "test_lock_1.txt"
    with CrossPlatLock(str(lockfile)):
        assert lockfile.exists()
    assert not lockfile.exists()


def test_a_held_lock_times_out_with_lock_error(tmp_path: Path) -> None:
    lockfile = str(tmp_path / "held.lockfile")
    with CrossPlatLock(lockfile), pytest.raises(LockError, match="holds it"):  # noqa: SIM117
        with CrossPlatLock(lockfile, timeout=0.3):
            pass


_WORKER = textwrap.dedent(
    """
    import os, sys, time
    from msal_keyring_cache.compat import CrossPlatLock, FilePersistence, PersistenceNotFound
    location, pause = sys.argv[1], float(sys.argv[2])
    persistence = FilePersistence(location)
    with CrossPlatLock(persistence.get_location() + ".lockfile"):
        try:
            data = persistence.load()
        except PersistenceNotFound:
            data = ""
        data += "< %d\\n" % os.getpid()
        time.sleep(pause)
        data += "> %d\\n" % os.getpid()
        persistence.save(data)
    """
)


def _no_overlap(text: str) -> int:
    lines = [line.split() for line in text.splitlines() if line]
    for opening, closing in zip(lines[::2], lines[1::2]):
        assert opening[0] == "<"
        assert closing == [">", opening[1]], "two processes overlapped"
    return len(lines)


@pytest.mark.parametrize(("processes", "pause"), [(4, 0.1), (12, 0.0)])
def test_lock_serializes_real_processes(location: str, processes: int, pause: float) -> None:
    workers = [
        subprocess.Popen([PYTHON, "-c", _WORKER, location, str(pause)], env=child_env())
        for _ in range(processes)
    ]
    assert [w.wait(timeout=180) for w in workers] == [0] * processes
    assert _no_overlap(FilePersistence(location).load()) == processes * 2  # none starved


_SIGNER = textwrap.dedent(
    """
    import sys, warnings
    import msal
    from msal_keyring_cache.compat import PersistedTokenCache, build_encrypted_persistence
    from msal_keyring_cache.testing import loopback_http_client
    location, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = msal.PublicClientApplication(
        "00000000-0000-0000-0000-00000000c11d", authority="https://127.0.0.1/loopback-tenant",
        http_client=loopback_http_client(port), instance_discovery=False,
        token_cache=PersistedTokenCache(build_encrypted_persistence(location)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result = app.acquire_token_by_username_password(user, "pw", ["User.Read"])
    sys.exit(0 if "access_token" in result else 1)
    """
)


def test_cross_process_writes_lose_no_sign_in(idp: LoopbackIdentityProvider, location: str) -> None:
    users = [f"user{i}@example.com" for i in range(6)]
    workers = [
        subprocess.Popen([PYTHON, "-c", _SIGNER, location, str(idp.port), user], env=child_env())
        for user in users
    ]
    assert [w.wait(timeout=180) for w in workers] == [0] * len(users)
    cache = PersistedTokenCache(build_encrypted_persistence(location))
    app = idp.public_app("00000000-0000-0000-0000-00000000c11d", token_cache=cache)
    assert sorted(a["username"] for a in app.get_accounts()) == users


def test_lock_waits_the_configured_lock_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSAL_KEYRING_CACHE_LOCK_TIMEOUT", "0.2")
    lockfile = str(tmp_path / "held.lockfile")
    with CrossPlatLock(lockfile), pytest.raises(LockError, match=r"waiting 0\.2 s"):  # noqa: SIM117
        with CrossPlatLock(lockfile):
            pass


_THEIR_WRITER = textwrap.dedent(
    """
    import sys
    from msal_extensions import CrossPlatLock, FilePersistence
    path, n = sys.argv[1], int(sys.argv[2])
    p = FilePersistence(path)
    for i in range(n):
        with CrossPlatLock(path + ".lockfile"):
            p.save(p.load() + "x")
    """
)


def test_cross_plat_lock_excludes_msal_extensions_processes(tmp_path: Path) -> None:
    """Theirs in two real processes, ours here, one counter file: no update is lost."""
    path = tmp_path / "counter.txt"
    path.write_text("")
    theirs = [
        subprocess.Popen([PYTHON, "-c", _THEIR_WRITER, str(path), "30"], env=child_env())
        for _ in range(2)
    ]
    for _ in range(30):
        with CrossPlatLock(str(path) + ".lockfile"):
            path.write_text(path.read_text() + "y")
    assert [w.wait(timeout=120) for w in theirs] == [0, 0]
    assert len(path.read_text()) == 90


@pytest.mark.secret_service
def test_a_locked_credential_store_is_an_error_not_an_empty_file(
    location: str, use_secret_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from msal_keyring_cache.errors import BackendUnavailableError

    monkeypatch.setenv(
        "DBUS_SESSION_BUS_ADDRESS", use_secret_service.env["DBUS_SESSION_BUS_ADDRESS"]
    )
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.SecretService.Keyring")
    monkeypatch.setenv("MSAL_KEYRING_CACHE_KEYRING_TIMEOUT", "5")
    use_secret_service.lock()
    with pytest.raises(BackendUnavailableError):
        LibsecretPersistence(location, f"locked-{os.getpid()}").load()
    assert not os.path.exists(location)  # no empty file cache started in its place
