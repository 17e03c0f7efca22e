"""Hypothesis fuzzing of every parser of the file format and of imported caches.

Each parser gets hostile input (it must answer with the documented error, nothing raw)
AND valid input (it must round-trip), so a test that could only ever see failures cannot
pass by accident. ``FUZZ_EXAMPLES`` sets the examples per test (2,000 by default; the
closing note's longer run used more).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import msal
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from msal_keyring_cache import (
    ConfigError,
    CorruptCacheError,
    DecryptError,
    EncryptedFileStore,
    MemoryStore,
    PersistentTokenCache,
    crypto,
    generate_key,
)
from msal_keyring_cache.stores.base import apply_delta, parse_json, validate_cache
from msal_keyring_cache.testing import LoopbackIdentityProvider

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KEY = generate_key()
OTHER_KEY = generate_key()
SOURCE = crypto.FernetKeys((KEY,))

text = st.text(max_size=8)
word = st.text(alphabet='aZé-1. \\"', max_size=4)  # cheap to draw: entry fields
hexgen = st.text(alphabet="0123456789abcdef", min_size=1, max_size=40)
headers = st.builds(  # the other fields keep their defaults (a Fernet-key header)
    lambda fp, gen, source, version: crypto.Header(fp, gen, source=source, version=version),
    fp=st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
    gen=hexgen,
    source=st.sampled_from(["key", "key_file", "passphrase", "generated", "keyring"]),
    version=st.sampled_from([1, 2, 3, 4]),
)
scrypt_headers = st.builds(
    lambda h, salt, n, r, p: crypto.Header(h.fp, h.gen, "scrypt", h.source, salt, n, r, p, 2),
    headers,
    st.binary(min_size=16, max_size=64),
    st.sampled_from([2**10, 2**12, 2**14, 2**16]),
    st.integers(1, 8),
    st.sampled_from([1, 2]),
).filter(lambda h: crypto.scrypt_allowed(h.n, h.r, h.p))

# A JSON value msal could find inside an entry (small).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**12) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


def _entry(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    base: dict[str, st.SearchStrategy[Any]] = {
        "home_account_id": word,
        "environment": word,
        "client_id": word,
        "realm": word,
        "credential_type": st.just(kind),
    }
    required: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "AccessToken": {"secret": word, "expires_on": st.integers(0, 2**40).map(str)},
        "RefreshToken": {"secret": word},
        "IdToken": {"secret": word},
        "Account": {"authority_type": st.sampled_from(["MSSTS", "ADFS", "MSA"])},
        "AppMetadata": {},
    }[kind]
    return st.fixed_dictionaries({**base, **required}, optional={"target": word})


KINDS = ("AccessToken", "RefreshToken", "IdToken", "Account", "AppMetadata")
kinds = st.sampled_from(KINDS)
valid_caches = st.fixed_dictionaries(
    {}, optional={kind: st.dictionaries(text, _entry(kind), max_size=2) for kind in KINDS}
)
deltas = st.dictionaries(
    kinds, st.dictionaries(text, st.none() | _entry("IdToken"), max_size=3), max_size=3
)


@contextmanager
def _directory() -> Iterator[str]:
    # On a RAM file system where there is one: fsync costs nothing there.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="fuzz-", dir=shm)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _file(header: crypto.Header, snapshot: Any, changes: list[Any]) -> bytes:
    blob = header.to_bytes() + b"\n" + crypto.seal(json.dumps(snapshot).encode(), KEY, header, 0)
    for seq, change in enumerate(changes, 1):
        blob += crypto.seal(json.dumps(change).encode(), KEY, header, seq)
    return blob


def _keyed(header: crypto.Header) -> crypto.Header:
    return crypto.Header(crypto.fingerprint(KEY), header.gen, version=header.version)


def _load(directory: str, blob: bytes) -> Any:
    path = os.path.join(directory, "cache.bin")
    with open(path, "wb") as fh:
        fh.write(blob)
    os.chmod(path, 0o600)
    cache = PersistentTokenCache(EncryptedFileStore(path, SOURCE))
    try:
        return json.loads(cache.serialize())
    finally:
        cache.close()


# -- header ------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_header_parser_answers_any_bytes_with_corrupt_cache_error(blob: bytes) -> None:
    with suppress(CorruptCacheError):
        crypto.parse_header(blob)


@FUZZ
@given(st.dictionaries(text, json_values, max_size=8), st.integers(0, 2500))
def test_header_parser_answers_any_json_header_with_corrupt_cache_error(
    doc: dict[str, Any], depth: int
) -> None:
    doc = {"format": "msal-keyring-cache", "version": 2, **doc}
    line = json.dumps(doc).encode() if depth < 50 else b"[" * depth + b"]" * (depth % 3)
    with suppress(CorruptCacheError):
        crypto.parse_header(line + b"\ngAAAA\n")


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["format", "version", "kdf", "fp", "gen", "salt", "n", "r", "p", "source"]),
        st.none() | st.booleans() | st.integers(-2, 2**21) | st.text(max_size=30),
    ),
    st.booleans(),
)
def test_decrypt_answers_any_header_with_cache_errors_and_valid_files_decrypt(
    doc: dict[str, Any], valid: bool
) -> None:
    passphrase = crypto.Passphrase("pw")
    if valid:  # a real file under each source, with the fuzzed fields as extra header keys
        for source in (passphrase, SOURCE):
            blob = crypto.encrypt(b"{}", source)
            line, rest = blob.split(b"\n", 1)
            extra = {k: v for k, v in doc.items() if k not in json.loads(line)}
            line = json.dumps({**json.loads(line), **extra}).encode()
            assert crypto.decrypt(line + b"\n" + rest, source)[0] == b"{}"
        return
    blob = json.dumps({"format": "msal-keyring-cache", "version": 2, **doc}).encode() + b"\ngAAAA"
    for source in (passphrase, SOURCE):
        try:
            crypto.decrypt(blob, source)
        except (CorruptCacheError, DecryptError):
            continue
        raise AssertionError("a made-up header decrypted")


@FUZZ
@given(
    headers | scrypt_headers, st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b)
)
def test_valid_headers_round_trip(header: crypto.Header, token: bytes) -> None:
    if header.version >= 3:  # the snapshot record carries its length
        token = b"%d:" % len(token) + token
    parsed, got = crypto.parse_header(header.to_bytes() + b"\n" + token + b"\n")
    assert parsed == header
    assert got == token


@FUZZ
@given(headers, st.binary(max_size=300), st.integers(0, 400))
def test_snapshot_record_parser_answers_any_bytes_with_corrupt_cache_error(
    header: crypto.Header, junk: bytes, cut: int
) -> None:
    # A version-3 snapshot record is binary with its length in front: whatever follows a
    # valid header (made up, or a real record cut, flipped or lengthened), the parser and
    # the decryption answer with CorruptCacheError or the one true payload.
    header = crypto.Header(crypto.fingerprint(KEY), header.gen, version=3)
    real = crypto.seal(b'{"a":1}', KEY, header, 0)
    for body in (junk, real[:cut] + junk, junk[:12] + real, real.replace(b":", b":" + junk, 1)):
        blob = header.to_bytes() + b"\n" + body
        try:  # the store's path: decrypted where it lies in the file
            _header, _key, found, end = crypto.open_file(blob, SOURCE)
        except CorruptCacheError:
            found, end = None, 0
        try:
            parsed, token = crypto.parse_header(blob)
            plaintext = crypto.unseal(token, KEY, parsed, 0)
        except CorruptCacheError:
            assert found is None
            continue
        assert plaintext == found == b'{"a":1}'
        assert token + b"\n" == real
        assert blob[end - len(real) : end] == real


def test_a_snapshot_length_has_one_form() -> None:
    # The writer never writes a leading zero: "035:" framing the same ciphertext is damage,
    # so one record has one byte form (found by the fuzz test above).
    header = crypto.Header(crypto.fingerprint(KEY), "0123456789abcdef0123456789abcdef", version=3)
    real = crypto.seal(b'{"a":1}', KEY, header, 0)
    assert crypto.unseal(real[:-1], KEY, header, 0) == b'{"a":1}'
    padded = b"0" + real
    with pytest.raises(CorruptCacheError, match="no valid length"):
        crypto.unseal(padded[:-1], KEY, header, 0)
    with pytest.raises(CorruptCacheError):
        crypto.open_file(header.to_bytes() + b"\n" + padded, SOURCE)


@FUZZ
@given(headers, st.binary(max_size=300), st.integers(0, 400), st.integers(1, 70))
def test_journal_record_parser_answers_any_bytes_with_corrupt_cache_error(
    header: crypto.Header, junk: bytes, cut: int, seq: int
) -> None:
    # Version-4 journal records are binary, framed by their length: whatever follows the
    # records before (made up, or a real record cut, flipped or lengthened), splitting and
    # decrypting answer with CorruptCacheError, nothing (a record cut off at the end), or
    # the one true payload at its one true place.
    header = crypto.Header(crypto.fingerprint(KEY), header.gen, version=4)
    real = crypto.seal(b'{"a":1}', KEY, header, seq)
    for body in (junk, real[:cut] + junk, junk[:12] + real, real.replace(b":", b":" + junk, 1)):
        records, end = crypto.split_records(body, 0, crypto.VERSION)
        assert end <= len(body)
        assert b"\n".join(records) + (b"\n" if records else b"") == body[:end]
        for token in records:
            try:
                plaintext = crypto.unseal(token, KEY, header, seq)
            except CorruptCacheError:
                continue
            assert plaintext == b'{"a":1}'
            assert token + b"\n" == real


def test_a_journal_record_length_has_one_form() -> None:
    header = crypto.Header(crypto.fingerprint(KEY), "0123456789abcdef0123456789abcdef", version=4)
    real = crypto.seal(b'{"a":1}', KEY, header, 1)
    for form in (b"0" + real, b"+" + real, b" " + real, real.replace(b":", b" :", 1)):
        records, _end = crypto.split_records(form, 0, crypto.VERSION)
        assert records == [form[:-1]]  # damaged framing: the rest is one (refused) record
        with pytest.raises(CorruptCacheError, match="journal record 1 has no valid length"):
            crypto.unseal(records[0], KEY, header, 1)
    with pytest.raises(CorruptCacheError, match="journal record 1 has no valid length"):
        crypto.unseal(real[:-1] + b"x", KEY, header, 1)  # a byte more than its length


# -- records -----------------------------------------------------------------------------


@FUZZ
@given(headers, st.binary(max_size=200), st.integers(0, 10**6))
def test_records_round_trip_and_are_bound_to_their_file_and_place(
    header: crypto.Header, payload: bytes, seq: int
) -> None:
    if header.version < 2:
        payload = b"{" + payload  # version 1 records are JSON objects
    record = crypto.seal(payload, KEY, header, seq)
    assert record.endswith(b"\n")
    if header.version < 3 or (header.version == 3 and seq):
        assert record.count(b"\n") == 1  # binary records (below) are framed by their length
    elif header.version >= 4:  # (a version-3 snapshot is found by its header: locate)
        assert crypto.split_records(record, 0, header.version) == ([record[:-1]], len(record))
    assert crypto.unseal(record[:-1], KEY, header, seq) == payload
    if header.version >= 2:
        for other_seq, other_gen in ((seq + 1, header.gen), (seq, header.gen + "0")):
            other = crypto.Header(header.fp, other_gen, version=header.version)
            try:
                crypto.unseal(record[:-1], KEY, other, other_seq)
            except CorruptCacheError:
                continue
            raise AssertionError("a record was accepted at another place")
    try:
        crypto.unseal(record[:-1], OTHER_KEY, header, seq)
    except CorruptCacheError:
        pass
    else:
        raise AssertionError("a record decrypted under another key")


@FUZZ
@given(headers, st.binary(max_size=200))
def test_unseal_answers_any_token_with_corrupt_cache_error(
    header: crypto.Header, token: bytes
) -> None:
    with suppress(CorruptCacheError):
        crypto.unseal(token, KEY, header, 0)


# -- whole files -------------------------------------------------------------------------


@FUZZ
@given(headers, valid_caches, st.lists(deltas, max_size=4))
def test_valid_files_load_to_snapshot_plus_journal(
    header: crypto.Header, snapshot: dict[str, Any], changes: list[Any]
) -> None:
    header = _keyed(header)
    expected = json.loads(json.dumps(snapshot))
    for change in changes:
        apply_delta(expected, json.loads(json.dumps(change)))
    with _directory() as directory:
        assert _load(directory, _file(header, snapshot, changes)) == expected


@FUZZ
@given(
    headers,
    valid_caches,
    st.lists(deltas, min_size=1, max_size=3),
    st.sampled_from(["flip", "cut", "insert", "swap", "drop", "dup"]),
    st.integers(0, 10**6),
    st.binary(min_size=1, max_size=8),
)
def test_damaged_files_load_a_prefix_of_their_history_or_nothing(
    header: crypto.Header,
    snapshot: dict[str, Any],
    changes: list[Any],
    how: str,
    where: int,
    junk: bytes,
) -> None:
    header = _keyed(header)
    # Version 1 records carry no place: reordering them is what version 2 detects.
    assume(header.version >= 2 or how in ("flip", "cut", "insert"))
    blob = _file(header, snapshot, changes)
    lines = crypto.file_records(blob)
    at = where % len(blob)
    if how == "flip":
        damaged = blob[:at] + bytes([blob[at] ^ (1 + where % 255)]) + blob[at + 1 :]
    elif how == "cut":
        damaged = blob[:at]
    elif how == "insert":
        damaged = blob[:at] + junk + blob[at:]
    else:
        i = 2 + where % (len(lines) - 2)
        records = lines[2:]
        j = i - 2
        if how == "swap":
            assume(len(records) >= 2 and records[j] != records[(j + 1) % len(records)])
            k = (j + 1) % len(records)
            records[j], records[k] = records[k], records[j]
        elif how == "drop":
            assume(j < len(records) - 1)  # dropping the last record is a rollback
            del records[j]
        else:
            records.insert(j, records[j])
        damaged = b"\n".join(lines[:2] + records) + b"\n"
    histories = []
    state = json.loads(json.dumps(snapshot))
    histories.append(json.loads(json.dumps(state)))
    for change in changes:
        apply_delta(state, json.loads(json.dumps(change)))
        histories.append(json.loads(json.dumps(state)))
    with _directory() as directory:
        try:
            loaded = _load(directory, damaged)
        except DecryptError:
            return  # a changed fingerprint: the file is left alone, the user told
        assert loaded in histories or loaded == {}
        if loaded != histories[-1] and damaged != blob:
            # Anything but a clean cut at a record boundary is set aside, never dropped.
            cut_clean = how == "cut" and damaged.endswith(b"\n")
            moved = [n for n in os.listdir(directory) if ".corrupt-" in n]
            assert moved or cut_clean or loaded in histories


# -- imported caches ---------------------------------------------------------------------


@FUZZ
@given(json_values, st.integers(0, 2500))
def test_imported_json_is_validated_or_refused_with_config_error(doc: Any, depth: int) -> None:
    raw = json.dumps(doc) if depth < 100 else "[" * depth
    try:
        parsed = parse_json(raw, "the import")
        checked = validate_cache(parsed)
    except (ConfigError, CorruptCacheError):
        return
    # What validation lets through, msal can use: every search and lookup works.
    cache = msal.SerializableTokenCache()
    cache.deserialize(json.dumps(checked))
    for kind in ("AccessToken", "RefreshToken", "IdToken", "Account", "AppMetadata"):
        list(cache.search(kind))


@FUZZ
@given(valid_caches, valid_caches)
def test_valid_imports_are_accepted_and_usable_by_msal(
    idp: LoopbackIdentityProvider, first: dict[str, Any], second: dict[str, Any]
) -> None:
    assert validate_cache(first) is first
    cache = PersistentTokenCache(MemoryStore())  # the file store's part is fuzzed above
    cache.deserialize(json.dumps(first))
    assert json.loads(cache.serialize()) == first
    cache.merge(json.dumps(second))
    merged = json.loads(cache.serialize())
    for kind, entries in second.items():
        assert set(entries) <= set(merged[kind])
    _APPS.setdefault("app", idp.public_app(token_cache=cache)).token_cache = cache
    _APPS["app"].get_accounts()
    for kind in ("AccessToken", "RefreshToken", "IdToken", "Account", "AppMetadata"):
        list(cache.search(kind))


_APPS: dict[str, Any] = {}  # one msal app for every example (building one costs ~50 ms)
