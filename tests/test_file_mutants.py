"""The encrypted file store where `nox -s mutants` found no test: re-keying a journal,
sign-out leftovers, salvage racing a writer or a sign-out, compaction under a passphrase,
readers following a compaction (up to date, after a sign-out, after a restored backup),
reads under an address-space limit, and fork; then record framing and sealing at their
edges, damaged and cut-off files, catching up, the journal's byte limit, hostile links,
failed fsyncs and lock errors.

The store's tests observe it from outside: the bytes and names on disk, a fresh store's
view, /proc/locks and /proc/self/io, a real child process; faults (a refused chmod, a
failed fsync) are injected at the OS call. Only the framing tests and the journal-limit
test use crypto's own functions, to build records of a given size or shape.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from msal_keyring_cache import crypto, generate_key
from msal_keyring_cache.errors import (
    ConfigError,
    CorruptCacheError,
    DecryptError,
    LockTimeoutError,
    StoreError,
)
from msal_keyring_cache.stores import file
from msal_keyring_cache.stores.base import apply_delta
from msal_keyring_cache.stores.file import EncryptedFileStore
from tests.helpers import child_env, mounted_tmpfs, open_descriptors

KEY = generate_key()


def _store(path: Path, source: Optional[crypto.KeySource] = None, **kw: Any) -> EncryptedFileStore:
    return EncryptedFileStore(str(path), source or crypto.FernetKeys((KEY,)), **kw)


def _delta(*names: str) -> bytes:
    return json.dumps({"AccessToken": {n: {"secret": "s-" + n} for n in names}}).encode()


def _unused() -> bytes:
    raise AssertionError("the store asked for the whole cache")


def _write(store: EncryptedFileStore, first: str, *more: str) -> None:
    """A whole-file save of ``first``, then one journal record per name in ``more``."""
    with store.lock():
        store.save(_delta(first))
        for name in more:
            store.append(_delta(name), _unused)
        store.sync()


def _state(store: EncryptedFileStore) -> dict[str, Any]:
    data = store.load()
    state: dict[str, Any] = json.loads(data) if data else {}
    for change in store.read_changes() or []:
        apply_delta(state, json.loads(change))
    return state


def _follow(store: EncryptedFileStore, state: dict[str, Any]) -> Optional[list[bytes]]:
    """What a reader does: apply the changes, or load again when the store says so."""
    changes = store.read_changes()
    if changes is None:
        state.clear()
        state.update(_state(store))
    else:
        for change in changes:
            apply_delta(state, json.loads(change))
    return changes


def _names(state: dict[str, Any]) -> set[str]:
    return set(state.get("AccessToken", {}))


def _aside(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if ".corrupt-" in p.name]


def _damage_last_record(path: Path) -> None:
    """Overwrite the last 10 bytes of the last record (its newline stays): it fails to
    authenticate, the records before it are intact."""
    blob = path.read_bytes()
    path.write_bytes(blob[:-11] + b"A" * 10 + b"\n")


# -- rekey, clear ---------------------------------------------------------------------------


def test_rekey_carries_every_journal_record_to_the_new_key(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    _write(_store(path), "a", "b", "c")  # a in the snapshot, b and c in the journal
    passphrase = crypto.Passphrase("the new passphrase")
    _store(path).rekey(passphrase)  # also from a Fernet header to a passphrase one
    assert _names(_state(_store(path, passphrase))) == {"a", "b", "c"}
    with pytest.raises(DecryptError):
        _store(path).load()  # the old key no longer opens it


def test_clear_deletes_the_set_aside_copy_even_when_the_cache_file_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.bin"
    path.write_bytes(b"garbage\n")
    store = _store(path)
    with caplog.at_level(logging.WARNING, "msal_keyring_cache"):
        assert store.load() is None
    assert " and the cache starts empty, so sign in again." in caplog.text
    assert not path.exists()
    assert len(_aside(tmp_path)) == 1  # still holds whatever tokens the damage left
    (tmp_path / ".c.bin.1234.tmp").write_bytes(b"a killed writer's temp file")
    store.clear()  # sign-out: the file itself is already gone
    assert not _aside(tmp_path)
    assert not list(tmp_path.glob(".c.bin.*.tmp"))


# -- salvage: keep what is good, never overwrite a newer file --------------------------------


def test_salvage_keeps_the_records_before_the_damage_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.bin"
    _write(_store(path), "a", "b", "c")
    _damage_last_record(path)
    with caplog.at_level(logging.WARNING, "msal_keyring_cache"):
        assert _names(_state(_store(path))) == {"a", "b"}
    assert " and the entries written before the damage are kept." in caplog.text
    assert len(_aside(tmp_path)) == 1
    assert _names(_state(_store(path))) == {"a", "b"}  # saved whole: no damage left


def _blocked_waiters(lock_file: str) -> int:
    """Processes or threads blocked on ``lock_file``'s flock (the kernel's own count)."""
    inode = os.stat(lock_file).st_ino
    with open("/proc/locks") as fh:
        return sum(1 for line in fh if "->" in line and f":{inode} " in line)


def _wait_until(condition: Callable[[], bool], what: str, bound: float = 20.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"not within {bound} s: {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("meanwhile", ["a writer replaces it", "a sign-out deletes it"])
def test_salvage_leaves_a_file_changed_while_it_waited_for_the_lock(
    tmp_path: Path, meanwhile: str
) -> None:
    # A reader finds a damaged journal record and waits for the lock to set the file
    # aside. Meanwhile the lock holder replaces the file with a good one, or signs out
    # (deletes it). The reader must not then write its salvaged copy over either.
    path = tmp_path / "c.bin"
    _write(_store(path), "a", "b", "c")
    _damage_last_record(path)
    reader, holder = _store(path), _store(path)
    loaded: list[Optional[bytes]] = []
    with holder.lock():
        thread = threading.Thread(target=lambda: loaded.append(reader.load()))
        thread.start()
        _wait_until(lambda: _blocked_waiters(str(path) + ".lock") == 1, "the reader waits")
        if meanwhile == "a writer replaces it":
            holder.save(_delta("good"))
        else:
            holder.clear()
    thread.join(20)
    assert not thread.is_alive()
    assert loaded  # the reader got its salvaged view; what matters is the file:
    assert not _aside(tmp_path)
    if meanwhile == "a writer replaces it":
        assert _names(_state(_store(path))) == {"good"}
    else:
        assert not path.exists()  # the signed-out tokens are not written back


def test_a_damaged_file_that_cannot_be_moved_aside_says_why(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "ro") as mount:
        path = mount / "c.bin"
        path.write_bytes(b"garbage\n")
        path.chmod(0o600)
        with _store(path).lock():
            pass  # the lock file exists; a read-only file system still locks it
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        try:
            with pytest.raises(StoreError) as caught:
                _store(path).load()
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        assert "(the file header is not valid JSON)" in str(caught.value)
        assert "by hand" in str(caught.value)
        assert path.read_bytes() == b"garbage\n"


def test_salvage_names_the_part_that_decrypts_but_is_not_json(tmp_path: Path) -> None:
    # Only a holder of the key writes such a file; the message still says which part.
    path = tmp_path / "c.bin"
    store = _store(path)
    with store.lock():
        store.save(b"not json")
        store.append(_delta("b"), _unused)
        store.append(_delta("c"), _unused)
    _damage_last_record(path)
    with pytest.raises(CorruptCacheError, match="the cache snapshot is not valid JSON"):
        _store(path).load()
    path.unlink()
    with store.lock():
        store.save(_delta("a"))
        store.append(b"not json", _unused)
        store.append(_delta("c"), _unused)
    _damage_last_record(path)
    with pytest.raises(CorruptCacheError, match="a journal record is not valid JSON"):
        _store(path).load()


def test_after_a_torn_append_the_next_write_replaces_the_file(tmp_path: Path) -> None:
    # The disk fills in the middle of an append: part of the record is in the file. The
    # next write must not write at that place again: it replaces the whole file.
    with mounted_tmpfs(tmp_path / "small", size="256k") as mount:
        path = mount / "c.bin"
        store = _store(path)
        _write(store, "a")
        fd = os.open(mount / "pad", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        entries = {"a": {"secret": "s-a"}, "big": {"secret": "x" * 20000}, "b": {"secret": "b"}}
        size = path.stat().st_size
        with store.lock(), pytest.raises(StoreError, match="free disk space"):
            store.append(json.dumps({"AccessToken": {"big": entries["big"]}}).encode(), _unused)
        assert path.stat().st_size > size  # torn: part of the record is there
        inode = path.stat().st_ino
        (mount / "pad").unlink()
        pending = {k: entries[k] for k in ("big", "b")}  # the failed change is still pending
        with store.lock():
            store.append(
                json.dumps({"AccessToken": pending}).encode(),
                lambda: json.dumps({"AccessToken": entries}).encode(),
            )
            store.sync()
        assert path.stat().st_ino != inode  # a new file, not bytes written over the torn ones
        assert _names(_state(_store(path))) == {"a", "b", "big"}


# -- compaction --------------------------------------------------------------------------


def _header(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_bytes().split(b"\n", 1)[0])
    return doc


def test_compaction_under_a_passphrase_keeps_the_files_key_derivation(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    passphrase = crypto.Passphrase("pw")
    names = [f"k{i}" for i in range(file.MAX_RECORDS + 1)]
    store = _store(path, passphrase)
    _write(store, "first", *names[:-1])
    before = _header(path)
    with store.lock():
        with pytest.raises(CorruptCacheError, match="a journal record is not valid JSON"):
            store.append(b"not json", lambda: b"{}")  # due to compact: parsed, refused
        store.append(_delta(names[-1]), lambda: _apply_all("first", *names))
    after = _header(path)
    assert after["gen"] != before["gen"]  # compacted: a new file
    # The same salt and cost: scrypt is not run again, and the passphrase still opens it.
    assert {k: after[k] for k in ("kdf", "salt", "n", "r", "p")} == {
        k: before[k] for k in ("kdf", "salt", "n", "r", "p")
    }
    assert _names(_state(_store(path, passphrase))) == {"first", *names}


def _apply_all(*names: str) -> bytes:
    return _delta(*names)


def _journal_full(
    path: Path, first: bytes = _delta("first")
) -> tuple[EncryptedFileStore, list[str]]:
    """A file whose journal is full (the next append compacts it): its writer and the
    names of its records."""
    writer = _store(path)
    names = [f"k{i}" for i in range(file.MAX_RECORDS)]
    with writer.lock():
        writer.save(first)
        for name in names:
            writer.append(_delta(name), _unused)
        writer.sync()
    return writer, names


def test_an_up_to_date_reader_follows_a_compaction_without_loading_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.bin"
    writer, names = _journal_full(path)
    reader = _store(path)
    state = _state(reader)  # has read every record
    gen = _header(path)["gen"]
    with writer.lock():
        writer.append(_delta("last"), lambda: _apply_all("first", *names, "last"))
    assert _header(path)["gen"] != gen  # compacted: a new file
    changes = _follow(reader, state)
    assert changes is not None  # followed the link: nothing missed, no full load
    assert _names(state) == {"first", *names, "last"}
    with writer.lock():
        writer.append(_delta("later"), _unused)
    changes = _follow(reader, state)
    assert changes is not None  # the new file is now the one it follows record by record
    assert _names(state) == {"first", *names, "last", "later"}


def test_a_file_re_keyed_elsewhere_to_a_key_this_reader_lacks_is_a_decrypt_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.bin"
    _write(_store(path), "a", "b")
    reader = _store(path)
    assert _names(_state(reader)) == {"a", "b"}
    _store(path).rekey(crypto.FernetKeys((generate_key(),)))  # another process rotates
    with pytest.raises(DecryptError, match="fingerprint"):
        reader.read_changes()
    assert not _aside(tmp_path)  # not damage: the file is left as it is


def test_after_a_sign_out_a_new_compacted_file_is_loaded_whole(tmp_path: Path) -> None:
    # The reader holds file A; another process signs out (A deleted) and a new sign-in
    # builds file B, which compacts at the same record count. B's link names B's own
    # past, not A: the reader must not stitch B's record onto A's signed-out tokens.
    path = tmp_path / "c.bin"
    names = [f"k{i}" for i in range(file.MAX_RECORDS)]
    _write(_store(path), "signed-out", *names)
    reader = _store(path)
    state = _state(reader)
    assert "signed-out" in _names(state)
    _store(path).clear()
    writer = _store(path)
    fresh = [f"n{i}" for i in range(file.MAX_RECORDS)]
    _write(writer, "new-user", *fresh)
    with writer.lock():
        writer.append(_delta("last"), lambda: _apply_all("new-user", *fresh, "last"))
    _follow(reader, state)
    assert _names(state) == _names(_state(_store(path))) == {"new-user", *fresh, "last"}


def test_a_compacted_restore_of_an_older_copy_is_loaded_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backup of the file (1 record) is restored after the reader read 3 records, and a
    # writer compacts the restored copy. Its link counts fewer records than the reader
    # has: the reader's later records are not in it, so the reader must load it whole.
    path = tmp_path / "c.bin"
    writer = _store(path)
    _write(writer, "a", "b")
    backup = path.read_bytes()
    with writer.lock():
        writer.append(_delta("c"), _unused)
        writer.append(_delta("d"), _unused)
    reader = _store(path)
    state = _state(reader)
    assert _names(state) == {"a", "b", "c", "d"}
    restored = tmp_path / "restored"
    restored.write_bytes(backup)
    restored.chmod(0o600)
    restored.replace(path)
    monkeypatch.setattr(file, "MAX_RECORDS", 1)  # the next write compacts the restored copy
    again = _store(path)
    assert _names(_state(again)) == {"a", "b"}
    with again.lock():
        again.append(_delta("e"), lambda: _apply_all("a", "b", "e"))
    _follow(reader, state)
    assert _names(state) == _names(_state(_store(path))) == {"a", "b", "e"}


# -- reads stay small ------------------------------------------------------------------------


_LIMITED_READER = r"""
import json, resource, sys
from msal_keyring_cache import crypto
from msal_keyring_cache.stores.file import EncryptedFileStore
path, key = sys.argv[1], sys.argv[2]
source = crypto.FernetKeys((key,))
writer, reader = EncryptedFileStore(path, source), EncryptedFileStore(path, source)
with writer.lock():
    writer.save(b'{"AccessToken":{}}')
reader.load()
reader.read_changes()
# Well above what this process needs, well below a gigabyte.
resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))
with writer.lock():
    writer.append(b'{"AccessToken":{"x":{"secret":"s"}}}', lambda: b"")
    writer.sync()
print(json.dumps([c.decode() for c in reader.read_changes() or []]))
"""


def test_reading_new_records_needs_no_more_memory_than_the_file_holds(tmp_path: Path) -> None:
    # A process under an address-space limit (ulimit -v, batch schedulers) reads another
    # process's records: a read must not reserve a gigabyte for a few hundred bytes.
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED_READER, str(tmp_path / "c.bin"), KEY],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == ['{"AccessToken":{"x":{"secret":"s"}}}']


# -- fork ------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_child_forked_while_the_store_is_locked_waits_and_frees_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.bin"
    store = _store(path, lock_timeout=0.3)
    _write(store, "a")
    with store.lock():
        pid = os.fork()
        if pid == 0:  # the child: the parent's hold is not its own
            code = 1
            try:
                try:
                    with store.lock():
                        code = 2  # took a lock the parent holds
                except LockTimeoutError:
                    code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the child waited past its lock timeout")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0
        other = _store(path, lock_timeout=0.1)
        with pytest.raises(LockTimeoutError), other.lock():  # the child's exit freed nothing
            pass
        store.save(_delta("parent"))
    assert _names(_state(_store(path))) == {"parent"}


# -- status ----------------------------------------------------------------------------------


def test_describe_reports_the_file_as_it_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    key_file = str(tmp_path / "k.key")
    level = crypto.Protection.KEY_FILE
    source = crypto.FernetKeys((KEY,), label="key file k.key", path=key_file, level=level)
    store = _store(path, source)
    empty = store.describe()
    assert (empty.exists, empty.size, empty.last_write, empty.permissions) == (
        False, None, None, None
    )  # fmt: skip
    _write(store, "a")
    os.utime(path, (1609556645, 1609556645))  # 2021-01-02 03:04:05 UTC
    found = store.describe()
    assert found.backend == "file"
    assert found.location == str(path)
    assert found.lock_file == str(path) + ".lock"
    assert found.key_file == str(tmp_path / "k.key")
    assert found.protection is crypto.Protection.KEY_FILE
    assert found.extra == {"key_source": "key file k.key"}
    assert found.exists is True
    assert found.size == path.stat().st_size
    assert found.last_write == "2021-01-02T03:04:05Z"
    assert found.permissions == "0o600"
    path.chmod(0o644)
    assert store.describe().permissions == "0o644"  # said as it is (load makes it private)
    # Beside it: the lock and the shared change counter, under fixed names (docs, tools).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin", "c.bin.gen", "c.bin.lock"]
    assert store.lock().timeout == 60.0  # the default wait for the lock
    assert _store(path, lock_timeout=2.5).lock().timeout == 2.5


def test_a_cache_file_others_can_read_is_made_private_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "msal_keyring_cache")
    private, loose, shown = (tmp_path / n for n in ("private.bin", "loose.bin", "shown.bin"))
    for path in (private, loose, shown):
        _write(_store(path), "a")
    loose.chmod(0o644)
    shown.chmod(0o640)
    assert _names(_state(_store(private))) == {"a"}
    assert str(private) not in caplog.text  # private already: nothing to say
    assert _names(_state(_store(loose))) == {"a"}
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    assert f"{loose} was readable by other users; it was made private (0600)." in caplog.text
    assert _names(_state(_store(shown, read_only=True))) == {"a"}
    assert stat.S_IMODE(shown.stat().st_mode) == 0o640  # read-only: nothing changed
    assert f"{shown} was readable by other users; run: chmod 600 {shown}." in caplog.text


def test_a_fernet_key_files_header_says_what_the_format_promises(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    _write(_store(path), "a")
    header = _header(path)
    assert header == {
        "format": "msal-keyring-cache",
        "version": header["version"],
        "kdf": "none",
        "fp": crypto.fingerprint(KEY),
        "source": "key",
        "gen": header["gen"],
    }
    assert re.fullmatch(r"[0-9a-f]{32}", header["gen"])  # 128 random bits, new per file
    assert header["version"] in crypto.VERSIONS


@pytest.mark.parametrize("name", ["v1_cache.bin", "v2_cache.bin", "v3_cache.bin"])
def test_file_records_splits_an_older_file_by_its_own_version(name: str) -> None:
    # A tool reading a file written by an older version: its records are lines.
    blob = (Path(__file__).parent / "data" / name).read_bytes()
    records = crypto.file_records(blob)
    assert len(records) > 2  # header, snapshot and at least one journal record
    assert b"\n".join(records) + b"\n" == blob
    assert all(b"\n" not in r for r in records[2:])  # journal records are lines


def test_the_key_file_is_read_again_only_when_no_key_matches(tmp_path: Path) -> None:
    # "Called once per fingerprint mismatch": while a key in memory opens the file, the key
    # file is not consulted (here it was rewritten without that key meanwhile).
    key_file = tmp_path / "k.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    source = crypto.FernetKeys(crypto.read_key_file(str(key_file)), path=str(key_file))
    path = tmp_path / "c.bin"
    _write(_store(path, source), "a")
    key_file.write_text(generate_key() + "\n")
    assert _names(_state(_store(path, source))) == {"a"}
    assert source.keys == (KEY,)


def test_a_passphrase_derives_a_fernet_key_of_scrypt_s_32_bytes() -> None:
    import base64
    import hashlib

    from msal_keyring_cache import crypto

    secret = f"derive-{os.getpid()}-{time.monotonic_ns()}"  # no other test's memo
    key = crypto.Passphrase(secret).derive(b"s" * 16, 16, 8, 1)
    assert crypto.is_fernet_key(key)
    raw = base64.urlsafe_b64decode(key)
    assert raw == hashlib.scrypt(secret.encode(), salt=b"s" * 16, n=16, r=8, p=1, dklen=32)


# -- record framing and sealing, unit level --------------------------------------------------


def test_split_records_at_its_edges_empty_cut_off_and_damaged() -> None:
    # "The complete records in blob[start:] and the offset just after the last one": a
    # newline at `start` ends one (empty) record, in both framings; what follows it with
    # no newline is cut off (a killed writer) and left out.
    assert crypto.split_records(b"\nabc", 0, 3) == ([b""], 1)
    assert crypto.split_records(b"\nabc\n", 0, 3) == ([b"", b"abc"], 5)
    assert crypto.split_records(b"\nxyz", 0, 4) == ([b""], 1)  # damaged framing: up to the newline
    assert crypto.split_records(b"abc", 0, 3) == ([], 0)
    assert crypto.split_records(b"12", 0, 4) == ([], 0)  # cut off within the length
    # A length of more than 12 digits is damage, not a record still being written.
    assert crypto.split_records(b"1234567890123:abc\n", 0, 4) == ([b"1234567890123:abc"], 18)
    assert crypto.split_records(b"abc\n", 0, 4) == ([b"abc"], 4)  # no length: damage too


def _old_header(version: int) -> crypto.Header:
    return crypto.Header(crypto.fingerprint(KEY), "0123abcd" * 4, version=version)


@pytest.mark.parametrize("version", [2, 3, 4])
@pytest.mark.parametrize("seq", [0, 1, 7])
@pytest.mark.parametrize(
    "payload", [b"", b"{}", b"a\nb", b"\n\n", b"{" + b"x" * 150 + b"\n}"], ids=range(5)
)
def test_unseal_gives_back_exactly_what_seal_sealed(version: int, seq: int, payload: bytes) -> None:
    # Every version the library reads, the snapshot (seq 0) and journal records, and
    # payloads with newlines anywhere: what comes out is the payload, byte for byte.
    header = _old_header(version)
    record = crypto.seal(payload, KEY, header, seq)
    assert record.endswith(b"\n")
    assert crypto.unseal(record[:-1], KEY, header, seq) == payload
    with pytest.raises(CorruptCacheError):
        crypto.unseal(record[:-1], KEY, header, seq + 1)  # bound to its place


# -- the file store: following other writers, odd files, failures ------------------------------


def test_a_read_only_store_meets_no_writers(tmp_path: Path) -> None:
    # Group commit (batch) meets at the lock file's path: a read-only store writes
    # nothing and takes no lock, so it names no meeting place.
    path = tmp_path / "c.bin"
    _write(_store(path), "a")
    assert _store(path).rendezvous() == str(path) + ".lock"
    assert _store(path, read_only=True).rendezvous() is None
    assert _store(path).read_only is False  # the attribute the docs name, as given
    assert _store(path, read_only=True).read_only is True


def test_a_load_facing_damage_that_keeps_coming_back_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Something puts a damaged file back at the path each time one is set aside: the
    # load sets aside three, then starts empty instead of looping.
    path = tmp_path / "c.bin"
    read = file._read_keep_open

    def planting(name: str) -> Any:
        if not path.exists():
            path.write_bytes(b"garbage\n")
        return read(name)

    monkeypatch.setattr(file, "_read_keep_open", planting)
    assert _store(path).load() is None
    assert len(_aside(tmp_path)) == 3


def _bytes_read() -> int:
    """What this process has read so far (Linux: read and pread calls, any file)."""
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def test_catching_up_reads_the_new_records_not_the_whole_file(tmp_path: Path) -> None:
    # A reader that has the file reads only what another process appended: a 1 MB
    # snapshot is not read again for a 100-byte record.
    path = tmp_path / "c.bin"
    writer = _store(path)
    with writer.lock():
        writer.save(json.dumps({"AccessToken": {"big": {"secret": "x" * 1_000_000}}}).encode())
    reader = _store(path)
    state = _state(reader)
    with writer.lock():
        writer.append(_delta("new"), _unused)
        writer.sync()
    before = _bytes_read()
    changes = reader.read_changes()
    read = _bytes_read() - before
    assert changes is not None
    assert len(changes) == 1
    assert read < 64 * 1024, f"read {read} bytes to catch up one record"
    apply_delta(state, json.loads(changes[0]))
    assert _names(state) == {"big", "new"}


def test_following_a_compaction_reads_the_new_journal_not_the_new_snapshot(
    tmp_path: Path,
) -> None:
    # After a compaction, a reader that has every record reads the new file's header and
    # journal (record 1 names what it continues): not its snapshot, which holds only what
    # the reader has. Every process sharing a cache does this after every compaction.
    path = tmp_path / "c.bin"
    big = {"AccessToken": {"big": {"secret": "x" * 1_000_000}}}
    writer, names = _journal_full(path, json.dumps(big).encode())
    reader = _store(path)
    state = _state(reader)
    whole = {**big["AccessToken"], **json.loads(_apply_all(*names))["AccessToken"]}
    with writer.lock():
        writer.append(
            _delta("last"),
            lambda: json.dumps({"AccessToken": {**whole, "last": {"secret": "s-last"}}}).encode(),
        )
    assert path.stat().st_size > 1_000_000  # the new snapshot holds the big entry again
    before = _bytes_read()
    tracemalloc.start()
    try:
        changes = _follow(reader, state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    read = _bytes_read() - before
    assert changes is not None  # followed the link
    assert _names(state) == {"big", *names, "last"}
    assert read < 64 * 1024, f"read {read} bytes to follow a compaction"
    assert peak < 256 * 1024, f"{peak} bytes allocated to follow a compaction"  # pread's buffer
    assert not reader.changed()  # what it read is what it knows: no second look


@pytest.mark.parametrize("call", ["pread", "fstat"])
def test_a_read_error_while_following_a_compaction_is_the_librarys_error_and_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    # Fault injection: the new file opens, then reading it (or its size) fails with an
    # I/O error. The caller gets StoreError naming the file; the descriptor is closed.
    path = tmp_path / "c.bin"
    writer, names = _journal_full(path)
    reader = _store(path)
    state = _state(reader)
    with writer.lock():
        writer.append(_delta("last"), lambda: _apply_all("first", *names, "last"))
    real_fstat, real = os.fstat, getattr(os, call)
    new_inode = path.stat().st_ino
    calls: list[int] = []

    def failing(fd: int, *args: Any) -> Any:
        if real_fstat(fd).st_ino == new_inode:
            calls.append(fd)
            if call == "pread" or len(calls) > 1:  # fstat: the open's own check passes
                raise OSError(errno.EIO, "Input/output error")
        return real(fd, *args)

    held = open_descriptors(path)  # the writer keeps the file it wrote open
    monkeypatch.setattr(os, call, failing)
    with pytest.raises(StoreError, match=f"Cannot read {re.escape(str(path))}: Input/output"):
        _follow(reader, state)
    monkeypatch.undo()
    assert calls  # the fault was injected where it was meant to be
    assert open_descriptors(path) == held
    assert _follow(reader, state) is not None  # the disk is back: the link is followed
    assert _names(state) == {"first", *names, "last"}


@pytest.mark.parametrize(
    "head",
    [
        b'{"format":"msal-keyring-cache","version":2,"kdf":"none","fp":"f","gen":"g"}\nAAAA\n',
        b'{"format":"msal-keyring-cache","version":4,"kdf":"none","fp":"f","gen":"g"}\n012:',
        b'{"format":"msal-keyring-cache","version":4,"kdf":"none","fp":"f","gen":"g"}\n12',
        b'{"format":"msal-keyring-cache","version":4,"kdf":"none","fp":"f","gen":"g"}\nx:',
        b'{"format":"msal-keyring-cache","version":4,"kdf":"none","fp":"f","gen":"g"}\n'
        + b"1" * 13
        + b":",
    ],
    ids=["version-2", "leading-zero", "no-colon", "not-digits", "thirteen-digits"],
)
def test_a_head_without_a_framed_snapshot_length_cannot_skip_the_snapshot(head: bytes) -> None:
    with pytest.raises(CorruptCacheError):
        crypto.skip_snapshot(head)


@pytest.mark.parametrize(
    ("version", "record"),
    [(3, b"5:abcde\n"), (4, b"4:a:b:\n"), (4, b"100000000000:")],
    ids=["version-3", "colons-in-the-record", "twelve-digits"],
)
def test_a_framed_snapshot_is_skipped_by_its_length(version: int, record: bytes) -> None:
    line = crypto.Header(fp="f", gen="g", version=version).to_bytes() + b"\n"
    digits = record.split(b":", 1)[0]
    header, stop = crypto.skip_snapshot(line + record)
    assert (header.gen, header.version) == ("g", version)
    assert stop == len(line) + len(digits) + 1 + int(digits)


def test_skipping_a_snapshot_lands_on_its_newline() -> None:
    header, _key, blob = crypto.new_file(b'{"a":1}', crypto.FernetKeys((KEY,)))
    found, stop = crypto.skip_snapshot(blob[: crypto.HEAD_BYTES])
    assert found == header
    assert stop == len(blob) - 1
    assert blob[stop:] == b"\n"
    assert crypto.locate(blob)[2] == stop


def test_a_compaction_whose_snapshot_ends_elsewhere_than_its_length_says_is_loaded_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.bin"
    writer, names = _journal_full(path)
    reader = _store(path)
    _state(reader)  # has read every record
    with writer.lock():
        writer.append(_delta("last"), lambda: _apply_all("first", *names, "last"))
    blob = path.read_bytes()
    stop = crypto.locate(blob)[2]
    damaged = blob[:stop] + b"X" + blob[stop + 1 :]  # the snapshot's newline overwritten
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(damaged)
    tmp.chmod(0o600)
    tmp.replace(path)
    assert reader.read_changes() is None  # not stitched on: loaded whole (and set aside)


def test_a_closed_store_whose_file_was_signed_out_loads_again_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A store closed (its file let go) and asked again after another process signed
    # out: "load again", without claiming that records another process wrote were lost.
    path = tmp_path / "c.bin"
    _write(_store(path), "a", "b")
    store = _store(path)
    assert _names(_state(store)) == {"a", "b"}
    store.close()
    _store(path).clear()
    with caplog.at_level(logging.WARNING, "msal_keyring_cache"):
        assert store.read_changes() is None
        assert store.load() is None
    assert [r.getMessage() for r in caplog.records if r.name == "msal_keyring_cache"] == []


def test_a_dead_tail_the_next_writer_cuts_is_not_lost_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A writer killed mid-append left part of a record; a reader sees it and waits for
    # the rest. The next writer first cuts the dead tail off: a reader looking at that
    # moment (before the new record is in) has lost nothing and need not load again.
    path = tmp_path / "c.bin"
    _write(_store(path), "a", "b")
    reader = _store(path)
    state = _state(reader)
    size = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(b"12")  # a record cut off within its length
    assert reader.read_changes() == []  # nothing complete yet
    os.truncate(path, size)  # what the next writer does first (_write_at)
    with caplog.at_level(logging.WARNING, "msal_keyring_cache"):
        assert reader.read_changes() == []
    assert "lost journal records" not in caplog.text
    writer = _store(path)
    _state(writer)
    with writer.lock():
        writer.append(_delta("c"), _unused)
    assert _follow(reader, state) is not None
    assert _names(state) == {"a", "b", "c"}


def _journal(path: Path) -> tuple[str, int]:
    """The file's gen and how many journal bytes follow its snapshot."""
    blob = path.read_bytes()
    header, _start, stop = crypto.locate(blob)
    return header.gen, len(blob) - (stop + 1)


def _sized(gen: str, size: int) -> bytes:
    """A journal entry whose record is ``size`` bytes in a file of generation ``gen``."""
    for pad in range(size - 100, size):
        body = json.dumps({"AccessToken": {"p": {"secret": "x" * pad}}}).encode()
        if len(crypto.seal(body, KEY, crypto.Header("", gen), 1)) == size:
            return body
    raise AssertionError(f"no record of {size} bytes")


def test_the_journal_may_reach_its_byte_limit_exactly_before_it_is_compacted(
    tmp_path: Path,
) -> None:
    # "Compact when the journal has more bytes than the snapshot (at least 64 KiB)": a
    # journal of exactly the limit is appended to; one byte more, and it is compacted.
    path = tmp_path / "c.bin"
    store = _store(path)
    _write(store, "a")
    gen, journal = _journal(path)

    def delta(size: int) -> bytes:
        return _sized(gen, size)

    with store.lock():
        store.append(delta(30_000), _unused)
        store.append(delta(30_000), _unused)
        _, journal = _journal(path)
        store.append(delta(file.MIN_JOURNAL_BYTES - journal), _unused)
        assert _journal(path) == (gen, file.MIN_JOURNAL_BYTES)
        store.append(_delta("b"), _unused)  # at the limit, not over it: appended
        assert _journal(path)[0] == gen
        store.append(_delta("c"), lambda: _apply_all("a", "b", "c"))  # over it: compacted
        assert _journal(path)[0] != gen
    assert _names(_state(_store(path))) == {"a", "b", "c"}


def test_a_large_snapshot_takes_one_record_per_share_of_it_before_it_is_compacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "MAX_RECORDS records — more for a large snapshot: one per RECORD_SHARE bytes of it".
    # A snapshot of 100-and-a-bit shares takes 100 records (not 64, not 101); the write
    # after them compacts. (The share is made small so that the snapshot stays small.)
    monkeypatch.setattr(file, "RECORD_SHARE", 1024)
    path = tmp_path / "c.bin"
    store = _store(path)
    for pad in range(100_000, 100_000 + 1024):
        with store.lock():
            store.save(json.dumps({"AccessToken": {"big": {"secret": "x" * pad}}}).encode())
        snapshot = crypto.locate(path.read_bytes())[2] + 1  # the snapshot, with the header
        if snapshot % 1024:
            break
    limit = snapshot // 1024
    assert limit > file.MAX_RECORDS
    gen, _ = _journal(path)
    names = [f"k{i}" for i in range(limit)]
    with store.lock():
        for name in names:
            store.append(_delta(name), _unused)  # small records: the byte limit is far
        assert _journal(path)[0] == gen  # `limit` records, still appended
        assert len(crypto.file_records(path.read_bytes())) == 2 + limit
        store.append(_delta("last"), lambda: _apply_all("big", *names, "last"))
        assert _journal(path)[0] != gen  # one more: compacted
    assert _names(_state(_store(path))) == {"big", *names, "last"}


@pytest.mark.parametrize("over", [0, 1])
def test_a_store_that_followed_a_compaction_compacts_at_the_new_snapshots_size(
    tmp_path: Path, over: int
) -> None:
    # A store that followed a link (not loaded whole) knows where the new journal starts:
    # with a snapshot over 64 KiB, a journal of exactly its size is appended to, one byte
    # more is compacted — as for a store that loaded the file.
    path = tmp_path / "c.bin"
    big = {"AccessToken": {"big": {"secret": "x" * 100_000}}}
    writer = _journal_full(path, json.dumps(big).encode())[0]
    reader = _store(path)
    state = _state(reader)
    with writer.lock():
        writer.append(_delta("last"), lambda: json.dumps(state).encode())
    assert _follow(reader, state) is not None  # followed the link
    gen, journal = _journal(path)
    limit = crypto.locate(path.read_bytes())[2] + 1  # the snapshot, with the header
    assert limit > file.MIN_JOURNAL_BYTES
    with reader.lock():
        reader.append(_sized(gen, limit + over - journal), _unused)
        assert _journal(path) == (gen, limit + over)
        reader.append(_delta("b"), lambda: json.dumps(state).encode())
        assert (_journal(path)[0] == gen) is (over == 0)  # appended at the limit, else compacted


def test_a_cache_file_swapped_for_a_link_to_it_is_not_written_through(tmp_path: Path) -> None:
    # The file is moved elsewhere and a symbolic link to it put at the path: the same
    # file (inode) as before, so the writer tries to append; it refuses the link.
    path, moved = tmp_path / "c.bin", tmp_path / "elsewhere.bin"
    store = _store(path)
    _write(store, "a")
    path.rename(moved)
    path.symlink_to(moved)
    kept = moved.read_bytes()
    with store.lock(), pytest.raises(ConfigError, match="is a symbolic link; refusing"):
        store.append(_delta("b"), lambda: _apply_all("a", "b"))
    assert moved.read_bytes() == kept
    assert path.is_symlink()
    assert not _aside(tmp_path)


def _appended_with_failing_fsync(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A store holding "a", with "b" appended and not yet fsynced; fsync fails from now on."""
    store = _store(path)
    _write(store, "a")
    with store.lock():
        store.append(_delta("b"), _unused)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    return store


def test_close_after_an_fsync_that_fails_lets_everything_go_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A record appended but not yet fsynced (the call that wrote it failed before its
    # sync): close() tries the fsync; a disk error there is not raised from close, and
    # nothing stays open.
    path = tmp_path / "c.bin"
    store = _appended_with_failing_fsync(path, monkeypatch)
    store.close()
    monkeypatch.undo()
    assert open_descriptors(path) == 0
    assert _names(_state(_store(path))) == {"a", "b"}  # written, only its fsync failed


def test_an_os_error_while_taking_the_lock_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lock's directory is made, then chmod 0700: a file system that refuses chmod
    # (vfat, some network mounts) fails there. Both ways of taking the lock say so
    # with the library's error.
    def refusing(name: Any, mode: int, **kw: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refusing)
    for way in ("attempt", "acquire"):
        lock = _store(tmp_path / way / "c.bin").lock()
        with pytest.raises(StoreError) as caught:
            getattr(lock, way)()
        where = tmp_path / way / "c.bin.lock"
        assert f"Cannot take the token-cache lock {where}: Operation not permitted." in str(
            caught.value
        )


def test_a_damaged_snapshot_is_named_as_the_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.bin"
    _write(_store(path), "a")
    blob = bytearray(path.read_bytes())
    *_, stop = crypto.locate(bytes(blob))
    blob[stop - 5] ^= 1  # in the snapshot's authentication tag
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptCacheError) as caught:
        _store(path, read_only=True).load()
    assert "is not a readable encrypted token cache: the encrypted snapshot is damaged" in str(
        caught.value
    )
    with caplog.at_level(logging.WARNING, "msal_keyring_cache"):
        assert _store(path).load() is None
    assert "(the encrypted snapshot is damaged or out of place" in caplog.text
    _write(_store(path), "a")
    blob = path.read_bytes()
    start = blob.find(b"\n") + 1
    path.write_bytes(blob[:start] + b"x" + blob[start + 1 :])  # its length's first digit
    with pytest.raises(CorruptCacheError, match=r"the encrypted snapshot has no valid length"):
        _store(path, read_only=True).load()


def test_a_first_record_that_is_not_json_is_named_read_only(tmp_path: Path) -> None:
    # Only a holder of the key writes such a record; it mentions the link table, so the
    # load parses it to drop the link: the message still says which part is bad.
    path = tmp_path / "c.bin"
    store = _store(path)
    with store.lock():
        store.save(_delta("a"))
        store.append(b'{"~link": not json', _unused)
    with pytest.raises(CorruptCacheError, match=r"is damaged: a journal record is not valid JSON"):
        _store(path, read_only=True).load()


def test_a_first_record_that_mentions_the_link_table_in_a_value_loads(tmp_path: Path) -> None:
    # "~link" inside an entry (not the link table of a compacted file) is data.
    path = tmp_path / "c.bin"
    store = _store(path)
    entry = {"AccessToken": {"b": {"secret": "s", "target": "~link"}}}
    with store.lock():
        store.save(_delta("a"))
        store.append(json.dumps(entry).encode(), _unused)
    state = _state(_store(path))
    assert state["AccessToken"]["b"] == entry["AccessToken"]["b"]
    assert _names(state) == {"a", "b"}


def test_a_whole_file_save_under_a_passphrase_keeps_the_files_key_derivation(
    tmp_path: Path,
) -> None:
    # Like compaction: the same salt and cost, so scrypt is not run again for every save
    # (nor by every reader of the new file).
    path = tmp_path / "c.bin"
    passphrase = crypto.Passphrase("pw")
    store = _store(path, passphrase)
    _write(store, "a")
    before = _header(path)
    with store.lock():
        store.save(_delta("b"))
    after = _header(path)
    assert after["gen"] != before["gen"]
    assert {k: after[k] for k in ("kdf", "salt", "n", "r", "p")} == {
        k: before[k] for k in ("kdf", "salt", "n", "r", "p")
    }
    assert _names(_state(_store(path, passphrase))) == {"b"}


def _snapshot_cut(path: Path, keep: Callable[[bytes], bytes]) -> None:
    """The file as its header line and ``keep(snapshot record with its newline)``."""
    blob = path.read_bytes()
    newline = blob.find(b"\n") + 1
    path.write_bytes(blob[:newline] + keep(blob[newline:]))


@pytest.mark.parametrize(
    ("keep", "says"),
    [
        (lambda record: record[:-1], "is truncated"),  # all but its newline
        (lambda record: record[:2], "is truncated"),  # within its length
        (lambda record: b"123456789012", "is truncated"),  # a 12-digit length, cut off
        (lambda record: b"1234567890123", "the encrypted snapshot has no valid length"),
        (lambda record: b"12a", "the encrypted snapshot has no valid length"),
    ],
    ids=["newline", "length", "12 digits", "13 digits", "not digits"],
)
def test_a_file_cut_off_in_its_snapshot_is_told_from_a_damaged_one(
    tmp_path: Path, keep: Callable[[bytes], bytes], says: str
) -> None:
    # A copy or write that stopped early says "truncated"; a length of more than 12
    # digits, or not digits, cannot be one a writer wrote.
    path = tmp_path / "c.bin"
    _write(_store(path), "a")
    _snapshot_cut(path, keep)
    with pytest.raises(CorruptCacheError, match=says):
        _store(path, read_only=True).load()


def test_a_file_must_start_with_its_header(tmp_path: Path) -> None:
    # A blank line before the header line is not the format (a tool or editor added it).
    path = tmp_path / "c.bin"
    _write(_store(path), "a")
    path.write_bytes(b"\n" + path.read_bytes())
    with pytest.raises(CorruptCacheError, match="the file header is not valid JSON"):
        _store(path, read_only=True).load()


@pytest.mark.parametrize("gen", ["a", "Z9", "x" * 64])
def test_a_file_with_any_gen_of_1_to_64_letters_and_digits_opens(gen: str) -> None:
    source = crypto.FernetKeys((KEY,))
    header = crypto.Header(crypto.fingerprint(KEY), gen)
    blob = header.to_bytes() + b"\n" + crypto.seal(b"{}", KEY, header, 0)
    assert crypto.open_file(blob, source)[2] == b"{}"
    longer = crypto.Header(crypto.fingerprint(KEY), gen + "x" * (65 - len(gen)))
    with pytest.raises(CorruptCacheError, match="invalid 'gen'"):
        crypto.open_file(longer.to_bytes() + b"\n" + crypto.seal(b"{}", KEY, longer, 0), source)


def _counting_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_an_append_fsyncs_nothing_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fsync of a record runs after the lock is released (sync): under the lock, an
    # append of a store that has nothing unsynced makes no fsync at all.
    path = tmp_path / "c.bin"
    _write(_store(path), "a")
    store = _store(path)
    _state(store)
    synced = _counting_fsyncs(monkeypatch)
    with store.lock():
        store.append(_delta("b"), _unused)
        assert synced == []
    store.sync()
    assert len(synced) == 1
    store.sync()  # nothing appended since
    assert len(synced) == 1


def test_after_an_fsync_that_fails_the_next_write_replaces_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a failed fsync the kernel's copy of the file is in doubt: the next write
    # does not append to it, it writes a new file.
    path = tmp_path / "c.bin"
    store = _appended_with_failing_fsync(path, monkeypatch)
    with pytest.raises(StoreError, match="Input/output error"):
        store.sync()
    monkeypatch.undo()
    inode = path.stat().st_ino
    with store.lock():
        store.append(_delta("c"), lambda: _apply_all("a", "b", "c"))
    store.sync()
    assert path.stat().st_ino != inode
    assert _names(_state(_store(path))) == {"a", "b", "c"}


def test_a_new_store_on_a_missing_file_sees_no_change(tmp_path: Path) -> None:
    store = _store(tmp_path / "c.bin")
    assert store.changed() is False  # nothing there, nothing loaded: nothing to reload
    assert store.read_changes() is None
    assert store.load() is None
    assert store.changed() is False


def test_a_link_planted_at_the_temporary_name_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The temporary file's name is random; were it guessed, a link planted there must
    # make the write fail, not send the tokens where the link points.
    from msal_keyring_cache import files

    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "0" * (2 * n))
    victim = tmp_path / "victim"
    victim.write_bytes(b"unchanged")
    (tmp_path / ".c.bin.000000000000.tmp").symlink_to(victim)
    store = _store(tmp_path / "c.bin")
    with store.lock(), pytest.raises(StoreError, match="Cannot write"):
        store.save(_delta("a"))
    assert victim.read_bytes() == b"unchanged"
    assert not (tmp_path / "c.bin").exists()


def test_a_file_replaced_just_after_this_write_is_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another writer (one that does not take the lock) renames its file over ours right
    # after our rename: the store must know the file it wrote is not the one there now.
    path = tmp_path / "c.bin"
    other = tmp_path / "other.bin"
    _write(_store(other), "them")  # the same size as ours: only the inode tells
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        real(src, dst)
        if str(dst) == str(path) and other.exists():
            real(other, path)

    store = _store(path)
    monkeypatch.setattr(os, "replace", replace)
    with store.lock():
        store.save(_delta("ours"))
    monkeypatch.undo()
    assert store.changed() is True
    assert _names(_state(store)) == {"them"}
