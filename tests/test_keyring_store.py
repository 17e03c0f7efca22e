"""KeyringStore: one write per save, chunking for size-limited backends, change detection,
error translation and bounded calls — against in-process keyring backends, and against a
real Secret Service (gnome-keyring on a private D-Bus)."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Optional

import pytest
from keyring import errors as keyring_errors
from keyring.backend import KeyringBackend
from keyring.compat import properties

from msal_keyring_cache import (
    BackendUnavailableError,
    PersistentTokenCache,
    StoreError,
    build_cache,
)
from msal_keyring_cache.stores.credential import WINDOWS_MAX_VALUE_LENGTH, KeyringStore
from tests.helpers import PYTHON, child_env

SCOPES = ["User.Read"]


# -- in-process keyring backends (registered with keyring, viable only inside a test) -----


class MemoryKeyring(KeyringBackend):
    """A keyring kept in a class-level dict, counting calls. Viable only when a test says."""

    test_priority: ClassVar[Optional[float]] = None
    entries: ClassVar[dict[tuple[str, str], str]] = {}
    calls: ClassVar[dict[str, int]] = {"get": 0, "set": 0, "delete": 0}
    guard = threading.Lock()

    @properties.classproperty
    def priority(cls) -> float:
        if cls.test_priority is None:
            raise RuntimeError("a test backend, viable only inside its tests")
        return cls.test_priority

    def get_password(self, service: str, username: str) -> Optional[str]:
        with self.guard:
            type(self).calls["get"] += 1
            return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        with self.guard:
            type(self).calls["set"] += 1
            self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        with self.guard:
            type(self).calls["delete"] += 1
            if self.entries.pop((service, username), None) is None:
                raise keyring_errors.PasswordDeleteError("not found")


class CredWriteError(Exception):
    """What pywin32's CredWrite raises for a value over 2,560 bytes."""


class WinLikeKeyring(MemoryKeyring):
    """Rejects values over 1,280 characters the way Windows Credential Manager does."""

    def set_password(self, service: str, username: str, password: str) -> None:
        if len(password) > WINDOWS_MAX_VALUE_LENGTH:
            raise CredWriteError(1783, "CredWrite", "The stub received bad data.")
        time.sleep(0)  # let a racing reader in between chunk writes
        super().set_password(service, username, password)

    def get_password(self, service: str, username: str) -> Optional[str]:
        time.sleep(0)
        return super().get_password(service, username)


class RaisingKeyring(MemoryKeyring):
    """Raises ``to_raise`` from every call."""

    to_raise: ClassVar[BaseException] = RuntimeError("unset")

    def get_password(self, service: str, username: str) -> Optional[str]:
        raise self.to_raise

    def set_password(self, service: str, username: str, password: str) -> None:
        raise self.to_raise


class HangingKeyring(MemoryKeyring):
    """Never answers (an unlock prompt nobody sees) until the test releases it."""

    release = threading.Event()

    def get_password(self, service: str, username: str) -> Optional[str]:
        self.release.wait(30)
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        self.release.wait(30)


@pytest.fixture
def memory_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[MemoryKeyring]]:
    """Make the in-process backends viable and empty for this test."""
    monkeypatch.setattr(MemoryKeyring, "test_priority", 5.0)
    monkeypatch.setattr(MemoryKeyring, "entries", {})
    monkeypatch.setattr(MemoryKeyring, "calls", {"get": 0, "set": 0, "delete": 0})
    HangingKeyring.release.clear()
    yield MemoryKeyring
    HangingKeyring.release.set()


def make_store(tmp_path: Path, backend: Any, **kwargs: Any) -> KeyringStore:
    kwargs.setdefault("keyring_timeout", 5.0)
    return KeyringStore(
        "test-service", "token-cache", lock_path=str(tmp_path / "kr.lock"), keyring=backend,
        **kwargs,
    )  # fmt: skip


def sign_in(idp: Any, cache: PersistentTokenCache, user: str = "alice@example.com") -> Any:
    app = idp.public_app(token_cache=cache)
    result = app.acquire_token_by_username_password(user, "pw", SCOPES)
    assert "access_token" in result, result
    return app


# -- one entry, one write ----------------------------------------------------------------


def test_one_backend_write_per_sign_in_and_none_per_silent_hit(
    tmp_path: Path, memory_keyring: type[MemoryKeyring], idp: Any
) -> None:
    store = make_store(tmp_path, MemoryKeyring())
    cache = PersistentTokenCache(store)
    idp.reset()
    app = sign_in(idp, cache)
    assert store.stats.saves == 1
    assert MemoryKeyring.calls["set"] == 1
    assert len(MemoryKeyring.entries) == 1  # unchunked: one entry holds the whole cache
    gets = MemoryKeyring.calls["get"]
    account = app.get_accounts()[0]
    for _ in range(20):
        assert "access_token" in app.acquire_token_silent(SCOPES, account=account)
    # Warm silent hits: no credential-store round trip, no write, no token request.
    assert MemoryKeyring.calls["get"] == gets
    assert MemoryKeyring.calls["set"] == 1
    assert store.stats.saves == 1
    assert idp.token_requests == 1


def test_another_instance_sees_a_write_through_the_stamp_file(
    tmp_path: Path, memory_keyring: type[MemoryKeyring]
) -> None:
    writer, reader = make_store(tmp_path, MemoryKeyring()), make_store(tmp_path, MemoryKeyring())
    assert reader.changed()  # never loaded
    assert reader.load() is None
    assert not reader.changed()
    with writer.lock():
        writer.save(b'{"AccessToken": {}}')
    assert reader.changed()
    assert reader.load() == b'{"AccessToken": {}}'
    assert not reader.changed()
    stamp = Path(writer.stamp_path)
    assert oct(stamp.stat().st_mode & 0o777) == "0o600"
    assert json.loads(stamp.read_text())["backend"].endswith("MemoryKeyring")
    writer.clear()
    assert reader.changed()
    assert reader.load() is None


# -- chunking -----------------------------------------------------------------------------


def big_cache(version: int, size: int = 110_000) -> bytes:
    tag = f"{version:06d}"
    return (tag * (size // len(tag))).encode()


def test_a_100kb_cache_round_trips_through_a_windows_sized_backend(
    tmp_path: Path, memory_keyring: type[MemoryKeyring]
) -> None:
    store = make_store(tmp_path, WinLikeKeyring(), max_value_length=WINDOWS_MAX_VALUE_LENGTH)
    data = big_cache(1)
    with store.lock():
        store.save(data)
    chunks = -(-len(data) // WINDOWS_MAX_VALUE_LENGTH)
    assert chunks == 86
    assert MemoryKeyring.calls["set"] == chunks + 1  # the chunks, then the manifest
    assert all(len(v) <= WINDOWS_MAX_VALUE_LENGTH for v in MemoryKeyring.entries.values())
    other = make_store(tmp_path, WinLikeKeyring(), max_value_length=WINDOWS_MAX_VALUE_LENGTH)
    assert other.load() == data
    # A new generation replaces the old one: the old chunks are deleted.
    with store.lock():
        store.save(big_cache(2, 50_000))
    assert len(MemoryKeyring.entries) == -(-50_000 // WINDOWS_MAX_VALUE_LENGTH) + 1
    assert other.changed()
    assert other.load() == big_cache(2, 50_000)
    # Small again: back to one plain entry, every chunk gone.
    with store.lock():
        store.save(b"{}")
    assert MemoryKeyring.entries == {("test-service", "token-cache"): "{}"}


def test_the_windows_backend_is_chunked_without_configuration(
    tmp_path: Path, memory_keyring: type[MemoryKeyring]
) -> None:
    class WinVaultKeyring(WinLikeKeyring):
        pass

    WinVaultKeyring.__module__ = "keyring.backends.Windows"
    WinVaultKeyring.__qualname__ = "WinVaultKeyring"
    store = make_store(tmp_path, WinVaultKeyring())
    with store.lock():
        store.save(big_cache(3))
    assert store.load() == big_cache(3)
    assert "1280" in store.describe().extra["chunking"]


def test_an_unchunked_value_too_large_for_the_backend_is_a_clear_store_error(
    tmp_path: Path, memory_keyring: type[MemoryKeyring]
) -> None:
    store = make_store(tmp_path, WinLikeKeyring())
    with pytest.raises(StoreError, match="refused to write") as caught, store.lock():
        store.save(big_cache(1))
    assert "000001" not in str(caught.value)


def test_a_reader_racing_a_writer_never_sees_a_mixed_generation(
    tmp_path: Path, memory_keyring: type[MemoryKeyring]
) -> None:
    limit = WINDOWS_MAX_VALUE_LENGTH
    writer = make_store(tmp_path, WinLikeKeyring(), max_value_length=limit)
    reader = make_store(tmp_path, WinLikeKeyring(), max_value_length=limit)
    with writer.lock():
        writer.save(big_cache(0, 60_000))
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for version in range(1, 16):
                with writer.lock():
                    writer.save(big_cache(version, 60_000 + version * 1000))
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    seen: set[int] = set()
    thread = threading.Thread(target=write)
    thread.start()
    while not stop.is_set() or not seen:
        data = reader.load()
        assert data is not None
        version = int(data[:6])
        assert data == big_cache(version, 60_000 + version * 1000)
        seen.add(version)
    thread.join()
    assert not errors
    assert reader.load() == big_cache(15, 75_000)
    assert len(seen) >= 2


def test_damaged_chunks_start_the_cache_empty_with_a_warning(
    tmp_path: Path, memory_keyring: type[MemoryKeyring], caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path, WinLikeKeyring(), max_value_length=WINDOWS_MAX_VALUE_LENGTH)
    with store.lock():
        store.save(big_cache(1))
    chunk = next(k for k in MemoryKeyring.entries if k[0].endswith(".3"))
    MemoryKeyring.entries[chunk] = "tampered"
    other = make_store(tmp_path, WinLikeKeyring(), max_value_length=WINDOWS_MAX_VALUE_LENGTH)
    with caplog.at_level(logging.WARNING, "msal_keyring_cache"):
        assert other.load() is None
    assert "damaged" in caplog.text


# -- errors and hangs ---------------------------------------------------------------------


def _raising(exc: BaseException) -> RaisingKeyring:
    RaisingKeyring.to_raise = exc
    return RaisingKeyring()


def _third_party_errors() -> list[tuple[BaseException, str]]:
    import secretstorage.exceptions as ss

    return [
        (keyring_errors.KeyringLocked("Failed to unlock the collection!"), "is locked"),
        (keyring_errors.InitError("Failed to create the collection"), "could not be used"),
        (keyring_errors.NoKeyringError("No recommended backend"), "could not be used"),
        (OSError(5, "Access is denied"), "Access is denied"),
        (ss.SecretServiceNotAvailableException("no service"), "could not be used"),
        (ss.LockedException("locked item"), "is locked"),
        (ss.PromptDismissedException("dismissed"), "is locked"),
    ]


@pytest.mark.parametrize(("exc", "words"), _third_party_errors(), ids=lambda x: type(x).__name__)
def test_keyring_and_dbus_errors_arrive_as_backend_unavailable(
    tmp_path: Path, memory_keyring: type[MemoryKeyring], exc: BaseException, words: str
) -> None:
    store = make_store(tmp_path, _raising(exc))
    with pytest.raises(BackendUnavailableError, match=words) as caught:
        store.load()
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_write_error_is_a_store_error_that_does_not_quote_the_value(
    tmp_path: Path, memory_keyring: type[MemoryKeyring]
) -> None:
    secret = '{"RefreshToken": "rt.SECRET-VALUE"}'
    for exc in (keyring_errors.PasswordSetError("cannot"), ValueError(secret)):
        store = make_store(tmp_path, _raising(exc))
        with pytest.raises(StoreError) as caught, store.lock():
            store.save(secret.encode())
        assert "SECRET-VALUE" not in str(caught.value)


def test_a_hanging_backend_is_abandoned_after_the_keyring_timeout(
    tmp_path: Path, memory_keyring: type[MemoryKeyring]
) -> None:
    store = make_store(tmp_path, HangingKeyring(), keyring_timeout=0.2)
    with pytest.raises(BackendUnavailableError, match=r"did not answer .* within 0.2 s"):
        store.load()
    with pytest.raises(BackendUnavailableError, match="did not answer"), store.lock():
        store.save(b"{}")


# -- real Secret Service --------------------------------------------------------------------


def _files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = Path(dirpath, name)
                if stat.S_ISREG(path.lstat().st_mode):  # not sockets (the daemon's control)
                    yield path


def assert_no_token_text(idp: Any, *roots: Path) -> None:
    issued = [t for t in idp.issued if len(t) >= 40]
    assert issued
    for path in _files_under(*roots):
        blob = path.read_bytes()
        for token in issued:
            assert token.encode() not in blob, f"token text found in {path}"
            assert token[:40].encode() not in blob, f"token text found in {path}"


@pytest.mark.secret_service
def test_secret_service_one_write_per_sign_in_and_silent_second_process(
    tmp_path: Path, use_secret_service: Any, idp: Any
) -> None:
    path = tmp_path / "data" / "token_cache.bin"
    cache = build_cache("kr-one-write", path=str(path))
    assert cache.backend_info.backend == "keyring"
    store = cache.store
    assert isinstance(store, KeyringStore)
    idp.reset()
    app = sign_in(idp, cache)
    assert store.stats.saves == 1
    assert store.calls["set"] == 1
    assert [a for a, _ in use_secret_service.items() if a.get("service") == "kr-one-write"]
    before = idp.token_requests
    script = (
        "import json, msal, msal_keyring_cache as m\n"
        "from msal_keyring_cache.testing import loopback_http_client\n"
        f"cache = m.build_cache('kr-one-write', path={str(path)!r})\n"
        f"app = msal.PublicClientApplication('{app.client_id}', authority='{idp.authority}',"
        f" http_client=loopback_http_client({idp.port}), instance_discovery=False,"
        " token_cache=cache)\n"
        "r = app.acquire_token_silent(['User.Read'], account=app.get_accounts()[0])\n"
        "import sys\n"
        "print(json.dumps({'ok': 'access_token' in (r or {}), 'backend': str(cache.backend_info),"
        " 'calls': cache.store.calls, 'saves': cache.store.stats.saves,"
        " 'direct': cache.store.direct, 'keyring_imported': 'keyring' in sys.modules}))\n"
    )
    env = child_env()
    env.pop("PYTHON_KEYRING_BACKEND")  # the child finds the backend through the stamp file
    out = subprocess.run([PYTHON, "-c", script], env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    child = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert child["ok"]
    assert idp.token_requests == before  # served silently from the Secret Service
    assert "remembered from the last write" in child["backend"]
    assert child["calls"] == {"get": 1, "set": 0, "delete": 0}
    assert child["saves"] == 0
    # A reading process never imports keyring: one direct Secret Service read.
    assert child["direct"]
    assert not child["keyring_imported"]
    assert_no_token_text(idp, tmp_path, Path(os.environ["HOME"]), use_secret_service.root)


@pytest.mark.secret_service
def test_direct_reads_hand_a_locked_collection_to_keyring(
    tmp_path: Path, use_secret_service: Any, idp: Any
) -> None:
    path = str(tmp_path / "token_cache.bin")
    sign_in(idp, build_cache("kr-direct", path=path))
    again = build_cache("kr-direct", path=path)
    store = again.store
    assert isinstance(store, KeyringStore)
    assert store.direct
    assert again.backend_info.details["direct_reads"]
    assert list(again.search("RefreshToken"))
    assert store.calls["get"] == 1
    use_secret_service.lock()
    with pytest.raises(BackendUnavailableError, match="is locked"):
        build_cache("kr-direct", path=path)
