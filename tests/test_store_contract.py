"""Every store against the Store contract (msal_keyring_cache.testing.StoreContract).

Two stores on one place stand for two processes; physical writes are counted from
outside: the cache file's identity and size, the stamp file, and calls into the real
keyring backend (never the store's own ``stats`` or ``calls``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import keyring.core
import pytest

from msal_keyring_cache import crypto, generate_key
from msal_keyring_cache.config import Settings
from msal_keyring_cache.factory import build_store
from msal_keyring_cache.stores.base import Store
from msal_keyring_cache.stores.credential import KeyringStore
from msal_keyring_cache.stores.file import EncryptedFileStore
from msal_keyring_cache.stores.memory import MemoryStore
from msal_keyring_cache.testing import StoreContract, WriteObserver
from msal_keyring_cache.testing.contract import cache_json
from tests.fakes import MemoryKeyring
from tests.services_secret_service import SecretService

KEY = generate_key()
PASSPHRASE = "contract passphrase 42"


class TestMemoryStore(StoreContract):
    shared = False

    def make_store(self, place: Path) -> Store:
        return MemoryStore()


class TestFileStoreWithKey(StoreContract):
    def make_store(self, place: Path) -> Store:
        return EncryptedFileStore(str(place), crypto.FernetKeys((KEY,)))

    def make_observer(self, place: Path, store: Store) -> Optional[WriteObserver]:
        return WriteObserver().file("cache file", place)

    def secrets(self) -> list[str]:
        return [KEY]


class TestFileStoreWithPassphrase(TestFileStoreWithKey):
    def make_store(self, place: Path) -> Store:
        return EncryptedFileStore(str(place), crypto.Passphrase(PASSPHRASE))

    def secrets(self) -> list[str]:
        return [PASSPHRASE]


class TestKeyringStoreInMemory(StoreContract):
    @pytest.fixture(autouse=True)
    def _keyring(self) -> Iterator[None]:
        MemoryKeyring.reset()
        yield
        MemoryKeyring.reset()

    def make_store(self, place: Path) -> Store:
        return KeyringStore(
            "contract-service", "cache", lock_path=f"{place}.lock", keyring=MemoryKeyring()
        )

    def make_observer(self, place: Path, store: Store) -> Optional[WriteObserver]:
        assert isinstance(store, KeyringStore)
        return (
            WriteObserver()
            .calls("keyring set_password", store.keyring, "set_password")
            .file("stamp file", store.stamp_path)
        )


@pytest.mark.secret_service
class TestKeyringStoreOnSecretService(StoreContract):
    """The real gnome-keyring on a private D-Bus, backend resolved as in production."""

    @pytest.fixture(autouse=True)
    def _service(self, use_secret_service: SecretService) -> None:
        self.service_name = f"contract-{uuid.uuid4().hex[:8]}"
        self.secret_service = use_secret_service

    def make_store(self, place: Path) -> Store:
        return KeyringStore(self.service_name, "cache", lock_path=f"{place}.lock")

    def make_observer(self, place: Path, store: Store) -> Optional[WriteObserver]:
        assert isinstance(store, KeyringStore)
        keyrings = Path(self.secret_service.env["XDG_DATA_HOME"]) / "keyrings"
        [on_disk] = [p for p in keyrings.glob("*.keyring") if p.stem != "user"] or [
            keyrings / "login.keyring"
        ]
        return (
            WriteObserver().file("gnome-keyring file", on_disk).file("stamp file", store.stamp_path)
        )


class TestEnvelopeStore(StoreContract):
    """The encrypted file whose key lives in the credential store (key_in_keyring)."""

    @pytest.fixture(autouse=True)
    def _keyring(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        MemoryKeyring.reset()
        monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.fakes.MemoryKeyring")
        monkeypatch.setattr(keyring.core, "_keyring_backend", None)
        yield
        MemoryKeyring.reset()

    def make_store(self, place: Path) -> Store:
        settings = Settings.resolve(
            app_name="contract", backend="file", path=str(place), key_in_keyring=True
        )
        store, _ = build_store(settings)
        return store

    def make_observer(self, place: Path, store: Store) -> Optional[WriteObserver]:
        return WriteObserver().file("cache file", place)

    def secrets(self) -> list[str]:
        return [value for (_, account), value in MemoryKeyring.entries.items() if ".key" in account]

    def test_the_key_is_made_once_and_never_rewritten(self, place: Path, store: Store) -> None:
        assert MemoryKeyring.calls["set"] == 1  # the key, made on first use
        other = self.make_store(place)
        for n in range(3):
            with store.lock():
                store.save(cache_json(alice=f"s{n}"))
        assert other.load() == cache_json(alice="s2")
        assert MemoryKeyring.calls["set"] == 1
        other.close()


def test_observer_counts_a_replacement_and_an_append(tmp_path: Path) -> None:
    # The observer itself: two different writes of one file are two writes.
    path = tmp_path / "f"
    observer = WriteObserver().file("f", path)
    path.write_bytes(b"x")
    assert observer.writes() == {"f": 1}
    assert observer.writes() == {"f": 1}
    with path.open("ab") as fh:
        fh.write(b"y")
    assert observer.writes() == {"f": 2}

    class Target:
        def write(self, value: Any) -> Any:
            return value

    target = Target()
    counter = WriteObserver().calls("w", target, "write")
    assert target.write(3) == 3
    assert counter.writes() == {"w": 1}
