"""KeyringStore: one write per save, chunking for size-limited backends, change detection,
error translation and bounded calls — against in-process keyring backends, and against a
real Secret Service (gnome-keyring on a private D-Bus)."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from keyring import errors as keyring_errors

from msal_keyring_cache import (
    BackendUnavailableError,
    PersistentTokenCache,
    StoreError,
    build_cache,
)
from msal_keyring_cache.stores.credential import WINDOWS_MAX_VALUE_LENGTH, KeyringStore
from tests.fakes import HangingKeyring, RaisingKeyring, ScopedKeyring, WindowsLikeKeyring
from tests.helpers import PYTHON, child_env

SCOPES = ["User.Read"]


@pytest.fixture
def memory_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[ScopedKeyring]]:
    """Make the in-process backends viable and empty for this test."""
    monkeypatch.setattr(ScopedKeyring, "test_priority", 5.0)
    monkeypatch.setattr(ScopedKeyring, "entries", {})
    monkeypatch.setattr(ScopedKeyring, "calls", {"get": 0, "set": 0, "delete": 0})
    HangingKeyring.release.clear()
    yield ScopedKeyring
    HangingKeyring.release.set()
    # keyring keeps the backends it found for the whole process (jaraco's `once`): a
    # discovery made while these were viable must not outlive the test, or a later test
    # that asks for keyring's own choice meets a test backend that refuses to answer.
    import keyring.backend

    vars(keyring.backend.get_all_keyring).pop("saved_result", None)


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
    tmp_path: Path, memory_keyring: type[ScopedKeyring], idp: Any
) -> None:
    store = make_store(tmp_path, ScopedKeyring())
    cache = PersistentTokenCache(store)
    idp.reset()
    app = sign_in(idp, cache)
    assert store.stats.saves == 1
    assert ScopedKeyring.calls["set"] == 1
    assert len(ScopedKeyring.entries) == 1  # unchunked: one entry holds the whole cache
    gets = ScopedKeyring.calls["get"]
    account = app.get_accounts()[0]
    for _ in range(20):
        assert "access_token" in app.acquire_token_silent(SCOPES, account=account)
    # Warm silent hits: no credential-store round trip, no write, no token request.
    assert ScopedKeyring.calls["get"] == gets
    assert ScopedKeyring.calls["set"] == 1
    assert store.stats.saves == 1
    assert idp.token_requests == 1


def test_another_instance_sees_a_write_through_the_stamp_file(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
) -> None:
    writer, reader = make_store(tmp_path, ScopedKeyring()), make_store(tmp_path, ScopedKeyring())
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
    assert json.loads(stamp.read_text())["backend"].endswith("ScopedKeyring")
    writer.clear()
    assert reader.changed()
    assert reader.load() is None


# -- chunking -----------------------------------------------------------------------------


def big_cache(version: int, size: int = 110_000) -> bytes:
    tag = f"{version:06d}"
    return (tag * (size // len(tag))).encode()


def test_a_100kb_cache_round_trips_through_a_windows_sized_backend(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
) -> None:
    store = make_store(tmp_path, WindowsLikeKeyring(), max_value_length=WINDOWS_MAX_VALUE_LENGTH)
    data = big_cache(1)
    with store.lock():
        store.save(data)
    chunks = -(-len(data) // WINDOWS_MAX_VALUE_LENGTH)
    assert chunks == 86
    assert ScopedKeyring.calls["set"] == chunks + 1  # the chunks, then the manifest
    assert all(len(v) <= WINDOWS_MAX_VALUE_LENGTH for v in ScopedKeyring.entries.values())
    other = make_store(tmp_path, WindowsLikeKeyring(), max_value_length=WINDOWS_MAX_VALUE_LENGTH)
    assert other.load() == data
    # A new generation replaces the old one: the old chunks are deleted.
    with store.lock():
        store.save(big_cache(2, 50_000))
    assert len(ScopedKeyring.entries) == -(-50_000 // WINDOWS_MAX_VALUE_LENGTH) + 1
    assert other.changed()
    assert other.load() == big_cache(2, 50_000)
    # Small again: back to one plain entry, every chunk gone.
    with store.lock():
        store.save(b"{}")
    assert ScopedKeyring.entries == {("test-service", "token-cache"): "{}"}


def test_the_windows_backend_is_chunked_without_configuration(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
) -> None:
    class WinVaultKeyring(WindowsLikeKeyring):
        pass

    WinVaultKeyring.__module__ = "keyring.backends.Windows"
    WinVaultKeyring.__qualname__ = "WinVaultKeyring"
    store = make_store(tmp_path, WinVaultKeyring())
    with store.lock():
        store.save(big_cache(3))
    assert store.load() == big_cache(3)
    assert "1280" in store.describe().extra["chunking"]


def test_a_store_that_refuses_long_values_is_chunked_with_no_configuration(
    tmp_path: Path, memory_keyring: type[ScopedKeyring], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16: CredWrite's 1783 switches to chunks by itself, remembered, said once at INFO."""
    store = make_store(tmp_path, WindowsLikeKeyring())  # no max_value_length, unknown backend
    with caplog.at_level(logging.INFO, "msal_keyring_cache"), store.lock():
        store.save(big_cache(1))
        store.save(big_cache(2))
    said = [r for r in caplog.records if "too large" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.INFO
    assert "000001" not in caplog.text
    assert all(len(v) <= WINDOWS_MAX_VALUE_LENGTH for v in ScopedKeyring.entries.values())
    assert json.loads(Path(store.stamp_path).read_text())["limit"] == WINDOWS_MAX_VALUE_LENGTH
    # Another process (a new store) learns the limit from the stamp: no refused write.
    other = make_store(tmp_path, WindowsLikeKeyring())
    assert other.load() == big_cache(2)
    sets = ScopedKeyring.calls["set"]
    with other.lock():
        other.save(big_cache(3))
    assert ScopedKeyring.calls["set"] - sets == -(-len(big_cache(3)) // 1280) + 1
    assert make_store(tmp_path, WindowsLikeKeyring()).load() == big_cache(3)


def test_a_refusal_that_is_not_about_size_is_a_clear_store_error(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
) -> None:
    store = make_store(tmp_path, _raising(keyring_errors.PasswordSetError("cannot")))
    with pytest.raises(StoreError, match="refused to write") as caught, store.lock():
        store.save(big_cache(1))
    assert "000001" not in str(caught.value)
    assert "MAX_VALUE_LENGTH" in str(caught.value)


def test_damaged_chunks_are_kept_aside_and_the_cache_starts_empty(
    tmp_path: Path, memory_keyring: type[ScopedKeyring], caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path, WindowsLikeKeyring(), max_value_length=WINDOWS_MAX_VALUE_LENGTH)
    with store.lock():
        store.save(big_cache(1))
    manifest = ScopedKeyring.entries[("test-service", "token-cache")]
    chunk = next(k for k in ScopedKeyring.entries if k[0].endswith(".3"))
    ScopedKeyring.entries[chunk] = "tampered"
    other = make_store(tmp_path, WindowsLikeKeyring(), max_value_length=WINDOWS_MAX_VALUE_LENGTH)
    with caplog.at_level(logging.WARNING, "msal_keyring_cache"):
        assert other.load() is None
    assert "damaged" in caplog.text
    aside = [k for k in ScopedKeyring.entries if ".corrupt-" in k[1]]
    assert len(aside) == 1
    assert ScopedKeyring.entries[aside[0]] == manifest  # it still names the kept chunks
    assert chunk in ScopedKeyring.entries
    # clear removes all of it: entry, set-aside copy and the damaged generation's chunks.
    other.clear()
    assert ScopedKeyring.entries == {}


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
        (OSError(5, "Access is denied"), r"errno 5\] Input/output error"),
        (ss.SecretServiceNotAvailableException("no service"), "could not be used"),
        (ss.LockedException("locked item"), "is locked"),
        (ss.PromptDismissedException("dismissed"), "is locked"),
    ]


@pytest.mark.parametrize(("exc", "words"), _third_party_errors(), ids=lambda x: type(x).__name__)
def test_keyring_and_dbus_errors_arrive_as_backend_unavailable(
    tmp_path: Path, memory_keyring: type[ScopedKeyring], exc: BaseException, words: str
) -> None:
    store = make_store(tmp_path, _raising(exc))
    with pytest.raises(BackendUnavailableError, match=words) as caught:
        store.load()
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_write_error_is_a_store_error_that_does_not_quote_the_value(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
) -> None:
    secret = '{"RefreshToken": "rt.SECRET-VALUE"}'
    for exc in (
        keyring_errors.PasswordSetError("cannot"),
        ValueError(secret),
        RuntimeError(secret),
        OSError(5, secret),
        AttributeError(secret),
        ImportError(secret),
    ):
        store = make_store(tmp_path, _raising(exc))
        with pytest.raises(StoreError) as caught, store.lock():
            store.save(secret.encode())
        assert "SECRET-VALUE" not in str(caught.value)


def test_a_hanging_backend_is_abandoned_after_the_keyring_timeout(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
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
