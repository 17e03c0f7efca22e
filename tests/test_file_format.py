"""The encrypted-file format (msal_keyring_cache.crypto) as a reader of old files and of
hostile headers sees it.

Written for mutants of crypto.py that no test killed. Files written by 0.2.0 (format
version 2, tests/data/v2_*) must keep loading; every bound a header may ask for is tested
on both sides; every refusal says what is wrong.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msal_keyring_cache import PersistentTokenCache, crypto
from msal_keyring_cache.errors import ConfigError, CorruptCacheError, DecryptError, StoreError
from msal_keyring_cache.stores.file import EncryptedFileStore
from tests.helpers import PYTHON, ROOT, child_env

DATA = ROOT / "tests" / "data"
GOLDEN = json.loads((DATA / "v2_files.json").read_text())
# v3_files.json: the same key, passphrase and content, written by format 3
assert json.loads((DATA / "v3_files.json").read_text())["key"] == GOLDEN["key"]
KEY = crypto.generate_key()
OTHER_KEY = crypto.generate_key()


def _copy(name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    shutil.copyfile(DATA / name, path)
    path.chmod(0o600)
    return path


def _header_line(**fields: Any) -> bytes:
    doc = {"format": "msal-keyring-cache", "version": 2, "kdf": "none", "fp": "0" * 16,
           "source": "key", "gen": "ab12"}  # fmt: skip
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def _refused(header: bytes, match: str, token: bytes = b"gAAAA") -> None:
    with pytest.raises(CorruptCacheError, match=match):
        crypto.parse_header(header + b"\n" + token + b"\n")


# -- files written by 0.2.0 -------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_a_file_written_by_0_2_0_under_a_key_still_loads(tmp_path: Path, version: int) -> None:
    name = f"v{version}_keyed.bin"
    path = _copy(name, tmp_path)
    assert crypto.parse_header(path.read_bytes())[0].version == version
    assert crypto.fingerprint(GOLDEN["key"]) == GOLDEN["fingerprint"]
    store = EncryptedFileStore(str(path), crypto.FernetKeys((GOLDEN["key"],)))
    expected = json.loads(GOLDEN["snapshot"])
    expected.update(json.loads(GOLDEN["record_1"]))  # the journal record on top
    assert json.loads(PersistentTokenCache(store).serialize()) == expected
    wrong = EncryptedFileStore(str(path), crypto.FernetKeys((KEY,)))
    with pytest.raises(DecryptError, match=f"fingerprint {GOLDEN['fingerprint']}"):
        wrong.load()
    assert path.read_bytes() == (DATA / name).read_bytes()  # not changed
    # the next write rewrites it as version 4, keeping what it held
    with store.lock():
        store.append(b'{"AccessToken":{}}', lambda: json.dumps(expected).encode())
    assert crypto.parse_header(path.read_bytes())[0].version == crypto.VERSION == 4
    again = EncryptedFileStore(str(path), crypto.FernetKeys((GOLDEN["key"],)))
    assert json.loads(PersistentTokenCache(again).serialize()) == expected


@pytest.mark.parametrize("version", [2, 3])
def test_a_file_written_by_0_2_0_under_a_passphrase_still_loads(
    tmp_path: Path, version: int
) -> None:
    path = _copy(f"v{version}_passphrase.bin", tmp_path)
    assert crypto.parse_header(path.read_bytes())[0].version == version
    store = EncryptedFileStore(str(path), crypto.Passphrase(GOLDEN["passphrase"]))
    assert json.loads(store.load() or b"") == json.loads(GOLDEN["snapshot"])
    with pytest.raises(DecryptError, match="Wrong passphrase"):
        EncryptedFileStore(str(path), crypto.Passphrase("other")).load()
    with pytest.raises(DecryptError, match="protected by a passphrase, but a Fernet key"):
        EncryptedFileStore(str(path), crypto.FernetKeys((KEY,))).load()
    with pytest.raises(DecryptError, match="protected by a Fernet key, but a passphrase"):
        EncryptedFileStore(str(_copy("v2_keyed.bin", tmp_path)), crypto.Passphrase("x")).load()


def test_new_files_have_the_documented_header() -> None:
    blob = crypto.encrypt(b"{}", crypto.FernetKeys((KEY,)))
    line = blob.split(b"\n")[0].decode()
    fp = crypto.fingerprint(KEY)
    assert re.fullmatch(
        r'\{"format":"msal-keyring-cache","version":' + str(crypto.VERSION) + ',"kdf":"none","fp":"'
        + fp + r'","source":"key","gen":"[0-9a-f]{32}"\}', line,
    )  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert crypto.fingerprint(crypto.generate_key()) != fp
    salted = crypto.encrypt(b"{}", crypto.Passphrase("pw")).split(b"\n")[0]
    doc = json.loads(salted)
    assert (doc["kdf"], doc["n"], doc["r"], doc["p"]) == ("scrypt", 2**14, 8, 1)
    assert len(base64.b64decode(doc["salt"])) == 16


# -- keys ------------------------------------------------------------------------------------


def test_only_32_byte_url_safe_keys_are_fernet_keys() -> None:
    assert crypto.is_fernet_key(KEY)
    assert len(KEY) == 44
    short, long = (base64.urlsafe_b64encode(os.urandom(n)).decode() for n in (31, 33))
    for bad in (KEY[:-1], short, long, "é" * 44, "!" * 44, ""):
        assert not crypto.is_fernet_key(bad), bad
    with pytest.raises(ConfigError, match=r"the key: expected Fernet keys"):
        crypto.FernetKeys((KEY, "nope"), label="the key")
    with pytest.raises(ConfigError):
        crypto.FernetKeys(())


def test_the_header_says_where_the_key_came_from() -> None:
    source = crypto.FernetKeys((KEY,), label="key file k.key", tag="key_file")
    assert crypto.parse_header(crypto.encrypt(b"{}", source))[0].source == "key_file"


def test_a_key_source_never_shows_its_keys() -> None:
    keys = crypto.FernetKeys((KEY,))
    assert KEY not in repr(keys)
    assert crypto.fingerprint(KEY) in repr(keys)
    assert "pw" not in repr(crypto.Passphrase("pw"))


def test_key_sources_keep_what_they_were_given() -> None:
    keys = crypto.FernetKeys(
        (KEY,), "key file k.key", "key_file", "key file", crypto.Protection.KEY_FILE, "/k.key"
    )
    rotated = keys.with_keys((OTHER_KEY, KEY))
    for source in (keys, rotated):
        assert (source.label, source.tag, source.protection) == (
            "key file k.key",
            "key_file",
            "key file",
        )
        assert (source.level, source.path) == (crypto.Protection.KEY_FILE, "/k.key")
    assert rotated.keys == (OTHER_KEY, KEY)
    assert rotated.fingerprints == (crypto.fingerprint(OTHER_KEY), crypto.fingerprint(KEY))
    assert keys.keys == (KEY,)  # the rotation is a new source
    passphrase = crypto.Passphrase("pw", "the web passphrase")
    assert (passphrase.passphrase, passphrase.label, passphrase.tag) == (
        "pw",
        "the web passphrase",
        "passphrase",
    )
    assert passphrase.protection == "passphrase (scrypt)"
    assert passphrase.level is crypto.Protection.PASSPHRASE
    assert crypto.Passphrase("pw").label == "the passphrase"
    default = crypto.FernetKeys((KEY,))
    assert (default.label, default.tag, default.protection) == ("a Fernet key", "key", "Fernet key")
    assert (default.level, default.path) == (crypto.Protection.KEY, None)


@pytest.mark.parametrize(
    ("ikm", "salt", "info", "okm"),
    [  # RFC 5869, appendix A, test cases 1 and 3: the first 32 bytes of the OKM
        (
            "0b" * 22,
            "000102030405060708090a0b0c",
            "f0f1f2f3f4f5f6f7f8f9",
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf",
        ),
        ("0b" * 22, "", "", "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"),
    ],
)
def test_the_file_key_is_rfc_5869_hkdf_sha256(ikm: str, salt: str, info: str, okm: str) -> None:
    got = crypto.hkdf_sha256(bytes.fromhex(ikm), bytes.fromhex(salt), bytes.fromhex(info))
    assert got.hex() == okm


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=80), st.binary(max_size=40))
def test_the_file_key_is_what_cryptography_s_hkdf_derives(
    secret: bytes, salt: bytes, info: bytes
) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    expected = HKDF(hashes.SHA256(), 32, salt or None, info).derive(secret)
    assert crypto.hkdf_sha256(secret, salt, info) == expected


def test_the_record_cipher_is_cryptography_s_aesgcm(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.bindings import _rust
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert crypto._aesgcm() is AESGCM  # the binding's class is the public one
    openssl = getattr(_rust, "openssl", None)
    if openssl is not None and hasattr(openssl, "aead"):
        monkeypatch.delattr(openssl, "aead")  # a cryptography that keeps it elsewhere
        assert crypto._aesgcm() is AESGCM
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.bindings._rust", None)  # none at all
    assert crypto._aesgcm() is AESGCM


def test_opening_a_cache_does_not_import_cryptography_s_cipher_package(tmp_path: Path) -> None:
    code = (
        "import sys; from msal_keyring_cache.stores.file import EncryptedFileStore; "
        "from msal_keyring_cache import crypto; "
        "store = EncryptedFileStore(sys.argv[1], crypto.FernetKeys((sys.argv[2],))); "
        "store.save(b'{}'); store.append(b'{}', lambda: b'{}'); store.sync(); "
        "store = EncryptedFileStore(sys.argv[1], crypto.FernetKeys((sys.argv[2],))); "
        "assert store.load() == b'{}'; "
        "print(sorted(m for m in sys.modules if m.startswith('cryptography.hazmat.primitives')))"
    )
    done = subprocess.run([PYTHON, "-c", code, str(tmp_path / "c.bin"), KEY], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_protection_levels_that_doctor_warns_about() -> None:
    weak = {level for level in crypto.Protection if level.weak}
    assert weak == {crypto.Protection.NONE, crypto.Protection.WEAK}


def test_a_rotated_key_file_is_picked_up_by_a_running_process(tmp_path: Path) -> None:
    key_file = tmp_path / "cache.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    keys = crypto.FernetKeys(crypto.read_key_file(str(key_file)), path=str(key_file))
    new = crypto.generate_key()
    blob = crypto.encrypt(b'{"a":1}', crypto.FernetKeys((new,)))  # another process, new key
    key_file.write_text(f"{new}\n{KEY}\n")  # the rotation: new key in front
    assert crypto.decrypt(blob, keys)[0] == b'{"a":1}'
    assert keys.fingerprints == (crypto.fingerprint(new), crypto.fingerprint(KEY))
    other = crypto.encrypt(b"{}", crypto.FernetKeys((crypto.generate_key(),)))
    with pytest.raises(DecryptError, match="The file was not changed"):
        crypto.decrypt(other, keys)  # re-read, still no match: the error, not a loop


def test_key_files_are_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    with pytest.raises(ConfigError, match=r"does not exist; make one with: msal-keyring-cache"):
        crypto.read_key_file(str(path))
    path.write_text(KEY + "\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=rf"mode 0o644\); run: chmod 600 {re.escape(str(path))}"):
        crypto.read_key_file(str(path))
    path.chmod(0o600)
    assert crypto.read_key_file(str(path)) == (KEY,)
    path.write_text("# only a comment\n\n")
    with pytest.raises(ConfigError, match="does not hold Fernet keys"):
        crypto.read_key_file(str(path))
    path.write_text(f"{KEY}\nnot-a-key\n")
    with pytest.raises(ConfigError, match="does not hold Fernet keys"):
        crypto.read_key_file(str(path))


def test_the_default_key_file_is_made_once_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "cache.key"
    code = ("import sys; from msal_keyring_cache import crypto; "
            "print(crypto.default_key_file(sys.argv[1])[0])")  # fmt: skip
    made = subprocess.run([PYTHON, "-c", code, str(path)], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    theirs = made.stdout.strip()
    assert crypto.default_key_file(str(path)) == (theirs,)  # ours is theirs
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert os.listdir(path.parent) == ["cache.key"]  # no temporary file left
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(StoreError, match=r"Cannot create directory .*plain"):
        crypto.default_key_file(str(tmp_path / "plain" / "cache.key"))


# -- hostile headers ---------------------------------------------------------------------------


def test_the_header_line_may_be_4096_bytes_and_no_more() -> None:
    base = _header_line()
    pad = 4096 - len(base)
    at_limit = base[:-1] + b" " * pad + b"}"
    assert len(at_limit) == 4096
    header, token = crypto.parse_header(at_limit + b"\nTOKEN\nmore\n")
    assert (header.gen, token) == ("ab12", b"TOKEN")
    _refused(base[:-1] + b" " * (pad + 1) + b"}", "has no msal-keyring-cache header")
    with pytest.raises(CorruptCacheError, match="has no msal-keyring-cache header"):
        crypto.parse_header(base)  # no newline at all


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"{not json", "header is not valid JSON"),
        (b"[1]", "is not an msal-keyring-cache file"),
        (_header_line(format="other"), "is not an msal-keyring-cache file"),
        (_header_line(version=5), "unknown format version '5'"),
        (_header_line(version=True), "unknown format version 'True'"),
        (_header_line(version="2"), "unknown format version '2'"),
        (_header_line(kdf=None), "has no valid 'kdf'"),
        (_header_line(kdf=1), "has no valid 'kdf'"),
        (_header_line(gen=None), "has no valid 'gen'"),
        (_header_line(gen=""), "has an invalid 'gen'"),
        (_header_line(gen="a" * 65), "has an invalid 'gen'"),
        (_header_line(gen="ab-12"), "has an invalid 'gen'"),
        (_header_line(gen="é1"), "has an invalid 'gen'"),
        (_header_line(fp=None), "has no valid 'fp'"),
        (_header_line(kdf="argon2"), "names unknown key derivation 'argon2'"),
    ],
)
def test_a_bad_header_field_is_named(header: bytes, match: str) -> None:
    _refused(header, match)


def test_a_header_without_a_complete_snapshot_is_truncated() -> None:
    with pytest.raises(CorruptCacheError, match="truncated"):
        crypto.parse_header(_header_line() + b"\ngAAAA-no-newline")
    with pytest.raises(CorruptCacheError, match="truncated"):
        crypto.parse_header(_header_line() + b"\n\n")


def test_long_header_fields_are_cut_and_the_gen_may_be_64_characters() -> None:
    line = _header_line(gen="A1" * 32, fp="f" * 100, source="s" * 100)
    header, _ = crypto.parse_header(line + b"\nT\n")
    assert (len(header.gen), len(header.fp), len(header.source)) == (64, 64, 40)
    assert crypto.parse_header(_header_line(source=None) + b"\nT\n")[0].source == "key"


def _scrypt(raw: bytes = b"s" * 16, **fields: Any) -> bytes:
    doc = {"kdf": "scrypt", "salt": base64.b64encode(raw).decode(), "n": 2**14, "r": 8, "p": 1}
    doc.update(fields)
    return _header_line(**doc)


def test_scrypt_headers_within_the_bounds_are_read() -> None:
    for salt in (b"s" * 16, b"s" * 64):
        header, _ = crypto.parse_header(_scrypt(salt) + b"\nT\n")
        fields = (header.kdf, header.salt, header.n, header.r, header.p)
        assert fields == ("scrypt", salt, 2**14, 8, 1)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (_scrypt(b"s" * 15), "beyond what this library writes"),
        (_scrypt(b"s" * 65), "beyond what this library writes"),
        (_scrypt(salt="***"), "invalid salt"),
        (_scrypt(n=None), "has no valid 'n'"),
        (_scrypt(r=True), "has no valid 'r'"),
        (_scrypt(p="1"), "has no valid 'p'"),
        (_scrypt(n=2**20), "beyond what this library writes"),
    ],
)
def test_scrypt_headers_beyond_the_bounds_are_refused(header: bytes, match: str) -> None:
    _refused(header, match)


def test_scrypt_may_cost_four_times_the_library_s_own_and_no_more() -> None:
    ours = (2**14, 8, 1)
    assert crypto.scrypt_allowed(*ours)
    allowed = [(2**16, 8, 1), (2**14, 32, 1), (2**14, 8, 4), (2**10, 1, 16), (2**15, 16, 1),
               (2**12, 32, 4), (2**10, 32, 16)]  # fmt: skip
    refused = [(2**17, 8, 1), (2**14, 33, 1), (2**14, 8, 5), (2**10, 1, 17), (2**9, 8, 1),
               (3 * 2**10, 8, 1), (2**10, 33, 1), (2**14, 0, 1), (2**14, 8, 0), (2**16, 8, 2),
               (2**16, 16, 1), (2**15, 32, 1), (2**10, 32, 17)]  # fmt: skip
    assert [c for c in allowed if not crypto.scrypt_allowed(*c)] == []
    assert [c for c in refused if crypto.scrypt_allowed(*c)] == []


# -- records ---------------------------------------------------------------------------------


def test_every_record_is_bound_to_its_file_and_place() -> None:
    keys = crypto.FernetKeys((KEY,))
    blob = crypto.encrypt(b'{"a":1}', keys)
    header, _ = crypto.parse_header(blob)
    assert header.version == crypto.VERSION == 4
    record = crypto.seal(b'{"b":2}', KEY, header, 1)
    assert record.endswith(b"\n")
    # version 4: <length>:<nonce><ciphertext+tag>, binary (AES-256-GCM, no base64)
    digits, _, box = record[:-1].partition(b":")
    assert int(digits) == len(box) == 12 + len(b'{"b":2}') + 16
    assert crypto.split_records(record, 0, crypto.VERSION) == ([record[:-1]], len(record))
    assert crypto.unseal(record[:-1], KEY, header, 1) == b'{"b":2}'
    with pytest.raises(CorruptCacheError, match="journal record 2 is damaged or out of place"):
        crypto.unseal(record[:-1], KEY, header, 2)
    other = crypto.parse_header(crypto.encrypt(b"{}", keys))[0]
    with pytest.raises(CorruptCacheError, match="out of place"):
        crypto.unseal(record[:-1], KEY, other, 1)
    with pytest.raises(CorruptCacheError, match="out of place"):
        crypto.unseal(record[:-1], OTHER_KEY, header, 1)
    with pytest.raises(CorruptCacheError, match="journal record 1 has no valid length"):
        crypto.unseal(crypto.encrypt_record(b"a Fernet record", KEY)[:-1], KEY, header, 1)
    with pytest.raises(CorruptCacheError, match="journal record 1 has no valid length"):
        crypto.unseal(b"0" + record[:-1], KEY, header, 1)  # one byte form: no leading zero
    with pytest.raises(CorruptCacheError, match="journal record 1 is truncated"):
        crypto.unseal(b"27:" + box[:27], KEY, header, 1)
    # records of version 2 and 3 files: Fernet tokens, bound inside
    v3 = crypto.Header(header.fp, header.gen, version=3)
    fernet = crypto.seal(b'{"b":2}', KEY, v3, 1)
    assert fernet.count(b"\n") == 1
    assert fernet.startswith(b"gAAAAA")
    assert crypto.unseal(fernet[:-1], KEY, v3, 1) == b'{"b":2}'
    with pytest.raises(CorruptCacheError, match="journal record 2 is out of place"):
        crypto.unseal(fernet[:-1], KEY, v3, 2)
    with pytest.raises(CorruptCacheError, match="fails authentication"):
        crypto.unseal(record[:-1], KEY, v3, 1)  # a version-4 record under a header edited to v3
    with pytest.raises(CorruptCacheError, match="out of place"):
        crypto.unseal(crypto.encrypt_record(b"no binding", KEY)[:-1], KEY, v3, 1)
    v1 = crypto.Header(header.fp, header.gen, version=1)
    with pytest.raises(CorruptCacheError, match="does not match the file's format version"):
        crypto.unseal(fernet[:-1], KEY, v1, 1)  # a bound record under a header edited to v1
    assert crypto.unseal(crypto.encrypt_record(b"{}", KEY)[:-1], KEY, v1, 0) == b"{}"
    assert crypto.seal(b"{}", KEY, v1, 3) != crypto.encrypt_record(b"{}", KEY)  # random IV
    assert crypto.decrypt_record(crypto.seal(b"{}", KEY, v1, 3)[:-1], KEY) == b"{}"
    with pytest.raises(CorruptCacheError, match="fails authentication"):
        crypto.decrypt_record(fernet[:-5] + b"AAAA", KEY)


def test_split_records_keeps_only_complete_records() -> None:
    # versions 1-3: text records, one a line
    assert crypto.split_records(b"HEAD\nr1\nr2\npartial", 5, 3) == ([b"r1", b"r2"], 11)
    assert crypto.split_records(b"HEAD\nr1\n", 5, 3) == ([b"r1"], 8)
    assert crypto.split_records(b"HEAD\npartial", 5, 3) == ([], 5)
    # A blank or spaced line is a record of its own (damaged), never silently dropped.
    assert crypto.split_records(b"HEAD\nr1\n\nr 2\n", 5, 3) == ([b"r1", b"", b"r 2"], 13)
    # version 4: framed by length, a newline inside a record is data
    assert crypto.split_records(b"HEAD\n2:\n\n\n3:a\nb\n", 5, 4) == ([b"2:\n\n", b"3:a\nb"], 16)
    assert crypto.split_records(b"HEAD\n2:ab\n3:ab", 5, 4) == ([b"2:ab"], 10)  # cut off
    assert crypto.split_records(b"HEAD\n2:ab\n12", 5, 4) == ([b"2:ab"], 10)  # cut in the length
    assert crypto.split_records(b"HEAD\n2:ab\n", 5, 4) == ([b"2:ab"], 10)
    # damaged framing: the rest (to the last newline) is one record, which unseal refuses
    assert crypto.split_records(b"HEAD\n02:ab\n2:cd\nx", 5, 4) == ([b"02:ab\n2:cd"], 16)
    assert crypto.split_records(b"HEAD\n1:ab\n2:cd\n", 5, 4) == ([b"1:ab\n2:cd"], 15)
    assert crypto.split_records(b"HEAD\n2:ab\nxyz:1234567890123\n", 5, 4) == (
        [b"2:ab", b"xyz:1234567890123"],
        28,
    )
    assert crypto.split_records(b"HEAD\n1:abc", 5, 4) == ([], 5)  # no newline: a dead tail
