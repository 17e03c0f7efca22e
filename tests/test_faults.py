"""Fault injection on the file store: full and read-only disks, hostile paths, tampering.

Real msal apps against the loopback identity provider, a real tmpfs mounted by the test
(root), real forked processes. Under CI=true a test that cannot mount fails.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import (
    CacheError,
    ConfigError,
    CorruptCacheError,
    DecryptError,
    EncryptedFileStore,
    PersistentTokenCache,
    StoreError,
    crypto,
    generate_key,
)
from msal_keyring_cache.files import ensure_private_dir
from msal_keyring_cache.stores.base import validate_cache
from msal_keyring_cache.testing import LoopbackIdentityProvider
from msal_keyring_cache.watch import Generation
from tests.helpers import PYTHON, mounted_tmpfs

DATA = Path(__file__).parent / "data"


def _cache(path: Path, key: str, **kwargs: Any) -> PersistentTokenCache:
    return PersistentTokenCache(EncryptedFileStore(str(path), crypto.FernetKeys((key,)), **kwargs))


def _sign_in(idp: LoopbackIdentityProvider, cache: PersistentTokenCache, user: str) -> Any:
    app = idp.public_app(token_cache=cache)
    result = app.acquire_token_by_username_password(user, "pw", ["User.Read"])
    assert "access_token" in result, result.get("error")
    return app


def _users(cache: PersistentTokenCache) -> list[str]:
    return sorted(a["username"] for a in json.loads(cache.serialize()).get("Account", {}).values())


def _refresh(app: Any, user: str) -> dict[str, Any]:
    (account,) = [a for a in app.get_accounts() if a["username"] == user]
    return app.acquire_token_silent(["User.Read"], account, force_refresh=True)  # type: ignore


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test (root only)."""
    with mounted_tmpfs(tmp_path / "mnt", "1m") as mount:
        yield mount


def _fill(directory: Path) -> Path:
    """Fill the file system holding ``directory``; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    for n in range(100):  # metadata and partial blocks too
        with contextlib.suppress(OSError):
            fd = os.open(directory / f"pad{n}", os.O_WRONLY | os.O_CREAT, 0o600)
            with contextlib.suppress(OSError):
                os.write(fd, b"\0" * 512)
            os.close(fd)
    with pytest.raises(OSError, match="space") as exc:
        (directory / "probe").write_bytes(b"\0" * 8192)
    assert exc.value.errno == errno.ENOSPC
    return filler


def _remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


# -- a failed write stays pending ------------------------------------------------------


def test_full_disk_write_raises_stays_pending_and_rotated_refresh_token_lands_later(
    idp: LoopbackIdentityProvider, tmpfs: Path, key: str
) -> None:
    path = tmpfs / "c" / "cache.bin"
    cache = _cache(path, key)
    app = _sign_in(idp, cache, "alice@example.com")
    filler = _fill(tmpfs)
    # The IdP rotates alice's refresh token (the old one is dead), the write fails.
    with pytest.raises(CacheError, match="free disk space"):
        _refresh(app, "alice@example.com")
    for leftover in tmpfs.glob("pad*"):
        leftover.unlink()
    filler.unlink()
    # A later write about something else (bob) carries alice's pending change too.
    _sign_in(idp, cache, "bob@example.com")
    fresh = _cache(path, key)
    assert _users(fresh) == ["alice@example.com", "bob@example.com"]
    again = idp.public_app(token_cache=fresh)
    assert "access_token" in _refresh(again, "alice@example.com")  # the rotated RT works
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_full_disk_compaction_fails_cleanly_and_retries(
    idp: LoopbackIdentityProvider, tmpfs: Path, key: str
) -> None:
    path = tmpfs / "c" / "cache.bin"
    cache = _cache(path, key)
    app = _sign_in(idp, cache, "alice@example.com")
    cache.store._records = 10**6  # type: ignore[attr-defined]  # next write compacts
    filler = _fill(tmpfs)
    before = path.read_bytes()
    with pytest.raises(StoreError):
        _refresh(app, "alice@example.com")
    assert path.read_bytes() == before  # the old file stays whole
    assert not list(path.parent.glob(".*.tmp"))  # no temp file left behind
    filler.unlink()
    for leftover in tmpfs.glob("pad*"):
        leftover.unlink()
    _sign_in(idp, cache, "bob@example.com")
    assert "access_token" in _refresh(
        idp.public_app(token_cache=_cache(path, key)), "alice@example.com"
    )


def test_read_only_file_system_reads_work_writes_raise_and_stay_pending(
    idp: LoopbackIdentityProvider, tmpfs: Path, key: str
) -> None:
    path = tmpfs / "c" / "cache.bin"
    writer = _cache(path, key)
    app = _sign_in(idp, writer, "alice@example.com")
    Path(str(path) + ".lock").unlink()  # a reader must not need it
    _remount(tmpfs, "ro")
    try:
        reader = _cache(path, key)
        assert _users(reader) == ["alice@example.com"]
        (account,) = idp.public_app(token_cache=reader).get_accounts()
        hit = idp.public_app(token_cache=reader).acquire_token_silent(["User.Read"], account)
        assert hit
        assert "access_token" in hit
        with pytest.raises(StoreError, match="lock"):
            _refresh(app, "alice@example.com")  # the IdP rotated the RT; the lock failed
        with pytest.raises(StoreError):
            reader.clear()
    finally:
        _remount(tmpfs, "rw")
    _sign_in(idp, writer, "bob@example.com")
    fresh = idp.public_app(token_cache=_cache(path, key))
    assert "access_token" in _refresh(fresh, "alice@example.com")


def test_lock_timeout_keeps_the_change_pending(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = _cache(cache_path, key, lock_timeout=0.05)
    app = _sign_in(idp, cache, "alice@example.com")
    holder = subprocess.Popen(
        [
            "python",
            "-c",
            "import fcntl,sys,time;f=open(sys.argv[1],'a');"
            "fcntl.flock(f,fcntl.LOCK_EX);print('x',flush=True);time.sleep(30)",
            str(cache_path) + ".lock",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"x\n"
        with pytest.raises(CacheError):
            _refresh(app, "alice@example.com")
    finally:
        holder.kill()
        holder.wait()
    _sign_in(idp, cache, "bob@example.com")
    assert "access_token" in _refresh(
        idp.public_app(token_cache=_cache(cache_path, key)), "alice@example.com"
    )


# -- hostile paths ---------------------------------------------------------------------


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def fail(*_: Any) -> None:
        raise AssertionError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_fifo_and_other_non_regular_paths_are_refused_without_blocking(
    tmp_path: Path, key: str
) -> None:
    fifo = tmp_path / "fifo.bin"
    os.mkfifo(fifo)
    with _deadline(10), pytest.raises(StoreError, match="not a regular file"):
        _cache(fifo, key)
    # A FIFO swapped in after the store was made: refused at load, still without blocking.
    path = tmp_path / "later.bin"
    cache = _cache(path, key)
    os.mkfifo(path)
    with _deadline(10), pytest.raises(StoreError, match="not a regular file"):
        cache.serialize()
    directory = tmp_path / "dir.bin"
    directory.mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        _cache(directory, key)


def test_hard_linked_cache_is_replaced_not_appended_through(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = _cache(cache_path, key)
    _sign_in(idp, cache, "alice@example.com")
    link = cache_path.parent / "elsewhere.bin"
    os.link(cache_path, link)
    before = link.read_bytes()
    _sign_in(idp, cache, "bob@example.com")
    assert link.read_bytes() == before  # nothing written through the other name
    assert os.stat(cache_path).st_ino != os.stat(link).st_ino
    assert os.stat(cache_path).st_nlink == 1
    assert _users(_cache(cache_path, key)) == ["alice@example.com", "bob@example.com"]


def test_loose_cache_file_is_made_private_with_one_warning(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    _sign_in(idp, _cache(cache_path, key), "alice@example.com")
    os.chmod(cache_path, 0o644)
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        assert _users(_cache(cache_path, key)) == ["alice@example.com"]
        os.chmod(cache_path, 0o644)
        assert _users(_cache(cache_path, key)) == ["alice@example.com"]
    assert stat.S_IMODE(cache_path.stat().st_mode) == 0o600
    assert len([r for r in caplog.records if "readable by other users" in r.message]) == 1


def test_every_directory_created_is_0700_whatever_the_umask(tmp_path: Path, key: str) -> None:
    old = os.umask(0)
    try:
        deep = tmp_path / "a" / "b" / "c"
        ensure_private_dir(str(deep))
        cache = _cache(tmp_path / "x" / "y" / "cache.bin", key)
        cache.deserialize(json.dumps({"Account": {}}))
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b", deep, tmp_path / "x", tmp_path / "x" / "y"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE((tmp_path / "x" / "y" / "cache.bin").stat().st_mode) == 0o600


def test_clear_removes_corrupt_copies_and_temp_files(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = _cache(cache_path, key)
    _sign_in(idp, cache, "alice@example.com")
    blob = cache_path.read_bytes()
    (cache_path.parent / f"{cache_path.name}.corrupt-20260101T000000-abcdef").write_bytes(blob)
    (cache_path.parent / f".{cache_path.name}.0123456789ab.tmp").write_bytes(blob)
    unrelated = cache_path.parent / "other.bin"
    unrelated.write_bytes(b"keep me")
    cache.clear()
    left = sorted(p.name for p in cache_path.parent.iterdir())
    # The lock and the change counter stay: they hold nothing, and others may use them.
    assert left == ["other.bin", cache_path.name + ".gen", cache_path.name + ".lock"]


# -- rotation, fork --------------------------------------------------------------------


def test_running_process_picks_up_a_key_rotated_in_the_key_file(
    idp: LoopbackIdentityProvider, cache_path: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "keys"
    old, new = generate_key(), generate_key()
    key_file.write_text(old + "\n")
    key_file.chmod(0o600)

    def source() -> crypto.FernetKeys:
        return crypto.FernetKeys(crypto.read_key_file(str(key_file)), path=str(key_file))

    running = PersistentTokenCache(EncryptedFileStore(str(cache_path), source()))
    _sign_in(idp, running, "alice@example.com")
    # Another process rotates: new key only, file re-encrypted.
    key_file.write_text(new + "\n")
    rotator = EncryptedFileStore(str(cache_path), crypto.FernetKeys((old,)))
    rotator.rekey(crypto.FernetKeys((new,)))
    assert _users(running) == ["alice@example.com"]  # no DecryptError
    _sign_in(idp, running, "bob@example.com")
    assert crypto.parse_header(cache_path.read_bytes())[0].fp == crypto.fingerprint(new)
    with pytest.raises(DecryptError):
        _users(_cache(cache_path, old))


def _forked_write(args: tuple[Any, int]) -> str:
    _idp_port, n = args
    cache = _FORK_CACHE
    assert cache is not None
    app = cache._test_idp.confidential_app(token_cache=cache)  # type: ignore[attr-defined]
    result = app.acquire_token_for_client([f"api://fork-{n}/.default"])
    return "ok" if "access_token" in result else str(result.get("error"))


_FORK_CACHE: Any = None


def test_forked_pool_writes_to_a_cache_the_parent_already_wrote(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    global _FORK_CACHE
    cache = _cache(cache_path, key)
    _sign_in(idp, cache, "alice@example.com")  # the parent has written: lock and fd exist
    cache._test_idp = idp  # type: ignore[attr-defined]
    _FORK_CACHE = cache
    try:
        with multiprocessing.get_context("fork").Pool(4) as pool:
            results = pool.map(_forked_write, [(idp.port, n) for n in range(12)])
    finally:
        _FORK_CACHE = None
    assert results == ["ok"] * 12
    targets = {
        e["target"] for e in json.loads(_cache(cache_path, key).serialize())["AccessToken"].values()
    }
    assert {f"api://fork-{n}/.default" for n in range(12)} <= targets


# -- import validation -----------------------------------------------------------------


AT_TYPE = {"credential_type": "AccessToken"}
RT_TYPE = {"credential_type": "RefreshToken"}


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"AccessToken": []}, "'AccessToken' section"),
        ({"AccessToken": {"k": "text"}}, "AccessToken entry 1 is not an object"),
        ({"AccessToken": {"k": {"secret": "s"}}}, "AccessToken entry 1 has no 'expires_on'"),
        (
            {"RefreshToken": {"a": {**RT_TYPE, "secret": "s"}, "b": {**RT_TYPE, "secret": 5}}},
            "RefreshToken entry 2 has a 'secret' that is not text",
        ),
        ({"Account": {"k": {"home_account_id": "h"}}}, "Account entry 1 has no 'environment'"),
        (
            {"AccessToken": {"k": {**AT_TYPE, "secret": "s", "expires_on": "soon"}}},
            "AccessToken entry 1 has a 'expires_on' that is not a whole number",
        ),
        ([1, 2], "not a JSON object"),
    ],
)
def test_import_is_validated_entry_by_entry_and_refused_whole(
    cache_path: Path, key: str, doc: Any, where: str
) -> None:
    cache = _cache(cache_path, key)
    cache.deserialize(json.dumps({"Account": {}}))
    before = cache_path.read_bytes()
    calls = [cache.merge]
    if "has no" not in where:  # deserialize checks the shape, not msal's required fields
        calls.append(cache.deserialize)
    for call in calls:
        with pytest.raises(ConfigError) as exc:
            call(json.dumps(doc))
        assert where in str(exc.value)
        assert "SECRET-TEXT" not in str(exc.value)
    assert cache_path.read_bytes() == before
    with pytest.raises(ConfigError):
        validate_cache(doc)


def test_import_error_never_quotes_the_entry(cache_path: Path, key: str) -> None:
    cache = _cache(cache_path, key)
    with pytest.raises(ConfigError) as exc:
        cache.merge(json.dumps({"RefreshToken": {"SECRET-KEY": {"secret": ["SECRET-TEXT"]}}}))
    assert "SECRET" not in str(exc.value)
    with pytest.raises(ConfigError):
        cache.merge("[" * 2000)


# -- read-only mode --------------------------------------------------------------------


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_read_only_store_never_writes_creates_or_moves(
    idp: LoopbackIdentityProvider, tmp_path: Path, cache_path: Path, key: str
) -> None:
    _sign_in(idp, _cache(cache_path, key), "alice@example.com")
    Path(str(cache_path) + ".lock").unlink()
    before = _tree(tmp_path)
    store = EncryptedFileStore(str(cache_path), crypto.FernetKeys((key,)), read_only=True)
    reader = PersistentTokenCache(store)
    assert _users(reader) == ["alice@example.com"]
    for call in (
        lambda: store.save(b"{}"),
        lambda: store.append(b"{}", lambda: b"{}"),
        store.clear,
    ):
        with pytest.raises(StoreError, match="read-only"):
            call()
    entry = {
        "home_account_id": "h",
        "environment": "e",
        "realm": "r",
        "username": "u",
        "authority_type": "MSSTS",
    }
    with pytest.raises(StoreError):
        reader.merge(json.dumps({"Account": {"h-e-r": entry}}))
    assert _tree(tmp_path) == before
    # Damage: reported with what to do, nothing moved.
    cache_path.write_bytes(cache_path.read_bytes()[:-40] + b"\n")
    os.chmod(cache_path, 0o600)
    damaged = _tree(tmp_path)
    with pytest.raises(CorruptCacheError, match=r"not a readable encrypted token cache|damaged"):
        PersistentTokenCache(
            EncryptedFileStore(str(cache_path), crypto.FernetKeys((key,)), read_only=True)
        ).serialize()
    assert _tree(tmp_path) == damaged
    # A missing file and directory: nothing created.
    ghost = tmp_path / "nowhere" / "cache.bin"
    empty = EncryptedFileStore(str(ghost), crypto.FernetKeys((key,)), read_only=True)
    assert empty.load() is None
    assert not empty.changed()
    assert not ghost.parent.exists()


# -- journal tampering ---------------------------------------------------------------


def _journal(idp: LoopbackIdentityProvider, path: Path, key: str, users: list[str]) -> list[bytes]:
    cache = _cache(path, key)
    for user in users:
        _sign_in(idp, cache, user)
    blob = path.read_bytes()
    lines = crypto.file_records(blob)
    assert b"\n".join(lines) + b"\n" == blob
    return lines


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def _assert_set_aside(path: Path, key: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        users = _users(_cache(path, key))
    assert "out of place" in caplog.text
    assert list(path.parent.glob(path.name + ".corrupt-*"))
    return users


@pytest.mark.parametrize("attack", ["swap", "drop", "replay"])
def test_reordered_dropped_or_replayed_records_are_detected(
    idp: LoopbackIdentityProvider,
    cache_path: Path,
    key: str,
    caplog: pytest.LogCaptureFixture,
    attack: str,
) -> None:
    header, snapshot, *records = _journal(
        idp, cache_path, key, ["a@example.com", "b@example.com", "c@example.com"]
    )
    assert len(records) >= 2
    if attack == "swap":
        records[0], records[1] = records[1], records[0]
    elif attack == "drop":
        del records[0]
    else:
        records.insert(1, records[0])
    _write(cache_path, [header, snapshot, *records])
    users = _assert_set_aside(cache_path, key, caplog)
    # What came before the damage is kept; nothing after it is taken.
    assert set(users) <= {"a@example.com", "b@example.com", "c@example.com"}


def test_record_spliced_from_another_file_under_the_same_key_is_detected(
    idp: LoopbackIdentityProvider,
    tmp_path: Path,
    key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = _journal(idp, tmp_path / "a" / "c.bin", key, ["a@example.com", "b@example.com"])
    b = _journal(idp, tmp_path / "b" / "c.bin", key, ["x@example.com", "y@example.com"])
    target = tmp_path / "a" / "c.bin"
    _write(target, [*a, b[2]])  # b's first journal record, appended at a's next place
    assert _assert_set_aside(target, key, caplog) == ["a@example.com", "b@example.com"]
    _write(target, [a[0], b[1]])  # b's snapshot under a's header
    caplog.clear()
    assert _assert_set_aside(target, key, caplog) == []


def test_records_cut_off_the_end_are_seen_by_a_running_reader(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    lines = _journal(idp, cache_path, key, ["a@example.com", "b@example.com"])
    reader = _cache(cache_path, key)
    assert _users(reader) == ["a@example.com", "b@example.com"]
    with open(cache_path, "r+b") as fh:  # same inode, last record cut: a rollback
        fh.truncate(len(b"\n".join(lines[:-1]) + b"\n"))
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        assert _users(reader) == ["a@example.com"]
    assert "lost journal records" in caplog.text


@pytest.mark.parametrize("version", [1, 2, 3])
def test_older_format_file_is_read_and_rewritten_in_the_current_format(
    idp: LoopbackIdentityProvider, tmp_path: Path, version: int
) -> None:
    # v1_cache.bin: written by 0.1.0; v2_cache.bin: by 0.2.0 (a Fernet snapshot and two
    # journal records); v3_cache.bin: by format 3 (an AES-GCM snapshot, two Fernet journal
    # records). All load, and the next write rewrites them as version 4.
    name = f"v{version}_cache"
    key = (DATA / f"{name}.key").read_text().strip()
    path = tmp_path / "c" / "cache.bin"
    path.parent.mkdir(mode=0o700)
    shutil.copyfile(DATA / f"{name}.bin", path)
    os.chmod(path, 0o600)
    expected = json.loads((DATA / f"{name}.keys.json").read_text())
    cache = _cache(path, key)
    doc = json.loads(cache.serialize())
    assert {k: sorted(v) for k, v in doc.items()} == expected
    assert crypto.parse_header(path.read_bytes())[0].version == version
    _sign_in(idp, cache, "carol@example.com")
    header, _ = crypto.parse_header(path.read_bytes())
    assert header.version == crypto.VERSION == 4
    again = json.loads(_cache(path, key).serialize())
    assert len(again["Account"]) == len(expected["Account"]) + 1


# -- scrypt bounds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "r", "p"), [(2**20, 32, 16), (2**20, 8, 1), (2**14, 8, 16), (2**17, 8, 1)]
)
def test_crafted_scrypt_parameters_are_refused_before_deriving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, n: int, r: int, p: int
) -> None:
    source = crypto.Passphrase("pw-" + uuid.uuid4().hex)
    path = tmp_path / "c.bin"
    path.write_bytes(crypto.encrypt(b"{}", source))
    os.chmod(path, 0o600)
    doc = json.loads(path.read_bytes().split(b"\n")[0])
    doc.update(n=n, r=r, p=p)
    rest = path.read_bytes().split(b"\n", 1)[1]
    path.write_bytes(json.dumps(doc).encode() + b"\n" + rest)
    derived = len(crypto._derived)
    with pytest.raises(CorruptCacheError, match="scrypt"):
        crypto.parse_header(path.read_bytes())
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        assert PersistentTokenCache(EncryptedFileStore(str(path), source)).serialize() == "{}"
    assert len(crypto._derived) == derived  # no key was derived for the crafted header
    assert list(tmp_path.glob("c.bin.corrupt-*"))


def test_library_writes_parameters_within_its_own_bound() -> None:
    assert crypto.scrypt_allowed(crypto.SCRYPT_N, crypto.SCRYPT_R, crypto.SCRYPT_P)
    assert crypto.scrypt_allowed(crypto.SCRYPT_N * 4, crypto.SCRYPT_R, crypto.SCRYPT_P)
    assert not crypto.scrypt_allowed(crypto.SCRYPT_N * 8, crypto.SCRYPT_R, crypto.SCRYPT_P)


# -- deep nesting ------------------------------------------------------------------------


def test_deeply_nested_header_is_set_aside_not_a_recursion_error(
    cache_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache_path.parent.mkdir(mode=0o700)
    cache_path.write_bytes(b"[" * 2000 + b"\n" + b"gAAAA\n")
    os.chmod(cache_path, 0o600)
    with pytest.raises(CorruptCacheError):
        crypto.parse_header(cache_path.read_bytes())
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        assert _cache(cache_path, key).serialize() == "{}"
    assert list(cache_path.parent.glob(cache_path.name + ".corrupt-*"))


def test_deeply_nested_record_under_the_right_key_is_a_cache_error(
    cache_path: Path, key: str
) -> None:
    header, _ = crypto.Header(fp=crypto.fingerprint(key), gen="ab" * 16), None
    cache_path.parent.mkdir(mode=0o700)
    blob = (
        header.to_bytes()
        + b"\n"
        + crypto.seal(b"{}", key, header, 0)
        + crypto.seal(b"[" * 2000, key, header, 1)
    )
    cache_path.write_bytes(blob)
    os.chmod(cache_path, 0o600)
    with pytest.raises(CorruptCacheError):
        _cache(cache_path, key).serialize()


# -- the shared change counter -----------------------------------------------------------


class _Spy:
    """Counts exact checks (stat of the cache file) made by a store."""

    def __init__(self, store: EncryptedFileStore) -> None:
        self.calls = 0
        real = store._identity.check

        def check() -> tuple[bool, int]:
            self.calls += 1
            return real()

        store._identity.check = check  # type: ignore[method-assign]


def _warm(idp: LoopbackIdentityProvider, path: Path, key: str) -> tuple[Any, Any, Any]:
    cache = _cache(path, key)
    app = _sign_in(idp, cache, "alice@example.com")
    (account,) = app.get_accounts()
    cache.store.generation.RECHECK = 3600.0
    assert app.acquire_token_silent(["User.Read"], account)["token_source"] == "cache"
    return cache, app, account


def test_warm_hits_make_no_exact_check_while_the_counter_vouches(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache, app, account = _warm(idp, cache_path, key)
    spy = _Spy(cache.store)
    for _ in range(50):
        assert app.acquire_token_silent(["User.Read"], account)["token_source"] == "cache"
    assert spy.calls == 0
    # Another writer bumps the counter: the very next read checks exactly and sees it.
    _sign_in(idp, _cache(cache_path, key), "bob@example.com")
    assert len(app.get_accounts()) == 2
    assert spy.calls >= 1


def test_writer_killed_mid_write_leaves_readers_on_exact_checks(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache, app, account = _warm(idp, cache_path, key)
    code = (
        "import os, sys; from msal_keyring_cache.watch import Generation; "
        "g = Generation(sys.argv[1]); g.begin(); os._exit(0)"
    )
    subprocess.run([PYTHON, "-c", code, str(cache_path) + ".gen"], check=True, env=_env())
    spy = _Spy(cache.store)
    for _ in range(3):
        app.acquire_token_silent(["User.Read"], account)
    assert spy.calls == 3  # an odd counter vouches for nothing
    _sign_in(idp, _cache(cache_path, key), "bob@example.com")  # the next writer: even again
    assert len(app.get_accounts()) == 2
    app.acquire_token_silent(["User.Read"], account)  # one exact check vouches again
    calls = spy.calls
    for _ in range(3):
        app.acquire_token_silent(["User.Read"], account)
    assert spy.calls == calls


def test_unusable_counter_file_falls_back_to_exact_checks(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache_path.parent.mkdir(mode=0o700)
    os.mkfifo(str(cache_path) + ".gen")  # not a regular file: never mapped, never blocks
    with _deadline(20):
        cache, app, account = _warm(idp, cache_path, key)
        spy = _Spy(cache.store)
        for _ in range(3):
            app.acquire_token_silent(["User.Read"], account)
        assert spy.calls == 3
        _sign_in(idp, _cache(cache_path, key), "bob@example.com")
        assert len(app.get_accounts()) == 2


def test_writer_that_does_not_bump_is_noticed_at_the_next_recheck(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache, app, _account = _warm(idp, cache_path, key)
    other = cache_path.parent / "other.bin"
    writer = _cache(other, key)
    _sign_in(idp, writer, "alice@example.com")
    _sign_in(idp, writer, "bob@example.com")
    os.replace(other, cache_path)  # by hand: the counter is not bumped
    assert len(app.get_accounts()) == 1  # within the recheck interval: not seen yet
    cache.store.generation.until = 0.0  # the interval has passed
    assert len(app.get_accounts()) == 2


def test_counter_vouches_only_for_an_even_value_it_was_given(tmp_path: Path) -> None:
    # What the cache's warm path relies on, one rule at a time.
    path = str(tmp_path / "c.gen")
    reader, writer = Generation(path), Generation(path)
    assert reader.peek() == -1  # no counter file: nothing to vouch for
    reader.vouch(reader.peek())
    assert not reader.unchanged()  # -1 never matches a mapped or stand-in counter
    writer.begin()  # creates it, odd: a write in progress
    reader._tried = -1e9  # the file exists now: the next peek maps it (else within RECHECK)
    assert reader.peek() == -1  # odd vouches for nothing
    writer.end()
    value = reader.peek()
    assert value == reader.view[0] == 2  # 0, odd 1, even 2
    reader.vouch(value)
    assert reader.unchanged()
    writer.begin()
    assert not reader.unchanged()  # seen at once through the mapping, no system call
    writer.end()
    assert not reader.unchanged()  # even again, but another value
    reader.vouch(reader.peek())
    assert reader.unchanged()
    reader.until = 0.0
    assert not reader.unchanged()  # the recheck interval passed: an exact check is due
    reader.vouch(reader.peek())
    os.unlink(path)  # replaced by hand: the old mapping no longer tells anything
    writer.begin()
    writer.end()
    reader._verified = -1e9  # the replacement is looked for at most once per RECHECK
    assert reader.peek() == reader.view[0] == 2  # the new file's count, not the old one's 4
    reader.close()
    assert not reader.unchanged()


def _env() -> dict[str, str]:
    from tests.helpers import child_env

    return child_env()
