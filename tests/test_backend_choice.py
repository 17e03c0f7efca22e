"""``backend="auto"`` / ``"keyring"``: which store is chosen, why, and what happens when the
credential store is missing, insecure, locked or hanging; envelope mode (key in keyring)."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest
from keyring import errors as keyring_errors

from msal_keyring_cache import BackendUnavailableError, build_cache
from msal_keyring_cache.stores.credential import KeyringStore
from msal_keyring_cache.stores.file import EncryptedFileStore
from tests import test_keyring_store
from tests.fakes import HangingKeyring
from tests.fakes import ScopedKeyring as MemoryKeyring
from tests.helpers import PYTHON, child_env
from tests.test_keyring_store import assert_no_token_text, sign_in

memory_keyring = test_keyring_store.memory_keyring  # the fixture, shared

HERE = "tests.test_backend_choice"
MEMORY = "tests.fakes.ScopedKeyring"


class LowPriorityKeyring(MemoryKeyring):
    """A working backend keyring itself does not recommend (priority 0.5 inside its test)."""


class PlaintextKeyring(MemoryKeyring):
    """Stands in for keyrings.alt's PlaintextKeyring: secrets in a plain file."""


class LockedKeyring(MemoryKeyring):
    """GNOME Keyring when the login collection is locked: KeyringLocked at once."""

    def get_password(self, service: str, username: str) -> Optional[str]:
        raise keyring_errors.KeyringLocked("Failed to unlock the collection!")


def use(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import keyring.core

    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", name)
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)


@pytest.fixture
def cache_args(tmp_path: Path, key: str) -> dict[str, Any]:
    return {"app_name": "choice-test", "path": str(tmp_path / "c" / "cache.bin"), "key": key}


def test_auto_uses_a_secure_backend_and_says_why_once(
    monkeypatch: pytest.MonkeyPatch,
    memory_keyring: type[MemoryKeyring],
    cache_args: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    use(monkeypatch, MEMORY)
    with caplog.at_level(logging.INFO, "msal_keyring_cache"):
        first = build_cache(**cache_args)
        build_cache(**cache_args)
    info = first.backend_info
    assert info.backend == "keyring"
    assert isinstance(first.store, KeyringStore)
    assert "PYTHON_KEYRING_BACKEND" in info.reason
    assert info.details["keyring_backend"] == MEMORY
    assert info.details["service"] == "choice-test"
    # The lock belongs to the credential-store entry, not to the app or its file path.
    assert not info.details["lock_file"].startswith(str(Path(cache_args["path"]).parent))
    assert Path(info.details["lock_file"]).name.startswith("keyring-")
    chosen = [r for r in caplog.records if "Token cache backend" in r.getMessage()]
    assert len(chosen) == 1
    assert chosen[0].levelno == logging.INFO
    assert MemoryKeyring.calls["set"] == 0  # the probe only reads


@pytest.mark.parametrize(
    ("backend", "words"),
    [
        ("keyring.backends.fail.Keyring", "no usable credential store"),
        ("keyring.backends.null.Keyring", "no usable credential store"),
        (f"{HERE}.LowPriorityKeyring", "priority 0.5 < 1"),
        (f"{HERE}.PlaintextKeyring", "unencrypted"),
    ],
)
def test_auto_refuses_fail_null_and_insecure_backends(
    monkeypatch: pytest.MonkeyPatch,
    memory_keyring: type[MemoryKeyring],
    cache_args: dict[str, Any],
    backend: str,
    words: str,
) -> None:
    use(monkeypatch, backend)
    monkeypatch.setattr(LowPriorityKeyring, "test_priority", 0.5)
    cache = build_cache(**cache_args)
    assert cache.backend_info.backend == "file"
    assert isinstance(cache.store, EncryptedFileStore)
    assert words in cache.backend_info.reason
    assert MemoryKeyring.calls == {"get": 0, "set": 0, "delete": 0}
    with pytest.raises(BackendUnavailableError, match="backend=keyring was configured") as caught:
        build_cache(**cache_args, backend="keyring")
    assert words in str(caught.value)
    assert "MSAL_KEYRING_CACHE_BACKEND=file" in str(caught.value)


def test_backend_keyring_forces_the_credential_store(
    monkeypatch: pytest.MonkeyPatch, memory_keyring: type[MemoryKeyring], cache_args: dict[str, Any]
) -> None:
    use(monkeypatch, MEMORY)
    cache = build_cache(**cache_args, backend="keyring")
    assert cache.backend_info.backend == "keyring"
    assert "backend=keyring was configured" in cache.backend_info.reason


def test_a_locked_store_is_an_error_not_a_fresh_empty_file_cache(
    monkeypatch: pytest.MonkeyPatch, memory_keyring: type[MemoryKeyring], cache_args: dict[str, Any]
) -> None:
    use(monkeypatch, f"{HERE}.LockedKeyring")
    with pytest.raises(BackendUnavailableError, match="is locked") as caught:
        build_cache(**cache_args, env_prefix="MYTOOL_CACHE")
    message = str(caught.value)
    assert "MYTOOL_CACHE_KEYRING_FALLBACK=1" in message
    assert "MYTOOL_CACHE_BACKEND=file" in message
    assert not Path(cache_args["path"]).exists()
    # The user opted in: fall back to the file, and say so.
    cache = build_cache(**cache_args, keyring_fallback=True)
    assert cache.backend_info.backend == "file"
    assert "keyring_fallback" in cache.backend_info.reason
    with pytest.raises(BackendUnavailableError, match="is locked"):
        build_cache(**cache_args, backend="keyring", keyring_fallback=True)


def test_a_hanging_store_is_abandoned_after_the_keyring_timeout(
    monkeypatch: pytest.MonkeyPatch, memory_keyring: type[MemoryKeyring], cache_args: dict[str, Any]
) -> None:
    use(monkeypatch, "tests.fakes.HangingKeyring")
    monkeypatch.setenv("MSAL_KEYRING_CACHE_KEYRING_TIMEOUT", "0.2")
    with pytest.raises(BackendUnavailableError, match=r"did not answer .* within 0.2 s"):
        build_cache(**cache_args)
    cache = build_cache(**cache_args, keyring_fallback=True)
    assert cache.backend_info.backend == "file"
    HangingKeyring.release.set()


def test_an_unloadable_configured_backend_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, cache_args: dict[str, Any]
) -> None:
    use(monkeypatch, "no.such.module.Keyring")
    with pytest.raises(BackendUnavailableError, match="PYTHON_KEYRING_BACKEND"):
        build_cache(**cache_args)


def test_envelope_mode_keeps_only_the_key_in_the_credential_store(
    monkeypatch: pytest.MonkeyPatch,
    memory_keyring: type[MemoryKeyring],
    tmp_path: Path,
    idp: Any,
) -> None:
    use(monkeypatch, MEMORY)
    args = {"app_name": "envelope", "path": str(tmp_path / "env.bin"), "backend": "file"}
    cache = build_cache(**args, key_in_keyring=True)
    assert cache.backend_info.details["protection"] == "key in the OS credential store"
    assert cache.backend_info.details["key_source"].startswith("the key in the OS credential")
    sign_in(idp, cache)
    assert list(MemoryKeyring.entries) == [("envelope", "token-cache.key")]
    key = MemoryKeyring.entries[("envelope", "token-cache.key")]
    assert len(key) == 44
    # Another cache (another process, say) finds the same key: no new one is made.
    again = build_cache(**args, key_in_keyring=True)
    assert list(again.search("RefreshToken"))
    assert MemoryKeyring.entries[("envelope", "token-cache.key")] == key
    assert_no_token_text(idp, tmp_path)


def test_envelope_mode_with_no_credential_store_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use(monkeypatch, "keyring.backends.fail.Keyring")
    with pytest.raises(BackendUnavailableError, match="KEY_IN_KEYRING is set"):
        build_cache("envelope", path=str(tmp_path / "e.bin"), key_in_keyring=True)


# -- real Secret Service --------------------------------------------------------------------


@pytest.mark.secret_service
def test_auto_keeps_the_cache_in_the_real_secret_service(
    use_secret_service: Any, tmp_path: Path, idp: Any
) -> None:
    cache = build_cache("ss-auto", path=str(tmp_path / "d" / "token_cache.bin"))
    assert cache.backend_info.backend == "keyring"
    assert cache.backend_info.details["keyring_backend"] == "keyring.backends.SecretService.Keyring"
    sign_in(idp, cache)
    entries = [a for a, _ in use_secret_service.items() if a.get("service") == "ss-auto"]
    assert [a["username"] for a in entries] == ["token-cache"]  # one entry, no chunks
    assert not (tmp_path / "d" / "token_cache.bin").exists()
    assert_no_token_text(idp, tmp_path, use_secret_service.root)


@pytest.mark.secret_service
def test_a_locked_secret_service_collection_is_a_fast_clear_error(
    use_secret_service: Any, tmp_path: Path
) -> None:
    use_secret_service.lock()
    with pytest.raises(BackendUnavailableError, match="is locked") as caught:
        build_cache("ss-locked", path=str(tmp_path / "token_cache.bin"), keyring_timeout=20)
    assert "KEYRING_FALLBACK=1" in str(caught.value)
    assert not (tmp_path / "token_cache.bin").exists()


@pytest.mark.secret_service
def test_envelope_mode_on_the_real_secret_service(
    use_secret_service: Any, tmp_path: Path, idp: Any
) -> None:
    path = tmp_path / "env" / "token_cache.bin"
    cache = build_cache("ss-envelope", path=str(path), backend="file", key_in_keyring=True)
    sign_in(idp, cache)
    assert path.exists()
    assert [a for a, _ in use_secret_service.items() if a.get("service") == "ss-envelope"]
    again = build_cache("ss-envelope", path=str(path), key_in_keyring=True, backend="file")
    assert list(again.search("RefreshToken"))
    assert_no_token_text(idp, tmp_path)


def test_no_dbus_at_all_falls_back_to_the_encrypted_file(tmp_path: Path) -> None:
    """A headless session (SSH, container, CI): keyring finds no backend → the file."""
    env = child_env(DBUS_SESSION_BUS_ADDRESS=f"unix:path={tmp_path}/no-bus")
    env.pop("PYTHON_KEYRING_BACKEND", None)
    script = (
        "import json, msal_keyring_cache as m\n"
        f"c = m.build_cache('no-dbus', path={str(tmp_path / 'c.bin')!r})\n"
        "print(json.dumps([c.backend_info.backend, c.backend_info.reason]))\n"
    )
    out = subprocess.run([PYTHON, "-c", script], env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    backend, reason = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert backend == "file"
    assert "no secure OS credential store" in reason
