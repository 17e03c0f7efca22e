"""The encrypted file: format, key sources, rotation, and every bad input a user can cause."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from msal_keyring_cache import (
    ConfigError,
    DecryptError,
    EncryptedFileStore,
    LockTimeoutError,
    PersistentTokenCache,
    build_cache,
    crypto,
    generate_key,
)
from msal_keyring_cache.testing import LoopbackIdentityProvider

APP = "msal-keyring-cache-tests"


def _sign_in(
    idp: LoopbackIdentityProvider, cache: PersistentTokenCache, user: str = "alice@example.com"
) -> dict:
    app = idp.public_app(token_cache=cache)
    result = app.acquire_token_by_username_password(user, "pw", ["User.Read"])
    assert "access_token" in result, result
    return result


def _accounts(cache: PersistentTokenCache) -> list[str]:
    return sorted(a["username"] for a in json.loads(cache.serialize()).get("Account", {}).values())


def test_round_trip_and_private_permissions(idp, cache_path: Path, key: str) -> None:
    cache = build_cache(APP, backend="file", path=str(cache_path), key=key)
    result = _sign_in(idp, cache)
    blob = cache_path.read_bytes()
    assert result["access_token"].encode() not in blob
    assert result["refresh_token"].encode() not in blob
    assert stat.S_IMODE(cache_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache_path.parent.stat().st_mode) == 0o700
    header, _ = crypto.parse_header(blob)
    assert header.fp == crypto.fingerprint(key)
    assert header.kdf == "none"
    again = build_cache(APP, backend="file", path=str(cache_path), key=key)
    assert _accounts(again) == ["alice@example.com"]


def test_wrong_key_raises_and_leaves_file_byte_identical(idp, cache_path: Path, key: str) -> None:
    _sign_in(idp, build_cache(APP, backend="file", path=str(cache_path), key=key))
    before = cache_path.read_bytes()
    other = build_cache(APP, backend="file", path=str(cache_path), key=generate_key())
    with pytest.raises(DecryptError, match="fingerprint") as info:
        other.serialize()
    assert key not in str(info.value)
    assert "configured key" in str(info.value)
    assert cache_path.read_bytes() == before
    assert not [p for p in os.listdir(cache_path.parent) if "corrupt" in p]


def test_rotation_new_key_in_front_decrypts_old_and_encrypts_with_new(
    idp, cache_path: Path, key: str
) -> None:
    _sign_in(idp, build_cache(APP, backend="file", path=str(cache_path), key=key))
    new = generate_key()
    rotated = build_cache(APP, backend="file", path=str(cache_path), key=[new, key])
    assert _accounts(rotated) == ["alice@example.com"]
    _sign_in(idp, rotated, "bob@example.com")
    header, _ = crypto.parse_header(cache_path.read_bytes())
    assert header.fp == crypto.fingerprint(new)
    only_new = build_cache(APP, backend="file", path=str(cache_path), key=new)
    assert _accounts(only_new) == ["alice@example.com", "bob@example.com"]


def test_passphrase_uses_scrypt_with_salt_and_detects_wrong_passphrase(
    idp, cache_path: Path
) -> None:
    cache = build_cache(APP, backend="file", path=str(cache_path), passphrase="correct horse")
    _sign_in(idp, cache)
    header, _ = crypto.parse_header(cache_path.read_bytes())
    assert header.kdf == "scrypt"
    assert len(header.salt) == 16
    assert header.n >= 2**14
    assert b"correct horse" not in cache_path.read_bytes()
    assert _accounts(
        build_cache(APP, backend="file", path=str(cache_path), passphrase="correct horse")
    ) == ["alice@example.com"]
    with pytest.raises(DecryptError, match="Wrong passphrase"):
        build_cache(APP, backend="file", path=str(cache_path), passphrase="wrong").serialize()
    with pytest.raises(DecryptError, match="passphrase"):
        build_cache(APP, backend="file", path=str(cache_path), key=generate_key()).serialize()


def test_key_file_must_be_private(tmp_path: Path, cache_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("# my key\n" + generate_key() + "\n")
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        build_cache(APP, backend="file", path=str(cache_path), key_file=str(key_file))
    key_file.chmod(0o600)
    cache = build_cache(APP, backend="file", path=str(cache_path), key_file=str(key_file))
    assert cache.store.describe().protection_text == "key file"
    key_file.write_text("not a key\n")
    with pytest.raises(ConfigError, match="does not hold Fernet keys"):
        build_cache(APP, backend="file", path=str(cache_path), key_file=str(key_file))
    with pytest.raises(ConfigError, match="does not exist"):
        build_cache(APP, backend="file", path=str(cache_path), key_file=str(tmp_path / "nope"))


def test_generated_key_file_warns_once_and_strict_refuses(
    idp, cache_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "msal_keyring_cache")
    cache = build_cache("generated-key-app", backend="file", path=str(cache_path))
    _sign_in(idp, cache)
    build_cache("generated-key-app", backend="file", path=str(cache_path)).serialize()
    warnings = [r for r in caplog.records if "generated key file" in r.getMessage()]
    assert len(warnings) == 1
    key_file = Path(os.environ["XDG_CONFIG_HOME"]) / "generated-key-app" / "cache.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert cache.store.describe().protection.weak
    with pytest.raises(ConfigError, match="strict") as info:
        build_cache("generated-key-app", backend="file", path=str(cache_path), strict=True)
    for stronger in ("MSAL_KEYRING_CACHE_KEY", "PASSPHRASE", "KEY_FILE", "KEY_IN_KEYRING"):
        assert stronger in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage \x00\xff",
        b'{"format":"msal-keyring-cache","version":1',
        b"{}\nxx",
        b'{"format":"msal-keyring-cache","version":99,"kdf":"none","fp":"x","gen":"y"}\ngAAAA',
    ],
    ids=["empty", "garbage", "no-newline", "not-ours", "future-version"],
)
def test_damaged_or_unknown_file_is_moved_aside_and_cache_starts_empty(
    idp, cache_path: Path, key: str, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    cache_path.parent.mkdir(mode=0o700)
    cache_path.write_bytes(content)
    caplog.set_level(logging.WARNING, "msal_keyring_cache")
    cache = build_cache(APP, backend="file", path=str(cache_path), key=key)
    assert json.loads(cache.serialize()) == {}
    aside = [p for p in cache_path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    assert any("moved aside" in r.getMessage() for r in caplog.records)
    _sign_in(idp, cache)  # the app keeps working
    assert _accounts(build_cache(APP, backend="file", path=str(cache_path), key=key))


def test_truncated_file_under_the_right_key_is_moved_aside(idp, cache_path: Path, key: str) -> None:
    _sign_in(idp, build_cache(APP, backend="file", path=str(cache_path), key=key))
    blob = cache_path.read_bytes()
    cache_path.write_bytes(blob[: len(blob) // 2])
    cache = build_cache(APP, backend="file", path=str(cache_path), key=key)
    assert json.loads(cache.serialize()) == {}
    assert [p for p in cache_path.parent.iterdir() if ".corrupt-" in p.name]


def test_symlinked_cache_path_is_refused(tmp_path: Path, key: str) -> None:
    target = tmp_path / "elsewhere.bin"
    target.write_bytes(b"")
    link = tmp_path / "cache.bin"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        build_cache(APP, backend="file", path=str(link), key=key)


def test_lock_timeout_names_the_lock_file(cache_path: Path, key: str) -> None:
    from filelock import FileLock

    cache = build_cache(APP, backend="file", path=str(cache_path), key=key, lock_timeout=0.2)
    cache_path.parent.mkdir(mode=0o700)
    holder = FileLock(str(cache_path) + ".lock")
    with holder, pytest.raises(LockTimeoutError) as info:
        cache.deserialize("{}")
    assert info.value.lock_file == str(cache_path) + ".lock"
    assert str(cache_path) + ".lock" in str(info.value)
    cache.deserialize("{}")  # released: works again


def test_bad_settings_are_config_errors(cache_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSAL_KEYRING_CACHE_BACKEND", "floppy")
    with pytest.raises(
        ConfigError, match=r"MSAL_KEYRING_CACHE_BACKEND='floppy'.*auto, keyring, file"
    ):
        build_cache(APP)
    monkeypatch.setenv("MSAL_KEYRING_CACHE_BACKEND", "file")
    monkeypatch.setenv("MSAL_KEYRING_CACHE_LOCK_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match=r"LOCK_TIMEOUT='soon'.*seconds"):
        build_cache(APP, path=str(cache_path))
    monkeypatch.delenv("MSAL_KEYRING_CACHE_LOCK_TIMEOUT")
    monkeypatch.setenv("MSAL_KEYRING_CACHE_KEY", "secret-looking-but-malformed")
    with pytest.raises(ConfigError) as info:
        build_cache(APP, path=str(cache_path))
    assert "secret-looking" not in str(info.value)  # never echo a secret
    assert "MSAL_KEYRING_CACHE_KEY" in str(info.value)
    with pytest.raises(ConfigError, match="Unknown setting"):
        build_cache(APP, colour="blue")
    with pytest.raises(ConfigError, match="only one of"):
        build_cache(APP, key=generate_key(), passphrase="x")


def test_reprs_hold_no_secrets(cache_path: Path, key: str) -> None:
    cache = build_cache(APP, backend="file", path=str(cache_path), key=key)
    assert isinstance(cache.store, EncryptedFileStore)
    text = repr(cache) + repr(cache.store.key_source) + str(cache.backend_info)
    assert key not in text
    assert "pw-123" not in repr(crypto.Passphrase("pw-123"))
    from msal_keyring_cache.config import Settings

    assert key not in repr(Settings.resolve(key=key))


def _cc(idp, cache: PersistentTokenCache, scope: str) -> None:
    result = idp.confidential_app(token_cache=cache).acquire_token_for_client([scope])
    assert "access_token" in result


def _targets(cache: PersistentTokenCache) -> set[str]:
    return {e["target"] for e in json.loads(cache.serialize()).get("AccessToken", {}).values()}


def test_writes_append_records_and_compaction_keeps_everything(
    idp, cache_path: Path, key: str
) -> None:
    from msal_keyring_cache.stores.file import MAX_RECORDS

    writer = build_cache(APP, backend="file", path=str(cache_path), key=key)
    reader = build_cache(APP, backend="file", path=str(cache_path), key=key)
    for i in range(MAX_RECORDS + 10):
        _cc(idp, writer, f"api://t/j{i}/.default")
        if i % 7 == 0:
            assert f"api://t/j{i}/.default" in _targets(reader)  # incremental catch-up
    stats = writer.store.stats
    assert stats.saves == MAX_RECORDS + 10
    assert stats.appends >= MAX_RECORDS - 1
    assert stats.saves - stats.appends >= 2  # the first write and at least one compaction
    expected = {f"api://t/j{i}/.default" for i in range(MAX_RECORDS + 10)}
    assert _targets(reader) == expected
    assert _targets(build_cache(APP, backend="file", path=str(cache_path), key=key)) == expected
    assert reader.store.stats.loads <= 3  # mostly journal records, not full reloads


def test_dead_tail_of_a_killed_writer_is_ignored_then_cut(idp, cache_path: Path, key: str) -> None:
    writer = build_cache(APP, backend="file", path=str(cache_path), key=key)
    _cc(idp, writer, "api://t/a/.default")
    _cc(idp, writer, "api://t/b/.default")
    with open(cache_path, "ab") as fh:
        fh.write(b"gAAAAABpartial-record-without-newline")
    reader = build_cache(APP, backend="file", path=str(cache_path), key=key)
    assert _targets(reader) == {"api://t/a/.default", "api://t/b/.default"}
    _cc(idp, reader, "api://t/c/.default")
    assert b"partial-record" not in cache_path.read_bytes()
    fresh = build_cache(APP, backend="file", path=str(cache_path), key=key)
    assert _targets(fresh) == {"api://t/a/.default", "api://t/b/.default", "api://t/c/.default"}


def test_damaged_journal_record_keeps_what_came_before_and_sets_file_aside(
    idp, cache_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = build_cache(APP, backend="file", path=str(cache_path), key=key)
    for name in "abc":
        _cc(idp, writer, f"api://t/{name}/.default")
    lines = crypto.file_records(cache_path.read_bytes())
    lines[2] = lines[2][:-10] + b"AAAAAAAAAA"  # header, snapshot (a), record b, record c
    cache_path.write_bytes(b"\n".join(lines) + b"\n")
    caplog.set_level(logging.WARNING, "msal_keyring_cache")
    reader = build_cache(APP, backend="file", path=str(cache_path), key=key)
    assert _targets(reader) == {"api://t/a/.default"}
    assert any("written before the damage" in r.getMessage() for r in caplog.records)
    assert [p for p in cache_path.parent.iterdir() if ".corrupt-" in p.name]
