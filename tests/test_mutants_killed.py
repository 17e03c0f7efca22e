"""Tests written for mutants that survived `nox -s mutants`: each pins a behaviour no test
checked (merge's rules, deserialize's write, clear, a damaged file's name and the race of
setting it aside, salvage of later journal records, key-file parsing, passphrase headers)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import MemoryStore, PersistentTokenCache, crypto, generate_key
from msal_keyring_cache.stores.file import EncryptedFileStore

KEY = generate_key()


def _rt(secret: str, modified: int) -> dict[str, Any]:
    return {"credential_type": "RefreshToken", "secret": secret,
            "last_modification_time": str(modified)}  # fmt: skip


# -- PersistentTokenCache.merge / deserialize / clear -------------------------------------


def test_merge_keeps_the_newer_entry_of_each_key_and_counts_what_it_took() -> None:
    store = MemoryStore()
    cache = PersistentTokenCache(store)
    cache.deserialize(json.dumps({"RefreshToken": {
        "older-here": _rt("mine-old", 100), "newer-here": _rt("mine-new", 300),
        "same-age": _rt("mine-same", 200), "equal": _rt("equal", 5),
    }}))  # fmt: skip
    incoming = {
        "Weird": ["not", "a", "table"],  # skipped, and the rest still merged
        "RefreshToken": {
            "older-here": _rt("theirs-new", 200),  # newer than ours: taken
            "newer-here": _rt("theirs-old", 100),  # older than ours: ignored
            "same-age": _rt("theirs-same", 200),  # same age, different: taken
            "equal": _rt("equal", 5),  # identical: not counted
            "only-theirs": _rt("theirs-only", 1),  # new: taken
        },
        "AccessToken": {"at": {"credential_type": "AccessToken", "secret": "a", "expires_on": "9"}},
    }
    assert cache.merge(json.dumps(incoming)) == 4
    merged = json.loads(cache.serialize())
    secrets = {k: v["secret"] for k, v in merged["RefreshToken"].items()}
    assert secrets == {
        "older-here": "theirs-new",
        "newer-here": "mine-new",
        "same-age": "theirs-same",
        "equal": "equal",
        "only-theirs": "theirs-only",
    }
    assert merged["AccessToken"] == incoming["AccessToken"]
    assert "Weird" not in merged  # not a table of entries: never merged
    with pytest.raises(ValueError, match="Not an msal token cache"):
        cache.merge("[1, 2]")
    assert cache.merge("") == 0


def test_deserialize_replaces_the_cache_and_stores_it(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    cache = PersistentTokenCache(EncryptedFileStore(str(path), crypto.FernetKeys((KEY,))))
    cache.deserialize(json.dumps({"RefreshToken": {"a": _rt("one", 1)}}))
    other = PersistentTokenCache(EncryptedFileStore(str(path), crypto.FernetKeys((KEY,))))
    assert json.loads(other.serialize()) == {"RefreshToken": {"a": _rt("one", 1)}}
    cache.deserialize(None)  # msal's "nothing": the cache is emptied, and that is stored
    assert json.loads(cache.serialize()) == {}
    assert json.loads(other.serialize()) == {}


def test_clear_leaves_a_usable_empty_cache() -> None:
    cache = PersistentTokenCache(MemoryStore())
    cache.deserialize(json.dumps({"RefreshToken": {"a": _rt("one", 1)}}))
    cache.clear()
    assert json.loads(cache.serialize()) == {}
    assert list(cache.search("RefreshToken")) == []
    cache.deserialize(json.dumps({"RefreshToken": {"b": _rt("two", 2)}}))
    assert [e["secret"] for e in cache.search("RefreshToken")] == ["two"]


# -- the encrypted file: damage, set-aside, salvage -----------------------------------------


def _store(path: Path) -> EncryptedFileStore:
    return EncryptedFileStore(str(path), crypto.FernetKeys((KEY,)))


def test_a_damaged_file_is_set_aside_under_a_dated_unique_name(tmp_path: Path) -> None:
    path = tmp_path / "token_cache.bin"
    path.write_bytes(b"garbage\n")
    assert _store(path).load() is None
    [aside] = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert re.fullmatch(r"token_cache\.bin\.corrupt-\d{8}T\d{6}-[0-9a-f]{6}", aside), aside
    assert (tmp_path / aside).read_bytes() == b"garbage\n"


def test_a_good_file_written_just_before_the_set_aside_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader finds the file damaged; before it sets the file aside (under the lock), a
    # writer replaces it with a good one. The good file must stay where it is, and be read.
    path = tmp_path / "token_cache.bin"
    path.write_bytes(b"garbage\n")
    reader, writer = _store(path), _store(path)
    real = crypto.open_file
    calls = {"n": 0}

    def parse_then_race(blob: bytes, source: crypto.KeySource) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # the reader's parse of the damaged file
            with writer.lock():
                writer.save(b'{"good":1}')
        return real(blob, source)

    monkeypatch.setattr("msal_keyring_cache.stores.file.crypto.open_file", parse_then_race)
    assert reader.load() == b'{"good":1}'
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    monkeypatch.undo()
    assert _store(path).load() == b'{"good":1}'


def test_damage_in_a_later_journal_record_keeps_every_record_before_it(tmp_path: Path) -> None:
    path = tmp_path / "token_cache.bin"
    writer = _store(path)
    with writer.lock():
        writer.save(b'{"RefreshToken":{"a":{"secret":"a"}}}')
        for name in "bcd":
            delta = json.dumps({"RefreshToken": {name: {"secret": name}}}).encode()
            writer.append(delta, lambda: b"unused")
    lines = crypto.file_records(path.read_bytes())  # header, snapshot, b, c, d
    lines[4] = lines[4][:-10] + b"AAAAAAAAAA"  # record d damaged
    path.write_bytes(b"\n".join(lines) + b"\n")
    data = _store(path).load()
    assert data is not None
    assert sorted(json.loads(data)["RefreshToken"]) == ["a", "b", "c"]
    assert [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert sorted(json.loads(_store(path).load() or b"{}")["RefreshToken"]) == ["a", "b", "c"]


# -- keys ------------------------------------------------------------------------------------


def test_key_files_allow_indented_and_non_ascii_comments(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(f"# keys – rotated 2026\n   # indented comment\n{KEY}\n\n".encode())
    os.chmod(path, 0o600)
    assert crypto.read_key_file(str(path)) == (KEY,)


def test_a_passphrase_keeps_its_salt_and_says_where_it_came_from() -> None:
    source = crypto.Passphrase("pw")
    assert repr(source) == "Passphrase(***)"
    first = crypto.parse_header(crypto.encrypt(b"{}", source))[0]
    assert first.kdf == "scrypt"
    assert first.source == "passphrase"
    assert re.fullmatch(r"[0-9a-f]{32}", first.gen)  # 128 random bits
    again = crypto.parse_header(crypto.encrypt(b"{}", source, first))[0]
    assert (again.salt, again.n, again.r, again.p) == (first.salt, first.n, first.r, first.p)
    assert again.gen != first.gen  # a new generation per write
    keyed = crypto.parse_header(crypto.encrypt(b"{}", source, crypto.Header("fp", "g")))[0]
    assert keyed.salt != first.salt  # a previous non-scrypt header: a new salt
