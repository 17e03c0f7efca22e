"""The stamp file beside a credential-store cache: a hint, never a single point of failure.

A damaged or hostile stamp counts as no stamp (the cache in the credential store still
loads, the next write replaces the stamp); a limit learnt from a "too large" refusal is
remembered in it, so the next process chunks at once instead of being refused again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from msal_keyring_cache.stores.credential import KeyringStore
from tests.fakes import CredWriteError, ScopedKeyring, WindowsLikeKeyring
from tests.test_keyring_store import memory_keyring  # noqa: F401 - the fixture, shared

DATA = json.dumps({"RefreshToken": {"k": {"secret": "stamp-secret-91c2"}}}).encode()
BIG = json.dumps({"RefreshToken": {f"k{n}": {"secret": "s" * 40} for n in range(80)}}).encode()
FORMAT = "msal-keyring-cache-stamp"


def make(tmp_path: Path, backend: Any) -> KeyringStore:
    return KeyringStore("stamp", "cache", lock_path=str(tmp_path / "s.lock"), keyring=backend)


def save(store: KeyringStore, data: bytes) -> None:
    with store.lock():
        store.save(data)


@pytest.mark.parametrize(
    "stamp",
    [
        b"[]",
        b'"a string"',
        b"{" * 5000,
        json.dumps({"format": FORMAT, "backend": 5}).encode(),
        json.dumps({"format": FORMAT, "backend": "x" * 500}).encode(),
        json.dumps({"format": FORMAT, "gens": [5, None, "../../etc"]}).encode(),
        json.dumps({"format": FORMAT, "aside": [7, {"a": 1}, "x" * 500]}).encode(),
        json.dumps({"format": FORMAT, "limit": True, "sha256": 3}).encode(),
        json.dumps({"format": FORMAT, "limit": "1280", "sha256": "not hex"}).encode(),
    ],
)
def test_a_damaged_or_hostile_stamp_is_no_stamp_and_nothing_is_lost(
    tmp_path: Path,
    memory_keyring: type[ScopedKeyring],  # noqa: F811
    stamp: bytes,
) -> None:
    writer = make(tmp_path, ScopedKeyring())
    save(writer, DATA)
    Path(writer.stamp_path).write_bytes(stamp)
    reader = make(tmp_path, ScopedKeyring())
    assert reader.load() == DATA
    save(reader, BIG)
    assert make(tmp_path, ScopedKeyring()).load() == BIG
    reader.clear()
    assert ScopedKeyring.entries == {}


class CountingWindows(WindowsLikeKeyring):
    """Windows' size limit, counting the writes it refuses."""

    refused: ClassVar[list[int]] = []

    def set_password(self, service: str, username: str, password: str) -> None:
        try:
            super().set_password(service, username, password)
        except CredWriteError:
            self.refused.append(len(password))
            raise


def test_a_learnt_limit_is_remembered_so_the_next_process_is_not_refused_again(
    tmp_path: Path,
    memory_keyring: type[ScopedKeyring],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(CountingWindows, "refused", [])
    first = make(tmp_path, CountingWindows())
    save(first, BIG)
    assert len(CountingWindows.refused) == 1  # learnt from one refusal
    second = make(tmp_path, CountingWindows())
    save(second, BIG + b" ")
    assert len(CountingWindows.refused) == 1  # the stamp told the next process
    assert make(tmp_path, CountingWindows()).load() == BIG + b" "


class SmallLimit(CountingWindows):
    """A credential store that takes at most 600 characters per entry."""

    def set_password(self, service: str, username: str, password: str) -> None:
        if len(password) > 600:
            self.refused.append(len(password))
            raise CredWriteError(1783, "CredWrite", "The stub received bad data.")
        ScopedKeyring.set_password(self, service, username, password)


@pytest.mark.parametrize("size", [900, 5000])
def test_a_store_smaller_than_windows_is_learnt_in_a_few_refusals(
    tmp_path: Path,
    memory_keyring: type[ScopedKeyring],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    monkeypatch.setattr(CountingWindows, "refused", [])
    data = json.dumps({"RefreshToken": {"k": {"secret": "s" * size}}}).encode()
    save(make(tmp_path, SmallLimit()), data)
    assert make(tmp_path, SmallLimit()).load() == data
    # Under Windows' size: half the refused value at once; over it: Windows', then halves.
    assert len(CountingWindows.refused) == (1 if size < 1280 else 3)
