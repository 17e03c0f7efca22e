"""PersistentTokenCache at its edges, through its public API and a real encrypted file.

Written for mutants of cache.py that no test killed: what ``backend_info`` and ``repr``
say, ``reload``, ``close``, a store holding something that is not a cache, msal's
``modify`` outside a search, the age rule of ``merge``, msal's ``has_state_changed``, a
prune folded into a deserialize, a removal whose fsync failed, a journal record that is
not JSON, and a store without a change counter.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import MemoryStore, PersistentTokenCache, crypto, generate_key
from msal_keyring_cache.cache import BackendInfo
from msal_keyring_cache.errors import CacheError, ConfigError, CorruptCacheError, StoreError
from msal_keyring_cache.locking import CrossProcessLock
from msal_keyring_cache.stores.credential import KeyringStore
from msal_keyring_cache.stores.file import EncryptedFileStore
from tests.fakes import ScopedKeyring
from tests.test_keyring_store import memory_keyring

__all__ = ["memory_keyring"]  # the fixture, shared

KEY = generate_key()
RT = "RefreshToken"
AT = {"credential_type": "AccessToken", "secret": "a", "expires_on": "9999999999"}


def _file_cache(path: Path) -> PersistentTokenCache:
    return PersistentTokenCache(EncryptedFileStore(str(path), crypto.FernetKeys((KEY,))))


def _rt(secret: str, **ages: Any) -> dict[str, Any]:
    entry = {"credential_type": RT, "secret": secret, "home_account_id": "h",
             "environment": "login.example", "client_id": "c"}  # fmt: skip
    entry.update(ages)
    return entry


def _secrets(cache: PersistentTokenCache) -> dict[str, str]:
    return {k: v["secret"] for k, v in json.loads(cache.serialize()).get(RT, {}).items()}


def test_backend_info_says_which_store_and_why() -> None:
    cache = PersistentTokenCache(MemoryStore())
    assert str(cache.backend_info) == "memory (store given explicitly)"
    assert cache.backend_info.details == {}
    assert repr(cache) == "<PersistentTokenCache backend=memory (store given explicitly)>"
    info = BackendInfo("file", "chosen", MemoryStore().describe())
    assert info.details == info.description.as_dict()  # type: ignore[union-attr]
    assert PersistentTokenCache(MemoryStore(), backend_info=info).backend_info is info


def test_reload_takes_in_what_another_cache_object_wrote(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    mine, theirs = _file_cache(path), _file_cache(path)
    theirs.deserialize(json.dumps({RT: {"a": _rt("one")}}))
    mine.reload()
    assert _secrets(mine) == {"a": "one"}
    theirs.merge(json.dumps({RT: {"b": _rt("two")}}))  # a journal record on top
    mine.reload()
    assert _secrets(mine) == {"a": "one", "b": "two"}


def test_a_store_holding_something_else_is_an_empty_cache_replaced_on_the_next_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.bin"
    path.write_bytes(crypto.encrypt(b"[1, 2, 3]", crypto.FernetKeys((KEY,))))  # JSON, no cache
    path.chmod(0o600)
    cache = _file_cache(path)
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        assert json.loads(cache.serialize()) == {}
    assert "store holds data that is not an msal token cache; starting empty" in caplog.text
    cache.merge(json.dumps({RT: {"a": _rt("one")}}))
    assert _secrets(_file_cache(path)) == {"a": "one"}


def test_modify_outside_a_search_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    cache = _file_cache(path)
    key = cache.key_makers[RT](**_rt("old"))
    cache.deserialize(json.dumps({RT: {key: _rt("old")}}))
    cache.modify(RT, _rt("old"), {"secret": "new"})
    assert _secrets(_file_cache(path)) == {key: "new"}


def test_merge_judges_age_by_msal_s_fields_and_treats_unknown_as_oldest() -> None:
    cache = PersistentTokenCache(MemoryStore())
    cache.deserialize(json.dumps({RT: {
        "by-cached-at": _rt("mine", cached_at="200"),
        "bad-time": _rt("mine", last_modification_time="soon", cached_at="50"),
        "no-time": _rt("mine"),
        "newer-mine": _rt("mine", last_modification_time="300", cached_at="1"),
    }}))  # fmt: skip
    taken = cache.merge(json.dumps({RT: {
        "by-cached-at": _rt("theirs", cached_at="100"),  # older by cached_at: ignored
        "bad-time": _rt("theirs", cached_at="60"),  # newer than the fallback 50: taken
        "no-time": _rt("theirs"),  # both unknown (0): not older, taken
        "newer-mine": _rt("theirs", last_modification_time="299", cached_at="999"),
    }}))  # fmt: skip
    assert taken == 2
    assert _secrets(cache) == {"by-cached-at": "mine", "bad-time": "theirs", "no-time": "theirs",
                               "newer-mine": "mine"}  # fmt: skip


def test_has_state_changed_keeps_msal_s_meaning() -> None:
    cache = PersistentTokenCache(MemoryStore())
    cache.deserialize(json.dumps({RT: {"a": _rt("one")}}))
    assert cache.has_state_changed is False  # msal: deserialize() resets it
    assert cache.merge(json.dumps({RT: {"a": _rt("one")}})) == 0
    assert cache.has_state_changed is False  # nothing new
    cache.merge(json.dumps({RT: {"b": _rt("two")}}))
    assert cache.has_state_changed is True
    cache.serialize()
    cache.has_state_changed = False
    cache.clear()
    assert cache.has_state_changed is True


def test_close_releases_the_store_and_the_http_cache(tmp_path: Path) -> None:
    closed: list[str] = []

    class Answers(dict):  # type: ignore[type-arg]
        def close(self) -> None:
            closed.append("http")

    cache = _file_cache(tmp_path / "c.bin")
    cache.deserialize(json.dumps({RT: {"a": _rt("one")}}))
    cache.http_cache = Answers()
    cache.close()
    assert closed == ["http"]
    cache.http_cache = {}  # a plain mapping has nothing to close
    cache.close()
    assert _secrets(_file_cache(tmp_path / "c.bin")) == {"a": "one"}


def test_deserialize_takes_entries_msal_could_not_use_but_merge_refuses_them() -> None:
    # msal's own deserialize() does not insist on the fields msal needs; merge() does.
    incomplete = json.dumps({"AccessToken": {"k": {"credential_type": "AccessToken"}}})
    cache = PersistentTokenCache(MemoryStore())
    cache.deserialize(incomplete)
    assert json.loads(cache.serialize()) == json.loads(incomplete)
    with pytest.raises(ConfigError, match=r"AccessToken entry 1 .*nothing was imported"):
        cache.merge(incomplete)
    with pytest.raises(ConfigError, match=r"^Not an msal token cache: the cache to import is not"):
        cache.merge("{not json")


def test_after_a_clear_this_process_still_takes_in_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    mine, theirs = _file_cache(path), _file_cache(path)
    mine.deserialize(json.dumps({RT: {"a": _rt("one")}}))
    mine.clear()
    theirs.merge(json.dumps({RT: {"b": _rt("two")}}))
    assert _secrets(mine) == {"b": "two"}


def test_an_entry_with_a_time_is_newer_than_one_without() -> None:
    cache = PersistentTokenCache(MemoryStore())
    cache.deserialize(json.dumps({RT: {"k": _rt("mine")}}))  # no time: the oldest
    assert cache.merge(json.dumps({RT: {"k": _rt("theirs", last_modification_time="0")}})) == 1
    assert _secrets(cache) == {"k": "theirs"}


def test_a_change_whose_write_failed_survives_another_process_s_write(tmp_path: Path) -> None:
    # A's writes fail (another process holds the lock past A's timeout); B then writes.
    # A must keep its changes on top of B's (a refresh token the identity provider already
    # rotated would be lost otherwise), show them, and store them with its next write.
    import subprocess

    from msal_keyring_cache.errors import CacheError
    from tests.helpers import PYTHON, ROOT, child_env

    path = tmp_path / "c.bin"
    a = PersistentTokenCache(
        EncryptedFileStore(str(path), crypto.FernetKeys((KEY,)), lock_timeout=0.1)
    )
    gone = a.key_makers[RT](**_rt("x"))
    a.deserialize(json.dumps({RT: {gone: _rt("x"), "kept": _rt("k")}}))
    holder = subprocess.Popen(
        [PYTHON, "-m", "tests.lock_worker", "hold", str(path) + ".lock"],
        cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(CacheError):
            a.merge(json.dumps({RT: {"mine": _rt("rotated")}, "AccessToken": {"at": AT}}))
        with pytest.raises(CacheError):
            a.modify(RT, _rt("x"))  # msal removes an entry
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.communicate(timeout=30)
    b = _file_cache(path)  # B, meanwhile, rewrites the whole file (A must reload it)
    state = json.loads(b.serialize())
    state[RT]["theirs"] = _rt("b")
    b.deserialize(json.dumps(state))
    assert _secrets(a) == {"kept": "k", "mine": "rotated", "theirs": "b"}
    assert json.loads(a.serialize())["AccessToken"] == {"at": AT}  # a table B never had
    a.merge(json.dumps({RT: {"later": _rt("l")}}))  # the next write stores the pending ones
    assert _secrets(_file_cache(path)) == {
        "kept": "k", "mine": "rotated", "theirs": "b", "later": "l"
    }  # fmt: skip
    assert json.loads(_file_cache(path).serialize())["AccessToken"] == {"at": AT}


def test_a_sign_in_whose_write_fails_raises(idp: Any, tmp_path: Path) -> None:
    # Only msal's refresh grant is let through (its second call writes again and raises);
    # any other sign-in whose write fails gets the error at once.
    import subprocess

    from msal_keyring_cache.errors import CacheError
    from tests.helpers import PYTHON, ROOT, child_env

    path = tmp_path / "c.bin"
    cache = PersistentTokenCache(
        EncryptedFileStore(str(path), crypto.FernetKeys((KEY,)), lock_timeout=0.1)
    )
    assert cache.http_cache is None  # the default: no persisted discovery answers
    app = idp.public_app(token_cache=cache)
    holder = subprocess.Popen(
        [PYTHON, "-m", "tests.lock_worker", "hold", str(path) + ".lock"],
        cwd=ROOT, env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(CacheError):
            app.acquire_token_by_username_password("ann@example.com", "pw", ["User.Read"])
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.communicate(timeout=30)


def test_a_prune_kept_in_memory_is_folded_into_a_deserialize_of_other_tables(
    tmp_path: Path,
) -> None:
    # msal prunes an expired access token while it searches (memory only, written by the
    # next write); the next write here is a deserialize whose state has no AccessToken table.
    path = tmp_path / "c.bin"
    cache = _file_cache(path)
    expired = {**AT, "home_account_id": "h", "environment": "e", "client_id": "c",
               "realm": "r", "target": "s", "expires_on": "1"}  # fmt: skip
    key = cache.key_makers["AccessToken"](**expired)
    cache.deserialize(json.dumps({"AccessToken": {key: expired}, RT: {"a": _rt("one")}}))
    assert list(cache.search("AccessToken", target=["s"])) == []  # and pruned
    cache.deserialize(json.dumps({RT: {"b": _rt("two")}}))
    assert json.loads(_file_cache(path).serialize()) == {RT: {"b": _rt("two")}}


def test_a_removal_whose_fsync_failed_stays_removed_over_another_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A's record reaches the file but its fsync fails: A's caller gets the error and the
    # removal stays pending. B (which read the file, the removal included) then writes;
    # A takes B's change in and puts its pending removal back on top: of an entry that
    # is no longer there.
    path = tmp_path / "c.bin"
    a = _file_cache(path)
    gone = a.key_makers[RT](**_rt("x"))
    a.deserialize(json.dumps({RT: {gone: _rt("x"), "kept": _rt("k")}}))
    fsync, failing = os.fsync, [True]

    def flaky(fd: int) -> None:
        if failing:
            raise OSError(errno.EIO, "Input/output error")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky)
    with pytest.raises(StoreError, match="Input/output error"):
        a.modify(RT, _rt("x"))  # msal removes an entry
    failing.clear()
    b = _file_cache(path)
    assert _secrets(b) == {"kept": "k"}
    b.merge(json.dumps({RT: {"theirs": _rt("b")}}))
    assert _secrets(a) == {"kept": "k", "theirs": "b"}
    a.merge(json.dumps({RT: {"later": _rt("l")}}))  # writes the pending removal again
    assert _secrets(_file_cache(path)) == {"kept": "k", "theirs": "b", "later": "l"}


def test_a_journal_record_that_is_not_json_is_reported_as_such(tmp_path: Path) -> None:
    # Only a writer holding the key can seal a record (a bug, another tool): the reader
    # says which part of the file is bad, and overwrites nothing.
    path = tmp_path / "c.bin"
    writer = _file_cache(path)
    writer.deserialize(json.dumps({RT: {"a": _rt("one")}}))
    with writer.store.lock():
        writer.store.append(b"not json", lambda: b"{}")
    writer.store.sync()
    size = path.stat().st_size
    with pytest.raises(CorruptCacheError, match=r"^a journal record is not valid JSON$"):
        _file_cache(path).serialize()
    assert path.stat().st_size == size


def test_a_store_without_a_change_counter_maps_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A memory (or keyring) store has no shared counter: the cache's stand-in names no
    # file, so no file (here, in the working directory) is ever taken for one.
    monkeypatch.chdir(tmp_path)
    opened: list[str] = []
    real_open = os.open

    def spy(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    cache = PersistentTokenCache(MemoryStore())
    cache.merge(json.dumps({RT: {"a": _rt("one")}}))
    assert [e["secret"] for e in cache.search(RT)] == ["one"]
    assert [name for name in opened if name] == []


def test_a_write_that_takes_the_lock_itself_leaves_it_free(tmp_path: Path) -> None:
    # A whole rewrite (deserialize) and a cache without group commit take the store's lock
    # with a plain wait, not a try: after the write it must be free for other processes.
    path = tmp_path / "c.bin"
    cache = _file_cache(path)
    cache.deserialize(json.dumps({RT: {"r": _rt("r")}}))
    with CrossProcessLock(str(path) + ".lock", 0):  # another open of the lock file
        pass
    cache.group_commit = False
    cache.merge(json.dumps({RT: {"s": _rt("s")}}))
    with CrossProcessLock(str(path) + ".lock", 0):
        pass
    assert _secrets(_file_cache(path)) == {"r": "r", "s": "s"}


class _OnceUnreadable(ScopedKeyring):
    """The next ``refuse`` reads fail, as a credential store that is briefly locked."""

    refuse = 0

    def get_password(self, service: str, username: str) -> Any:
        if type(self).refuse:
            type(self).refuse -= 1
            raise RuntimeError("the collection is locked")
        return super().get_password(service, username)


def test_a_write_whose_catch_up_read_fails_raises_and_overwrites_nothing(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
) -> None:
    # A whole-value store: writing A's state without B's change would delete B's token.
    def cache() -> PersistentTokenCache:
        store = KeyringStore(
            "catch-up", "cache", lock_path=str(tmp_path / "kr.lock"), keyring=_OnceUnreadable()
        )
        return PersistentTokenCache(store)

    a = cache()
    a.merge(json.dumps({RT: {"a": _rt("a")}}))
    cache().merge(json.dumps({RT: {"b": _rt("b")}}))  # B writes after A's last read
    _OnceUnreadable.refuse = 1
    with pytest.raises(CacheError):
        a.merge(json.dumps({RT: {"mine": _rt("m")}}))
    assert _secrets(cache()) == {"a": "a", "b": "b"}  # nothing overwritten
    a.merge(json.dumps({RT: {"later": _rt("l")}}))  # readable again: A's change kept pending
    assert _secrets(cache()) == {"a": "a", "b": "b", "mine": "m", "later": "l"}
