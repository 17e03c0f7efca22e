"""KeyringStore behaviours that surviving mutants showed no test pinned (issue 17): setting
damaged data aside (its name, what the stamp lists first, a copy the backend refuses),
learning a size limit from refusals (UTF-16 units as Windows counts them), a save or a
set-aside that dies midway, re-reading chunks that did not add up, forgetting the backend.

Everything runs in this process (mutmut only runs tests that reach the code in-process):
a backend call that "kills the process" raises :class:`Crash`, a BaseException nothing in
the store catches, and a fresh store then plays the next process.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, ClassVar, Optional

import pytest

from msal_keyring_cache import (
    BackendUnavailableError,
    ConfigError,
    CorruptCacheError,
    MemoryStore,
    StoreError,
)
from msal_keyring_cache.stores.base import validate_cache
from msal_keyring_cache.stores.credential import KeyringStore, parse_manifest, parse_stamp
from msal_keyring_cache.stores.secret_service import DirectSecretService
from tests.fakes import CredWriteError, MemoryKeyring, ScopedKeyring
from tests.services_secret_service import SecretService
from tests.test_keyring_store import memory_keyring

__all__ = ["memory_keyring"]  # the fixture, shared

SVC, ACCT = "test-service", "token-cache"
ASIDE = re.compile(r"token-cache\.corrupt-(\d{8}T\d{6})-[0-9a-f]{6}")


class Crash(BaseException):
    """The process dies here: nothing in the store catches it, nothing after it runs."""


class Units(ScopedKeyring):
    """Windows Credential Manager's real limit: 2,560 bytes of UTF-16 per entry, so a
    character outside the BMP (an emoji in a display name) takes two of its 1,280 units.

    ``log`` records every write tried, refused or not, in order (with the fsyncs a test
    adds); ``die_at`` makes the n-th backend call of ``die_on`` never return.
    """

    units: ClassVar[int] = 1280
    log: ClassVar[list[tuple[str, str]]] = []
    die_at: ClassVar[int] = 0
    die_on: ClassVar[str] = "set"
    seen: ClassVar[int] = 0
    refuse_delete: ClassVar[bool] = False

    def _maybe_die(self, what: str) -> None:
        if type(self).die_at and what == type(self).die_on:
            type(self).seen += 1
            if type(self).seen == type(self).die_at:
                raise Crash(f"killed at {what} #{type(self).seen}")

    def set_password(self, service: str, username: str, password: str) -> None:
        type(self).log.append(("set", f"{service}\0{username}"))
        self._maybe_die("set")
        if len(password.encode("utf-16-le")) // 2 > type(self).units:
            raise CredWriteError(1783, "CredWrite", "The stub received bad data.")
        super().set_password(service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        self._maybe_die("delete")
        if type(self).refuse_delete:
            from keyring.errors import PasswordDeleteError

            raise PasswordDeleteError("Access denied")
        super().delete_password(service, username)


class MissingChunks(ScopedKeyring):
    """Answers "not found" for the first ``misses`` chunk reads: a reader that met a
    writer between generations (the chunks it named were just deleted)."""

    misses: ClassVar[int] = 0

    def get_password(self, service: str, username: str) -> Optional[str]:
        if "|" in service and type(self).misses > 0:
            type(self).misses -= 1
            return None
        return super().get_password(service, username)


@pytest.fixture
def units(memory_keyring: type[ScopedKeyring], monkeypatch: pytest.MonkeyPatch) -> type[Units]:
    monkeypatch.setattr(Units, "units", 1280)
    monkeypatch.setattr(Units, "log", [])
    monkeypatch.setattr(Units, "die_at", 0)
    monkeypatch.setattr(Units, "die_on", "set")
    monkeypatch.setattr(Units, "seen", 0)
    monkeypatch.setattr(Units, "refuse_delete", False)
    return Units


def store_on(tmp_path: Path, backend: Any, **kwargs: Any) -> KeyringStore:
    kwargs.setdefault("keyring_timeout", 5.0)
    return KeyringStore(SVC, ACCT, lock_path=str(tmp_path / "kr.lock"), keyring=backend, **kwargs)


def cache_text(length: int, fill: str = "a") -> bytes:
    """A JSON object (what msal saves) of exactly ``length`` characters."""
    head, tail = '{"v": "', '"}'
    body = (fill * length)[: length - len(head) - len(tail)]
    text = head + body + tail
    assert len(text) == length
    return text.encode()


def save(store: KeyringStore, data: bytes) -> None:
    with store.lock():
        store.save(data)


def stamp(tmp_path: Path) -> dict[str, Any]:
    return parse_stamp((tmp_path / "kr.stamp").read_bytes())


def chunk_entries() -> dict[str, str]:
    return {s: v for (s, _), v in ScopedKeyring.entries.items() if "|" in s}


def aside_entries() -> dict[str, str]:
    return {a: v for (s, a), v in ScopedKeyring.entries.items() if a != ACCT}


# -- damaged data: read how often, named how, listed where ------------------------------


def test_a_garbled_entry_is_read_once_then_once_under_the_lock_and_kept_aside_by_utc_time(
    tmp_path: Path,
    units: type[Units],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Local time far from UTC: the name's time must still be UTC (sorts across zones).
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        ScopedKeyring.entries[(SVC, ACCT)] = "not json {"
        store = store_on(tmp_path, Units())
        before = datetime.datetime.now(datetime.timezone.utc)
        with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
            assert store.load() is None
        after = datetime.datetime.now(datetime.timezone.utc)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    # Not transient damage: one read, then one under the lock; no retries in between.
    assert ScopedKeyring.calls["get"] == 2
    assert (SVC, ACCT) not in ScopedKeyring.entries
    (name, value), *more = aside_entries().items()
    assert not more
    assert value == "not json {"
    found = ASIDE.fullmatch(name)
    assert found, name
    when = datetime.datetime.strptime(found[1], "%Y%m%dT%H%M%S").replace(
        tzinfo=datetime.timezone.utc
    )
    slack = datetime.timedelta(seconds=2)
    assert before.replace(microsecond=0) - slack <= when <= after + slack
    assert stamp(tmp_path)["aside"] == [name]
    assert f"kept aside as account {name!r}" in caplog.text
    assert "not an msal token cache" in caplog.text
    # Nothing changed since that load: no need to read again.
    assert store.changed() is False
    gets = ScopedKeyring.calls["get"]
    assert store.load() is None
    assert ScopedKeyring.calls["get"] == gets + 1


def test_an_empty_entry_is_not_copied_aside_and_the_log_says_so(
    tmp_path: Path, units: type[Units], caplog: pytest.LogCaptureFixture
) -> None:
    ScopedKeyring.entries[(SVC, ACCT)] = ""
    store = store_on(tmp_path, Units())
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        assert store.load() is None
    assert aside_entries() == {}
    assert "kept aside" not in caplog.text
    assert "left in place" in caplog.text
    save(store, b"{}")
    assert ScopedKeyring.entries == {(SVC, ACCT): "{}"}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("not json {", "it is not an msal token cache"),
        ("msal-keyring-cache-manifest:{", "its chunk manifest does not parse"),
    ],
)
def test_a_read_only_store_says_why_the_entry_cannot_be_read(
    tmp_path: Path, units: type[Units], value: str, why: str
) -> None:
    ScopedKeyring.entries[(SVC, ACCT)] = value
    store = store_on(tmp_path, Units(), read_only=True)
    with pytest.raises(CorruptCacheError, match=re.escape(f"cannot be read: {why}")):
        store.load()
    assert ScopedKeyring.entries == {(SVC, ACCT): value}
    assert ScopedKeyring.calls["get"] == 2  # not retried: only missing chunks are


@pytest.mark.parametrize("read_only", [False, True])
def test_chunks_missing_on_two_reads_are_read_again_never_called_damage(
    tmp_path: Path,
    memory_keyring: type[ScopedKeyring],
    monkeypatch: pytest.MonkeyPatch,
    read_only: bool,
) -> None:
    data = cache_text(1000)
    save(store_on(tmp_path, ScopedKeyring(), max_value_length=300), data)
    before = dict(ScopedKeyring.entries)
    monkeypatch.setattr(MissingChunks, "misses", 2)
    reader = store_on(tmp_path, MissingChunks(), read_only=read_only)
    assert reader.load() == data
    assert ScopedKeyring.entries == before  # nothing kept aside, nothing deleted


def test_a_damaged_value_too_large_to_copy_aside_stays_and_the_error_names_the_refusal(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written by a tool on a store with a larger limit; this one refuses to copy it.
    ScopedKeyring.entries[(SVC, ACCT)] = "x" * 600
    monkeypatch.setattr(Units, "units", 300)
    store = store_on(tmp_path, Units())
    with pytest.raises(StoreError) as caught:
        store.load()
    assert not isinstance(caught.value, BackendUnavailableError)
    text = str(caught.value)
    assert "(set password: CredWriteError (error 1783))" in text
    assert "(tests.test_credential_mutants.Units)" in text
    assert ScopedKeyring.entries[(SVC, ACCT)] == "x" * 600  # never deleted uncopied


# -- learning the limit from refusals --------------------------------------------------


@pytest.mark.parametrize(
    ("length", "limit", "learnt", "chunks"),
    [
        (1280, 1000, 640, 2),  # exactly Windows' 1,280 refused: half of it
        (1000, 900, 500, 2),  # half the refused length
        (400, 399, 200, 2),  # half is exactly the smallest chunk: still accepted
        (2000, 1280, 1280, 2),  # longer than Windows' limit: that limit
    ],
)
def test_a_refused_value_teaches_the_limit_with_one_refused_write(
    tmp_path: Path,
    units: type[Units],
    monkeypatch: pytest.MonkeyPatch,
    length: int,
    limit: int,
    learnt: int,
    chunks: int,
) -> None:
    monkeypatch.setattr(Units, "units", limit)
    store = store_on(tmp_path, Units())
    data = cache_text(length)
    save(store, data)
    assert stamp(tmp_path)["limit"] == learnt
    parts = chunk_entries()
    assert len(parts) == chunks
    assert max(len(v) for v in parts.values()) == learnt
    # One refused write of the whole value, then the chunks, then the manifest.
    assert len(Units.log) == 1 + chunks + 1
    assert store_on(tmp_path, Units()).load() == data


def test_a_backend_whose_limit_is_below_the_smallest_chunk_fails_the_save_and_says_why(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    save(store_on(tmp_path, Units()), b'{"v": "old"}')
    monkeypatch.setattr(Units, "units", 150)
    store = store_on(tmp_path, Units())
    with pytest.raises(StoreError) as caught:
        save(store, cache_text(1000))  # 500 refused, then 250, then 125 is too small
    assert not isinstance(caught.value, BackendUnavailableError)
    text = str(caught.value)
    assert "(set password: CredWriteError (error 1783))" in text
    assert "(tests.test_credential_mutants.Units)" in text
    assert chunk_entries() == {}  # every refused generation's chunks deleted
    assert store_on(tmp_path, Units()).load() == b'{"v": "old"}'


def test_a_configured_length_the_backend_refuses_is_halved_from_there(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Units, "units", 900)
    store = store_on(tmp_path, Units(), max_value_length=1000)
    data = cache_text(3000)
    save(store, data)
    parts = chunk_entries()
    assert sorted(len(v) for v in parts.values()) == [500] * 6
    assert stamp(tmp_path)["limit"] == 500
    assert store_on(tmp_path, Units()).load() == data


def test_a_chunk_refused_midway_takes_its_generation_with_it(
    tmp_path: Path, units: type[Units]
) -> None:
    # 1,280 characters fit; 700 emoji are 1,400 UTF-16 units: the second chunk is refused
    # after the first was written. Those must go; the next generation is half as long.
    text = '{"v": "' + "a" * 1273 + "\U0001f600" * 700 + '"}'
    data = text.encode()
    store = store_on(tmp_path, Units())
    save(store, data)
    manifest = parse_manifest(ScopedKeyring.entries[(SVC, ACCT)])
    assert manifest is not None
    gen, count, digest = manifest
    assert digest == hashlib.sha256(data).hexdigest()
    assert set(chunk_entries()) == {f"{SVC}|{ACCT}|{gen}.{i}" for i in range(count)}
    assert stamp(tmp_path)["limit"] == 640
    assert stamp(tmp_path)["gens"] == [gen]
    assert store_on(tmp_path, Units()).load() == data


# -- what the stamp lists first, so a process that dies leaves nothing behind --------------


def test_a_chunked_save_killed_after_its_first_chunk_keeps_the_old_data_and_clear_takes_all(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    ScopedKeyring.entries[(SVC, ACCT)] = "damaged"
    first = store_on(tmp_path, Units())
    assert first.load() is None  # kept aside: listed in the stamp
    old = cache_text(3000, "1")
    save(first, old)
    monkeypatch.setattr(Units, "die_at", 2)  # the new generation's 1st chunk is written
    dying = store_on(tmp_path, Units())
    with dying.lock():
        dying.load()
        with pytest.raises(Crash):
            dying.save(cache_text(3000, "2"))
    gens = {s.rsplit("|", 1)[1].split(".")[0] for s in chunk_entries()}
    assert len(gens) == 2  # the old generation and the dead save's first chunk
    monkeypatch.setattr(Units, "die_at", 0)
    after = store_on(tmp_path, Units())
    assert after.load() == old
    save(after, cache_text(3000, "3"))  # a later save keeps the orphans listed
    after.clear()
    assert ScopedKeyring.entries == {}


def test_a_set_aside_killed_before_it_frees_the_entry_leaves_nothing_clear_misses(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    ScopedKeyring.entries[(SVC, ACCT)] = "damaged once"
    first = store_on(tmp_path, Units(), max_value_length=500)
    assert first.load() is None
    save(first, cache_text(1200))  # three chunks, listed in the stamp
    ScopedKeyring.entries[(SVC, ACCT)] = "damaged twice"  # over the manifest
    monkeypatch.setattr(Units, "die_on", "delete")
    monkeypatch.setattr(Units, "die_at", 1)  # the copy is made, the entry never freed
    with pytest.raises(Crash):
        store_on(tmp_path, Units()).load()
    assert len(aside_entries()) == 2
    assert len(chunk_entries()) == 3
    monkeypatch.setattr(Units, "die_at", 0)
    store_on(tmp_path, Units()).clear()
    assert ScopedKeyring.entries == {}


@pytest.mark.parametrize("stamp_lost", [False, True])
def test_chunks_that_fail_their_digest_are_kept_aside_and_their_generation_listed_once(
    tmp_path: Path, units: type[Units], stamp_lost: bool
) -> None:
    save(store_on(tmp_path, Units(), max_value_length=500), cache_text(1200))
    (gen,) = stamp(tmp_path)["gens"]
    if stamp_lost:  # the lock directory was emptied (a reboot clears /run/user)
        (tmp_path / "kr.stamp").unlink()
    ScopedKeyring.entries[(f"{SVC}|{ACCT}|{gen}.1", ACCT)] = "b" * 500
    store = store_on(tmp_path, Units())
    assert store.load() is None
    assert stamp(tmp_path)["gens"] == [gen]
    (copy,) = aside_entries().values()
    assert parse_manifest(copy) is not None
    assert parse_manifest(copy)[0] == gen
    store.clear()
    assert ScopedKeyring.entries == {}


def test_the_stamp_is_on_disk_before_the_first_chunk_or_copy_it_lists(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fsync

    def fsync(fd: int) -> None:
        Units.log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = store_on(tmp_path, Units(), max_value_length=500)
    save(store, cache_text(1200))

    def first_set_after_stamp_fsync(wanted: str) -> None:
        synced = False
        for kind, what in Units.log:
            if kind == "fsync" and "kr.stamp" in what:
                synced = True
            elif kind == "set" and wanted in what:
                assert synced, Units.log
                return
        raise AssertionError(f"no write of {wanted!r}: {Units.log}")

    first_set_after_stamp_fsync(f"{SVC}|{ACCT}|")
    Units.log.clear()
    ScopedKeyring.entries[(SVC, ACCT)] = "damaged"
    assert store_on(tmp_path, Units()).load() is None
    first_set_after_stamp_fsync(f"{ACCT}.corrupt-")


# -- forgetting the backend ----------------------------------------------------------------


def test_a_forgotten_backend_is_resolved_again_and_its_data_read(
    tmp_path: Path, memory_keyring: type[ScopedKeyring], monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyring.core

    MemoryKeyring.reset()
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.fakes.MemoryKeyring")
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    MemoryKeyring.entries[(SVC, ACCT)] = '{"where": "keyring\'s choice"}'
    try:
        store = store_on(tmp_path, ScopedKeyring(), read_only=True)
        assert store.prime() is None
        assert store.probed_empty
        store.forget_backend()
        assert not store.probed_empty
        assert store.changed()
        assert store.load() == b'{"where": "keyring\'s choice"}'
        assert store.keyring_name == "tests.fakes.MemoryKeyring"
    finally:
        MemoryKeyring.reset()


@pytest.mark.secret_service
def test_after_rediscovery_calls_go_through_keyring_not_the_kept_connection(
    tmp_path: Path, use_secret_service: SecretService
) -> None:
    import uuid

    service = f"forget-{uuid.uuid4().hex[:8]}"

    def make() -> KeyringStore:
        return KeyringStore(
            service, "cache", lock_path=str(tmp_path / "ss.lock"), keyring_timeout=10
        )

    data = json.dumps({"AccessToken": {}}).encode()
    first = make()
    with first.lock():
        first.save(data)
    first.close()
    again = make()
    again.resolve()
    assert again.direct
    again.rediscover()  # what build_cache does when the remembered backend failed
    assert not again.direct
    assert again.load() == data
    assert not again.direct  # keyring's backend was asked, not a new kept connection
    with again.lock():
        again.clear()
    again.close()


# -- small things callers show ----------------------------------------------------------


def test_a_read_only_stores_lock_never_waits_and_creates_no_file(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
) -> None:
    store = store_on(tmp_path, ScopedKeyring(), read_only=True)
    lock = store.lock()
    assert lock.attempt() is True
    assert not lock.held
    assert list(tmp_path.iterdir()) == []
    assert store.rendezvous() is None  # writes alone: it never writes
    # A writing store's writers meet at its lock file to write together (group commit).
    writer = store_on(tmp_path, ScopedKeyring())
    assert writer.rendezvous() == str(tmp_path / "kr.lock")


def test_memory_store_says_it_keeps_nothing() -> None:
    facts = MemoryStore().describe()
    assert facts.location == "process memory"
    assert facts.protection_text == "none (not persisted)"


def test_a_bad_entry_under_a_long_key_quotes_117_characters_of_it() -> None:
    key = "k" * 300
    with pytest.raises(ConfigError) as caught:
        validate_cache({"RefreshToken": {key: "not an object"}}, name_keys=True)
    text = str(caught.value)
    assert repr(key[:117]) in text
    assert repr(key[:118]) not in text


@pytest.mark.secret_service
def test_a_direct_delete_on_a_locked_collection_is_an_error_not_nothing_there(
    use_secret_service: SecretService,
) -> None:
    import uuid

    import keyring

    service = f"locked-{uuid.uuid4().hex[:8]}"
    keyring.set_password(service, "cache", "{}")
    use_secret_service.lock()
    try:
        # A locked collection may hide what it holds: "not there" would be a guess a clear
        # believes. Both deletes fail, and the store hands them to keyring (which prompts).
        channel = DirectSecretService()
        with pytest.raises(RuntimeError, match="the default collection is locked"):
            channel.delete(service, "never-written")
        with pytest.raises(Exception, match="locked"):
            channel.delete(service, "cache")
        channel.close()
    finally:
        use_secret_service.unlock()
    channel = DirectSecretService()
    assert channel.delete(service, "cache") is True
    assert channel.delete(service, "cache") is False
    channel.close()


# -- construction and describe(): what status and doctor show --------------------------


def test_a_store_built_without_settings_uses_the_settings_defaults(tmp_path: Path) -> None:
    from msal_keyring_cache.config import Settings

    store = KeyringStore("svc", "acct", lock_path=str(tmp_path / "x.lock"))
    assert store.keyring_timeout == Settings().keyring_timeout
    assert store.lock().timeout == Settings().lock_timeout
    assert store.read_only is False
    assert store.stamp_path == str(tmp_path / "x.stamp")
    other = KeyringStore("svc", "acct", lock_path=str(tmp_path / "x.LOCK"))
    assert other.stamp_path == str(tmp_path / "x.LOCK.stamp")
    assert store.changed()  # nothing read yet


@pytest.mark.parametrize(
    ("kwargs", "ok"),
    [
        ({"service": "", "account": "a"}, False),
        ({"service": "s", "account": ""}, False),
        ({"max_value_length": 199}, False),
        ({"max_value_length": 200}, True),
        ({"keyring_timeout": 0.5}, True),
        ({"keyring_timeout": 0}, False),
    ],
)
def test_construction_refuses_only_what_cannot_work(
    tmp_path: Path, kwargs: dict[str, Any], ok: bool
) -> None:
    args = {"service": "s", "account": "a", **kwargs}
    make = lambda: KeyringStore(lock_path=str(tmp_path / "k.lock"), **args)  # noqa: E731
    if ok:
        make()
    else:
        with pytest.raises(ConfigError):
            make()


class WinVault(ScopedKeyring):
    """Names itself as keyring's Windows backend (its limit is known by that name)."""


WinVault.__module__ = "keyring.backends.Windows"
WinVault.__qualname__ = "WinVaultKeyring"


def test_describe_says_which_backend_how_it_was_chosen_and_where_values_split(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = str(tmp_path / "kr.lock")
    fresh = KeyringStore(SVC, ACCT, lock_path=lock, read_only=True).describe()
    assert (fresh.backend, fresh.location) == ("keyring", f"service {SVC!r}, account {ACCT!r}")
    assert fresh.protection_text == "OS credential store (not resolved yet)"
    assert fresh.lock_file is None
    assert fresh.extra == {
        "service": SVC,
        "account": ACCT,
        "keyring_backend": "not resolved yet",
        "resolved_by": "",
        "chunking": "none",
        "direct_reads": False,
        "stamp_file": str(tmp_path / "kr.stamp"),
    }
    given = store_on(tmp_path, Units(), max_value_length=500).describe()
    assert given.lock_file == lock
    assert given.protection_text == "OS credential store (tests.test_credential_mutants.Units)"
    assert given.extra["keyring_backend"] == "tests.test_credential_mutants.Units"
    assert given.extra["resolved_by"] == "given"
    assert given.extra["chunking"] == "values over 500 characters are split"
    monkeypatch.setattr(Units, "units", 900)
    learner = store_on(tmp_path, Units())
    assert learner.describe().extra["chunking"] == "none"
    save(learner, cache_text(1000))
    assert learner.describe().extra["chunking"] == "values over 500 characters are split"
    windows = store_on(tmp_path / "w", WinVault()).describe()
    assert windows.extra["chunking"] == "values over 1280 characters are split"
    assert "Windows Credential Manager" in windows.protection_text


def test_the_store_counts_its_backend_calls_as_the_backend_does(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
) -> None:
    store = store_on(tmp_path, ScopedKeyring())
    assert store.calls == {"get": 0, "set": 0, "delete": 0}
    assert store.load() is None
    save(store, b"{}")
    store.clear()
    assert store.calls == ScopedKeyring.calls == {"get": 2, "set": 1, "delete": 1}


# -- the stamp and manifest parsers at their bounds ---------------------------------------

GOOD_GEN, GOOD_DIGEST = "0a1b2c3d", "ab" * 32


def _stamp(**fields: Any) -> bytes:
    return json.dumps({"format": "msal-keyring-cache-stamp", **fields}).encode()


def test_the_stamp_parser_keeps_each_field_up_to_its_bound_and_drops_the_rest() -> None:
    assert parse_stamp(b"[]") == {}
    assert parse_stamp(b'{"format": "other"}') == {}
    doc = {
        "backend": "b" * 200,
        "limit": 200,
        "gens": [GOOD_GEN, 5, "not hex", "f" * 33, "0"],
        "sha256": GOOD_DIGEST,
        "aside": ["a" * 300, "a" * 301, 7, "x.corrupt-1"],
    }
    assert parse_stamp(_stamp(**doc)) == {
        "format": "msal-keyring-cache-stamp",
        "backend": "b" * 200,
        "limit": 200,
        "gens": [GOOD_GEN, "0"],
        "sha256": GOOD_DIGEST,
        "aside": ["a" * 300, "x.corrupt-1"],
    }
    for wrong in [
        {"backend": "b" * 201},
        {"backend": 5},
        {"limit": 199},
        {"limit": True},
        {"limit": 300.0},
        {"limit": "300"},
        {"sha256": 5},
        {"sha256": "AB" * 32},
        {"gens": "0a1b"},
        {"aside": "x"},
    ]:
        assert parse_stamp(_stamp(**wrong)) == {"format": "msal-keyring-cache-stamp"}, wrong
    # A stamp padded to exactly the bound is still a stamp; one byte more is not ours.
    body = _stamp(limit=300)
    exact = body + b" " * (64 * 1024 - len(body))
    assert parse_stamp(exact)["limit"] == 300
    assert parse_stamp(exact + b" ") == {}


def test_the_manifest_parser_keeps_only_a_whole_manifest_within_its_bounds() -> None:
    def manifest(**fields: Any) -> str:
        doc = {"gen": GOOD_GEN, "count": 3, "sha256": GOOD_DIGEST, **fields}
        return "msal-keyring-cache-manifest:" + json.dumps(doc)

    assert parse_manifest(manifest()) == (GOOD_GEN, 3, GOOD_DIGEST)
    assert parse_manifest(manifest(count=1)) == (GOOD_GEN, 1, GOOD_DIGEST)
    assert parse_manifest(manifest(count=100_000)) == (GOOD_GEN, 100_000, GOOD_DIGEST)
    padded = manifest()[:-1] + " " * (4096 - len(manifest())) + "}"
    assert len(padded) == 4096
    assert parse_manifest(padded) == (GOOD_GEN, 3, GOOD_DIGEST)
    assert parse_manifest(padded[:-1] + " }") is None  # 4,097 characters
    assert parse_manifest(json.dumps({"gen": GOOD_GEN, "count": 3, "sha256": GOOD_DIGEST})) is None
    assert parse_manifest("msal-keyring-cache-manifest:[1]") is None
    for wrong in [
        {"gen": 5},
        {"gen": "XYZ"},
        {"count": 0},
        {"count": 100_001},
        {"count": True},
        {"count": "3"},
        {"sha256": 5},
        {"sha256": "ab"},
    ]:
        assert parse_manifest(manifest(**wrong)) is None, wrong


def test_a_plain_save_replaces_the_stamp_without_fsync_and_reads_no_more(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = store_on(tmp_path, Units())
    assert store.load() is None
    save(store, b'{"v": 1}')
    assert synced == []  # a change marker: a power loss costs one rediscovery at most
    assert (tmp_path / "kr.stamp").stat().st_mode & 0o777 == 0o600
    assert store.changed() is False  # its own write is no change to read back
    doc = json.loads((tmp_path / "kr.stamp").read_bytes())
    assert doc["sha256"] == hashlib.sha256(b'{"v": 1}').hexdigest()
    assert doc["backend"] == "tests.test_credential_mutants.Units"
    assert re.fullmatch(r"[0-9a-f]{16}", doc["write"])


def test_a_stamp_without_a_limit_does_not_make_a_store_forget_the_one_it_learnt(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Units, "units", 900)
    store = store_on(tmp_path, Units())
    save(store, cache_text(1000))
    refused = len(Units.log)
    (tmp_path / "kr.stamp").write_bytes(_stamp(backend="tests.test_credential_mutants.Units"))
    save(store, cache_text(1100))
    assert len(Units.log) == refused + 3 + 1  # three chunks and the manifest: none refused
    assert stamp(tmp_path)["limit"] == 500


# -- error details: bounded, and only words that cannot echo a value ------------------------


def test_error_details_are_bounded_and_quote_only_short_keyring_sentences() -> None:
    from msal_keyring_cache.stores.keyring_backend import translate

    def keyring_error(text: str) -> Exception:
        cls = type("PasswordSetError", (Exception,), {"__module__": "keyring.errors"})
        return cls(text)  # type: ignore[no-any-return]

    short, long = "s" * 200, "l" * 201
    assert f"PasswordSetError: {short})" in str(translate(keyring_error(short), "set", "B"))
    said = str(translate(keyring_error(long), "set password", "B"))
    assert "(set password: PasswordSetError)" in said
    assert long not in said
    named = type("E" * 320, (OSError,), {})
    detail = f"{'E' * 320}: [errno 5] {os.strerror(5)}"
    said = str(translate(named(5, "whatever"), "set password", "B"))
    assert f"(set password: {detail[:300]})" in said


def test_clear_deletes_each_generation_once_and_needs_no_read_after(
    tmp_path: Path, units: type[Units]
) -> None:
    store = store_on(tmp_path, Units(), max_value_length=500)
    save(store, cache_text(1200))  # three chunks; the stamp lists their generation
    ScopedKeyring.calls.update(get=0, set=0, delete=0)
    store.clear()
    assert ScopedKeyring.entries == {}
    # The main entry read; three chunks deleted and the fourth found missing (one delete
    # and one read to tell "missing" from "refused"); the manifest deleted.
    assert ScopedKeyring.calls == {"get": 2, "set": 0, "delete": 5}
    assert stamp(tmp_path).get("gens", []) == []
    assert store.changed() is False
    assert store.load() is None


# -- save: where the split starts, what the old generation leaves, what the next load sees --


def test_a_value_of_exactly_the_limit_is_one_entry_and_one_more_character_is_chunked(
    tmp_path: Path, units: type[Units]
) -> None:
    store = store_on(tmp_path, Units(), max_value_length=500)
    save(store, cache_text(500))
    assert list(ScopedKeyring.entries) == [(SVC, ACCT)]
    save(store, cache_text(501))
    assert len(chunk_entries()) == 2


def test_a_new_generation_replaces_the_old_one_in_the_store_and_in_the_stamp(
    tmp_path: Path, units: type[Units]
) -> None:
    store = store_on(tmp_path, Units(), max_value_length=500)
    save(store, cache_text(1200, "1"))
    (first,) = stamp(tmp_path)["gens"]
    save(store, cache_text(1200, "2"))
    (second,) = stamp(tmp_path)["gens"]
    assert second != first
    assert {s.rsplit("|", 1)[1].split(".")[0] for s in chunk_entries()} == {second}
    assert store_on(tmp_path, Units()).load() == cache_text(1200, "2")


def test_a_save_after_the_probe_is_what_the_next_load_returns(
    tmp_path: Path, units: type[Units]
) -> None:
    store = store_on(tmp_path, Units())
    assert store.prime() is None
    save(store, b'{"after": "probe"}')
    assert not store.probed_empty
    assert store.load() == b'{"after": "probe"}'


# -- reading: how often chunks that do not add up are read, and what is not re-checked ------


@pytest.mark.parametrize(
    ("damage", "why"), [("delete", "a chunk is missing"), ("alter", "its chunks fail their digest")]
)
def test_chunks_that_never_add_up_are_read_four_times_then_reported(
    tmp_path: Path, units: type[Units], damage: str, why: str
) -> None:
    save(store_on(tmp_path, Units(), max_value_length=500), cache_text(1200))
    (gen,) = stamp(tmp_path)["gens"]
    key = (f"{SVC}|{ACCT}|{gen}.1", ACCT)
    if damage == "delete":
        del ScopedKeyring.entries[key]
    else:
        ScopedKeyring.entries[key] = "b" * 500
    before = dict(ScopedKeyring.entries)
    ScopedKeyring.calls.update(get=0, set=0, delete=0)
    reader = store_on(tmp_path, Units(), read_only=True)
    with pytest.raises(CorruptCacheError, match=re.escape(f"cannot be read: {why}")):
        reader.load()
    per_read = 3 if damage == "delete" else 4  # the manifest, then chunks up to the gap
    assert ScopedKeyring.calls == {"get": 4 * per_read, "set": 0, "delete": 0}
    assert ScopedKeyring.entries == before


def test_what_the_last_save_wrote_is_not_validated_again(
    tmp_path: Path, units: type[Units]
) -> None:
    checked: list[str] = []

    def validate(text: str) -> bool:
        checked.append(text)
        return text.startswith("{")

    save(store_on(tmp_path, Units()), b'{"v": 1}')
    assert store_on(tmp_path, Units(), validate=validate).load() == b'{"v": 1}'
    assert checked == []  # its digest is in the stamp
    ScopedKeyring.entries[(SVC, ACCT)] = '{"v": 2}'  # written by someone else
    assert store_on(tmp_path, Units(), validate=validate).load() == b'{"v": 2}'
    assert checked == ['{"v": 2}']


def test_the_first_load_after_the_probe_reuses_what_it_read(
    tmp_path: Path, units: type[Units]
) -> None:
    save(store_on(tmp_path, Units()), b'{"v": 1}')
    store = store_on(tmp_path, Units())
    assert store.prime() == b'{"v": 1}'
    gets = ScopedKeyring.calls["get"]
    assert store.changed()
    assert store.load() == b'{"v": 1}'
    assert ScopedKeyring.calls["get"] == gets
    assert store.changed() is False


# -- clear: what the stamp lost, what a refused delete leaves listed ------------------------


def test_clear_finds_the_generation_in_the_manifest_when_the_stamp_is_gone(
    tmp_path: Path, units: type[Units]
) -> None:
    save(store_on(tmp_path, Units(), max_value_length=500), cache_text(1200))
    (tmp_path / "kr.stamp").unlink()  # a reboot emptied the lock directory
    store_on(tmp_path, Units()).clear()
    assert ScopedKeyring.entries == {}


def test_a_clear_the_store_refuses_names_the_first_entry_and_keeps_the_rest_listed(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    ScopedKeyring.entries[(SVC, ACCT)] = "damaged"
    store = store_on(tmp_path, Units(), max_value_length=500)
    assert store.load() is None
    save(store, cache_text(1200))
    (gen,) = stamp(tmp_path)["gens"]
    (name,) = stamp(tmp_path)["aside"]
    kept = dict(ScopedKeyring.entries)
    monkeypatch.setattr(Units, "refuse_delete", True)
    with pytest.raises(StoreError) as caught:
        store.clear()
    assert f"(service '{SVC}|{ACCT}|{gen}.0', account '{ACCT}')" in str(caught.value)
    assert "still holds token data" in str(caught.value)
    assert ScopedKeyring.entries == kept
    assert stamp(tmp_path)["gens"] == [gen]
    assert stamp(tmp_path)["aside"] == [name]
    monkeypatch.setattr(Units, "refuse_delete", False)
    store_on(tmp_path, Units()).clear()
    assert ScopedKeyring.entries == {}


def test_a_refused_clear_of_a_plain_entry_names_the_copy_kept_aside_first(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    ScopedKeyring.entries[(SVC, ACCT)] = "damaged"
    store = store_on(tmp_path, Units())
    assert store.load() is None
    save(store, b'{"v": 1}')
    (name,) = stamp(tmp_path)["aside"]
    monkeypatch.setattr(Units, "refuse_delete", True)
    with pytest.raises(StoreError, match=re.escape(f"(service '{SVC}', account '{name}')")):
        store.clear()
    monkeypatch.setattr(Units, "refuse_delete", False)
    store.clear()
    save(store, b'{"v": 2}')  # a cleared store saves as a new one
    assert ScopedKeyring.entries == {(SVC, ACCT): '{"v": 2}'}


@pytest.mark.secret_service
def test_direct_items_are_text_plain_and_the_connection_closes_once(
    use_secret_service: SecretService,
) -> None:
    import uuid

    service = f"plain-{uuid.uuid4().hex[:8]}"
    channel = DirectSecretService()
    channel.set(service, "cache", '{"v": "ü"}')
    assert channel.get(service, "cache") == '{"v": "ü"}'
    collection: Any = use_secret_service.collection()
    try:
        items = list(collection.search_items({"service": service}))
        assert [item.get_secret_content_type() for item in items] == ["text/plain"]
        assert items[0].get_secret() == '{"v": "ü"}'.encode()
    finally:
        collection.connection.close()
    channel.close()
    channel.close()  # nothing left to close: no error
    assert channel.delete(service, "cache") is True  # a closed channel opens a new connection
    channel.set(service, "cache", "{}")  # ...and a new session for secrets
    assert channel.get(service, "cache") == "{}"
    assert channel.delete(service, "cache") is True
    channel.close()
    channel.close()


def test_a_given_backend_is_kept_when_the_store_resolves(
    tmp_path: Path, memory_keyring: type[ScopedKeyring], monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyring.core

    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.fakes.MemoryKeyring")
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    store = store_on(tmp_path, ScopedKeyring())
    store.resolve()
    assert store.keyring_name == "tests.fakes.ScopedKeyring"
    assert store.resolved_by == "given"
    assert not store.direct


# -- the stamp file's own write: hostile names, a full disk ----------------------------------


def test_a_link_planted_at_the_stamps_temporary_name_is_never_written_through(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    import secrets

    monkeypatch.setattr(secrets, "token_hex", lambda n=32: "ab" * n)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / f".kr.stamp.{'ab' * 6}.tmp").symlink_to(victim)
    store = store_on(tmp_path, Units())
    with pytest.raises(StoreError, match="Cannot write"):
        save(store, b'{"v": 1}')
    assert victim.read_text() == "keep"
    assert not (tmp_path / "kr.stamp").exists()


def test_a_stamp_that_cannot_be_written_leaves_no_temporary_file_or_descriptor(
    tmp_path: Path, units: type[Units]
) -> None:
    from tests.helpers import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "full", size="64k") as full:
        store = store_on(full, Units())
        assert store.load() is None
        filler = full / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            fh.write(b"\0" * 1024 * 1024)
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(StoreError, match="Cannot write"):
            save(store, b'{"v": 1}')
        assert len(os.listdir("/proc/self/fd")) == fds
        assert sorted(p.name for p in full.iterdir()) == ["filler", "kr.lock"]


def test_a_backend_known_by_name_to_limit_values_is_chunked_without_a_refusal(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
) -> None:
    store = store_on(tmp_path, WinVault())
    save(store, cache_text(2000))
    assert len(chunk_entries()) == 2
    assert store_on(tmp_path, WinVault()).load() == cache_text(2000)


def test_a_backend_the_stamp_remembers_is_loaded_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyring.core

    from msal_keyring_cache.stores.keyring_backend import REMEMBERED

    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no keyringrc.cfg
    (tmp_path / "kr.stamp").write_bytes(_stamp(backend="keyring.backends.null.Keyring"))
    store = KeyringStore(SVC, ACCT, lock_path=str(tmp_path / "kr.lock"))
    store.resolve()
    assert store.resolved_by == REMEMBERED
    assert store.keyring_name == "keyring.backends.null.Keyring"


def test_the_backend_name_asks_keyring_only_when_calls_do_not_bypass_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyring.core

    from msal_keyring_cache.stores import credential
    from msal_keyring_cache.stores.secret_service import SECRET_SERVICE

    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no keyringrc.cfg
    asked: list[Optional[str]] = []
    real = credential.resolve_backend

    def resolve(remembered: Optional[str], timeout: float) -> tuple[Any, str]:
        asked.append(remembered)
        return real(remembered, timeout)

    monkeypatch.setattr(credential, "resolve_backend", resolve)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.fakes.MemoryKeyring")
    plain = KeyringStore(SVC, ACCT, lock_path=str(tmp_path / "plain.lock"))
    assert plain.keyring_name == "tests.fakes.MemoryKeyring"  # resolved on first use
    assert asked == [None]
    # The stamp remembers the Secret Service: calls go straight to it, keyring is not asked.
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    (tmp_path / "kr.stamp").write_bytes(_stamp(backend=SECRET_SERVICE))
    direct = KeyringStore(SVC, ACCT, lock_path=str(tmp_path / "kr.lock"))
    direct.resolve()
    assert direct.direct
    assert direct.keyring_name == SECRET_SERVICE
    assert asked == [None]


@pytest.mark.secret_service
def test_keyrings_secret_service_backend_is_used_on_the_kept_connection_until_it_fails(
    tmp_path: Path, use_secret_service: SecretService
) -> None:
    import uuid

    service = f"kept-{uuid.uuid4().hex[:8]}"

    def make() -> KeyringStore:
        lock = str(tmp_path / "ss.lock")
        return KeyringStore(service, "cache", lock_path=lock, keyring_timeout=10)

    first = make()  # no stamp: keyring chooses, and it chooses the Secret Service
    assert first.load() is None
    assert not first.direct  # the first call resolved the backend through keyring
    with first.lock():
        first.save(b'{"v": 1}')
    assert first.direct  # the write went over the kept connection
    first.close()
    use_secret_service.lock()
    reader = make()
    reader.resolve()
    assert reader.direct
    try:
        with pytest.raises(BackendUnavailableError, match="is locked"):
            reader.load()
    finally:
        use_secret_service.unlock()
    assert reader.load() == b'{"v": 1}'
    assert not reader.direct  # after a failure on it, keyring's path for good
    with reader.lock():
        reader.clear()


def test_a_backend_failure_names_the_backend_and_the_call(
    tmp_path: Path, memory_keyring: type[ScopedKeyring], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes import RaisingKeyring

    monkeypatch.setattr(RaisingKeyring, "to_raise", RuntimeError("secret-looking text"))
    store = store_on(tmp_path, RaisingKeyring())
    with pytest.raises(BackendUnavailableError) as caught:
        store.load()
    said = str(caught.value)
    assert "The OS credential store (tests.fakes.RaisingKeyring)" in said
    assert "(get password: RuntimeError)" in said
    assert "secret-looking" not in said


@pytest.mark.secret_service
def test_a_store_on_the_kept_connection_keeps_the_secret_service_remembered(
    tmp_path: Path, use_secret_service: SecretService
) -> None:
    import uuid

    service = f"remember-{uuid.uuid4().hex[:8]}"

    def make() -> KeyringStore:
        lock = str(tmp_path / "ss.lock")
        return KeyringStore(service, "cache", lock_path=lock, keyring_timeout=10)

    first = make()
    with first.lock():
        first.save(b'{"v": 1}')
    first.close()
    second = make()
    second.resolve()
    assert second.direct
    with second.lock():
        second.save(b'{"v": 2}')
    doc = parse_stamp((tmp_path / "ss.stamp").read_bytes())
    assert doc["backend"] == "keyring.backends.SecretService.Keyring"
    second.close()
    third = make()
    third.resolve()
    assert third.direct
    assert third.load() == b'{"v": 2}'
    with third.lock():
        third.clear()
    third.close()


def test_a_store_that_loaded_knows_the_limit_the_stamp_remembers(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Units, "units", 900)
    save(store_on(tmp_path, Units()), cache_text(1000))
    reader = store_on(tmp_path, Units())
    assert reader.describe().extra["chunking"] == "none"  # nothing read yet
    assert reader.load() == cache_text(1000)
    assert reader.describe().extra["chunking"] == "values over 500 characters are split"


def test_a_manifest_that_does_not_parse_is_kept_aside_and_the_entry_freed(
    tmp_path: Path, units: type[Units]
) -> None:
    ScopedKeyring.entries[(SVC, ACCT)] = "msal-keyring-cache-manifest:{"
    store = store_on(tmp_path, Units())
    assert store.load() is None
    assert list(aside_entries().values()) == ["msal-keyring-cache-manifest:{"]
    assert (SVC, ACCT) not in ScopedKeyring.entries


def test_a_manifest_whose_chunk_stays_missing_is_kept_aside_and_the_entry_freed(
    tmp_path: Path, units: type[Units]
) -> None:
    save(store_on(tmp_path, Units(), max_value_length=500), cache_text(1200))
    (gen,) = stamp(tmp_path)["gens"]
    manifest = ScopedKeyring.entries[(SVC, ACCT)]
    del ScopedKeyring.entries[(f"{SVC}|{ACCT}|{gen}.2", ACCT)]
    store = store_on(tmp_path, Units())
    assert store.load() is None
    assert list(aside_entries().values()) == [manifest]
    assert (SVC, ACCT) not in ScopedKeyring.entries
    store.clear()
    assert ScopedKeyring.entries == {}


def test_a_short_value_refused_whole_fails_the_save_with_the_backends_refusal(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Units, "units", 150)
    with pytest.raises(StoreError, match=re.escape("(set password: CredWriteError (error 1783))")):
        save(store_on(tmp_path, Units()), cache_text(300))  # half of it is under 200
    assert ScopedKeyring.entries == {}


def test_a_cache_needing_more_chunks_than_a_manifest_may_name_is_refused_before_writing(
    tmp_path: Path, units: type[Units], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A manifest over the bound would be written, then refused by every reader as damage.
    # (The bound is 100,000 chunks; five here, so the test writes kilobytes, not 20 MB.)
    from msal_keyring_cache.stores import credential

    monkeypatch.setattr(credential, "_MAX_CHUNKS", 5)
    save(store_on(tmp_path, Units()), b'{"v": "old"}')
    store = store_on(tmp_path, Units(), max_value_length=200)
    Units.log.clear()
    with pytest.raises(StoreError, match=r"needs more than 5 entries of 200 characters"):
        save(store, cache_text(200 * 5 + 1))
    assert Units.log == []  # nothing written, not even a stamp's generation
    assert chunk_entries() == {}
    assert store_on(tmp_path, Units()).load() == b'{"v": "old"}'
    save(store, cache_text(200 * 5))  # exactly the most a manifest may name
    assert len(chunk_entries()) == 5
    assert store_on(tmp_path, Units()).load() == cache_text(200 * 5)


def test_without_any_choice_keyring_s_own_choice_by_priority_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import keyring.core

    from msal_keyring_cache.stores import keyring_backend

    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)  # no set_keyring()
    backend, source = keyring_backend._resolve(None)
    assert source == "keyring's choice by priority"
    chosen = keyring.core._keyring_backend  # what keyring's get_keyring() chose
    assert chosen is not None
    assert type(backend) is type(keyring_backend._unchain(chosen))


def test_a_chained_backend_is_used_through_its_first_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from keyring.backends.chainer import ChainerBackend

    from msal_keyring_cache.stores import keyring_backend

    first, second = MemoryKeyring(), MemoryKeyring()
    monkeypatch.setattr(ChainerBackend, "backends", [first, second])
    assert keyring_backend._unchain(ChainerBackend()) is first  # keyring writes there
    monkeypatch.setattr(ChainerBackend, "backends", [])
    assert type(keyring_backend._unchain(ChainerBackend())).__name__ == "Keyring"  # fail


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), "5", None])
def test_a_keyring_call_without_a_finite_positive_bound_is_refused(timeout: Any) -> None:
    from msal_keyring_cache import ConfigError
    from msal_keyring_cache.stores.keyring_backend import bounded

    calls: list[int] = []
    with pytest.raises(ConfigError, match="must be a positive number of seconds"):
        bounded(lambda: calls.append(1), timeout, "get password")
    assert calls == []  # refused before the call
    assert bounded(lambda: 7, 0.5, "get password") == 7
