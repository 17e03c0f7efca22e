"""The encrypted-file format and the key sources, in one place.

A file is one header line of JSON, then records: the snapshot, then the journal::

    {"format":"msal-keyring-cache","version":4,"kdf":"none","fp":"…","source":"key","gen":"…"}
    19437987:<binary>   <- record 0, the snapshot: the whole cache as JSON
    1843:<binary>       <- records 1, 2 …, the journal: one per later write, the entries it changed

Every record ends with a newline.

* ``kdf`` is ``none`` (a Fernet key given directly) or ``scrypt`` (a passphrase;
  the header then carries ``salt``, ``n``, ``r`` and ``p``).
* ``fp`` is the fingerprint of the key that encrypted the file: an HMAC of a fixed
  label under the key, so a wrong key is told apart from a damaged file without
  decrypting, and the fingerprint reveals nothing of the key.
* ``gen`` is a random id (128 bits) new on every whole-file write: it names this
  file among all files ever written under the key.
* ``source`` says where the key came from (for ``status``; not trusted for anything).

Version 4 writes every record the same way, as one binary record: its length in ASCII
digits (no leading zero: one byte form per record), ``:``, then a 12-byte random nonce and
the AES-256-GCM ciphertext and tag of the JSON, then the newline (a newline inside is
data: the length frames the record). The key is the file's own, derived from its Fernet
key with HKDF-SHA256 (salt: the ``gen``, so every file has its own key), and ``<gen>
<seq>`` is the associated data (``seq`` 0 for the snapshot, then 1, 2 …): a record that
was reordered, dropped from the middle, replayed, or spliced in from another file under
the same key fails authentication. GCM authenticates and decrypts in one pass, without
base64: for a large snapshot that is most of the cost of loading it, and for the small
journal records every process reads from every other (the catch-up under contention) a
Fernet token cost ~15x as much CPU (~11 us against ~0.7 us for a 2 KB record), and
needed the Fernet module imported in each process. The snapshot is not compressed: the
tokens in it are random text (zlib at level 1 saved ~40 % on a 10,000-token cache and
cost more to inflate than it saved), and compression would tie the file's size to its
content.

Older versions are still read, and rewritten as version 4 by the next write: version 3
(the snapshot as above, journal records Fernet tokens whose plaintext starts with
``<gen> <seq>\n``), version 2 (the snapshot a Fernet token too, bound by ``<gen> 0``) and
version 1 (Fernet records, no binding). What cannot be detected: docs/security.md.

Nothing in the header is secret. A record is complete only with its newline: a writer
killed mid-append leaves a tail that readers ignore and the next writer cuts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import hashlib
import hmac
import importlib
import json
import os
import secrets
import threading
from typing import Any, NamedTuple, Optional, Union

from .errors import ConfigError, CorruptCacheError, DecryptError

__all__ = [
    "Protection",
    "FernetKeys",
    "Header",
    "KeySource",
    "Passphrase",
    "decrypt",
    "encrypt",
    "fingerprint",
    "generate_key",
    "hkdf_sha256",
    "is_fernet_key",
    "locate",
    "new_file",
    "parse_header",
    "scrypt_allowed",
    "seal",
    "unseal",
]

FORMAT = "msal-keyring-cache"
VERSION = 4
VERSIONS = (1, 2, 3, 4)
MAX_HEADER = 4096
#: A binary record (the snapshot since version 3, every record since version 4): at most
#: this many length digits (it is under 1 TB), and its nonce and tag (bytes) around the
#: ciphertext.
_LENGTH_DIGITS = 12
_NONCE, _TAG = 12, 16
_SNAPSHOT_INFO = b"msal-keyring-cache snapshot v3"
# scrypt, cost as the cryptography docs suggest for interactive use (16 MiB, ~50 ms).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
#: A header may ask for at most this multiple of the work the library itself uses (n·r·p);
#: its memory (128·n·r bytes) is then within the same multiple, as p >= 1: a crafted
#: header cannot make a start take minutes or gigabytes.
SCRYPT_LIMIT = 4
_FP_LABEL = b"msal-keyring-cache key fingerprint v1"


def generate_key() -> str:
    """Return a new random Fernet key (url-safe base64 text)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def is_fernet_key(key: str) -> bool:
    """Whether ``key`` is 32 url-safe base64-encoded bytes."""
    try:
        return len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32 and len(key) == 44
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def fingerprint(key: str) -> str:
    """Non-secret fingerprint of a Fernet key (16 hex digits)."""
    raw = base64.urlsafe_b64decode(key.encode("ascii"))
    return hmac.new(raw, _FP_LABEL, hashlib.sha256).hexdigest()[:16]


class Header(NamedTuple):
    """The parsed header line of an encrypted file.

    A named tuple, not a dataclass: every process that opens a cache builds this class,
    and a frozen dataclass costs ~0.8 ms of code generation at import (Python 3.11).
    """

    fp: str
    gen: str
    kdf: str = "none"
    source: str = "key"
    salt: bytes = b""
    n: int = 0
    r: int = 0
    p: int = 0
    version: int = VERSION

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": self.version,
            "kdf": self.kdf,
            "fp": self.fp,
            "source": self.source,
            "gen": self.gen,
        }
        if self.kdf == "scrypt":
            doc.update(salt=base64.b64encode(self.salt).decode(), n=self.n, r=self.r, p=self.p)
        return json.dumps(doc, separators=(",", ":")).encode()


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CorruptCacheError(f"the file header has no valid {name!r}")
    return value


def parse_header(blob: bytes) -> tuple[Header, bytes]:
    """Split a file into its header and its first record (the snapshot token).

    Raises :class:`CorruptCacheError` for anything that is not a valid file.
    """
    header, start, end = locate(blob)
    return header, blob[start:end]


def open_file(blob: bytes, source: KeySource) -> tuple[Header, str, bytes, int]:
    """A whole file's header, key and snapshot plaintext, and where its journal starts.

    The snapshot is decrypted where it lies in ``blob`` (a large one is not copied out
    first). Raises like :func:`parse_header`, :func:`file_key` and :func:`unseal`.
    """
    header, start, end = locate(blob)
    key = file_key(header, source)
    if header.version >= 3:
        plaintext = _open_box(memoryview(blob)[start:end], key, header, 0)
    else:
        plaintext = unseal(blob[start:end], key, header, 0)
    return header, key, plaintext, end + 1


def locate(blob: bytes) -> tuple[Header, int, int]:
    """The header, and where the snapshot record lies in ``blob``: ``blob[start:end]``,
    its newline at ``end`` (nothing is copied). Raises like :func:`parse_header`."""
    header, start = _header(blob)
    stop = _record_end(blob, start) if header.version >= 3 else blob.find(b"\n", start)
    if stop <= start:
        raise CorruptCacheError("the file is truncated (no complete encrypted snapshot)")
    return header, start, stop


#: How many bytes from the start of a file hold its header and its snapshot's length.
HEAD_BYTES = MAX_HEADER + 1 + _LENGTH_DIGITS + 1


def skip_snapshot(head: bytes) -> tuple[Header, int]:
    """The header, and where the snapshot's newline will be, from the first
    :data:`HEAD_BYTES` of a file: a reader that wants only the journal after the snapshot
    need not read the snapshot. Version 3 and later (a length-framed snapshot);
    :class:`CorruptCacheError` for an older file or a head without a valid length."""
    header, start = _header(head)
    if header.version < 3:
        raise CorruptCacheError("the snapshot is not length-framed (format version < 3)")
    colon = head.find(b":", start, start + _LENGTH_DIGITS + 1)
    digits = head[start:colon]
    if colon < 0 or not _canonical(digits):
        raise CorruptCacheError("the encrypted snapshot has no valid length")
    return header, colon + 1 + int(digits)


def _header(blob: bytes) -> tuple[Header, int]:
    """A file's header, and where its snapshot record starts."""
    end = blob.find(b"\n", 0, MAX_HEADER + 1)
    if end < 0:
        raise CorruptCacheError("the file has no msal-keyring-cache header")
    line = blob[:end]
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CorruptCacheError("the file header is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CorruptCacheError("the file is not an msal-keyring-cache file")
    version = doc.get("version")
    if isinstance(version, bool) or version not in VERSIONS:
        raise CorruptCacheError(f"the file has unknown format version {str(version)[:20]!r}")
    kdf = _field(doc, "kdf", str)
    gen = _field(doc, "gen", str)
    if not (0 < len(gen) <= 64 and gen.isascii() and gen.isalnum()):
        raise CorruptCacheError("the file header has an invalid 'gen'")
    header = Header(
        fp=_field(doc, "fp", str)[:64],
        gen=gen,
        kdf=kdf[:20],
        source=str(doc.get("source", "key"))[:40],
        version=version,
    )
    if kdf == "scrypt":
        try:
            salt = base64.b64decode(_field(doc, "salt", str), validate=True)
        except (binascii.Error, ValueError):
            raise CorruptCacheError("the file header has an invalid salt") from None
        n, r, p = (_field(doc, x, int) for x in "nrp")
        # Bounds keep a crafted header from making the KDF run for minutes.
        if not (16 <= len(salt) <= 64 and scrypt_allowed(n, r, p)):
            raise CorruptCacheError(
                "the file header asks for scrypt parameters beyond what this library writes"
            )
        header = Header(header.fp, gen, kdf, header.source, salt, n, r, p, version)
    elif kdf != "none":
        raise CorruptCacheError(f"the file header names unknown key derivation {kdf[:20]!r}")
    return header, end + 1


def _canonical(digits: bytes) -> bool:
    """A length as the writer writes it: ASCII digits, no leading zero (one form per record)."""
    return digits.isdigit() and not digits.startswith(b"0")


def _record_end(blob: bytes, start: int, what: str = "the encrypted snapshot") -> int:
    """Where the binary record at ``start`` (``<length>:<length bytes>`` and a newline)
    ends, before its newline; -1 if incomplete. A length that is not plain digits, or
    does not end at a newline, is damage."""
    colon = blob.find(b":", start, start + _LENGTH_DIGITS + 1)
    digits = blob[start:colon]
    if colon < 0 or not _canonical(digits):
        tail = blob[start:]
        if colon < 0 and len(tail) <= _LENGTH_DIGITS and (not tail or tail.isdigit()):
            return -1  # cut off within the length
        raise CorruptCacheError(f"{what} has no valid length")
    end = colon + 1 + int(digits)
    if end >= len(blob):
        return -1
    if blob[end : end + 1] != b"\n":
        raise CorruptCacheError(f"{what} does not end where its length says")
    return end


def scrypt_allowed(n: int, r: int, p: int) -> bool:
    """Whether scrypt ``(n, r, p)`` stays within :data:`SCRYPT_LIMIT` times our own cost."""
    if not (n >= 2**10 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    return n * r * p <= SCRYPT_LIMIT * SCRYPT_N * SCRYPT_R * SCRYPT_P


def file_records(blob: bytes) -> list[bytes]:
    """A whole file as its header line, snapshot record and complete journal records, each
    without its newline (``b"\\n".join(...) + b"\\n"`` gives the file back, less a dead tail).

    For tools and tests; :class:`CorruptCacheError` if the header or snapshot is not valid.
    """
    header, token = parse_header(blob)
    start = blob.find(b"\n") + 1
    journal, _end = split_records(blob, start + len(token) + 1, header.version)
    return [blob[: start - 1], token, *journal]


def split_records(blob: bytes, start: int, version: int) -> tuple[list[bytes], int]:
    """The complete records in ``blob[start:]`` (each without its newline) and the offset
    just after the last one, for a file of format ``version``.

    Version 4 records are binary, framed by their length (a newline inside is data):
    from a record whose framing is damaged on, the rest up to the last newline is
    returned as one record, which :func:`unseal` refuses, as it refuses a damaged
    record of a text version. A record cut off at the end (a killed writer) is left out.
    """
    if version < 4:
        end = blob.rfind(b"\n", start)
        if end < 0:
            return [], start
        return blob[start:end].split(b"\n"), end + 1
    records: list[bytes] = []
    while start < len(blob):
        try:
            end = _record_end(blob, start, "a journal record")
        except CorruptCacheError:
            end = blob.rfind(b"\n", start)
            if end >= 0:
                records.append(blob[start:end])
                start = end + 1
            break
        if end < 0:
            break
        records.append(blob[start:end])
        start = end + 1
    return records, start


class Protection(str, enum.Enum):
    """How well a stored cache is protected at rest, weakest first."""

    #: Not protected: kept in memory only, or plaintext.
    NONE = "none"
    #: The generated key file beside the user's data: protects only against the cache file
    #: leaking alone (anyone who can read the user's files can read both).
    WEAK = "weak"
    #: A Fernet key the application supplies (argument or environment variable).
    KEY = "key"
    #: A key file the user made and keeps apart from the data.
    KEY_FILE = "key_file"
    #: A passphrase (the key is derived with scrypt).
    PASSPHRASE = "passphrase"  # noqa: S105 - a level, not a secret
    #: The OS credential store keeps the cache, or the file's key.
    CREDENTIAL_STORE = "credential_store"

    @property
    def weak(self) -> bool:
        """Whether ``doctor`` should warn about it."""
        return self._is_weak()

    def _is_weak(self) -> bool:  # a plain method: mutmut mutates no decorated function
        return self in (Protection.NONE, Protection.WEAK)


class KeySource:
    """Where a file's key comes from. Subclasses: :class:`FernetKeys`, :class:`Passphrase`."""

    #: Plain words for ``status``, e.g. ``"key file /home/me/.config/app/cache.key"``.
    label: str = ""
    #: Short tag written into the header (``key``, ``key_file``, ``keyring``, …).
    tag: str = "key"
    #: Protection level in plain words, for ``status``.
    protection: str = "Fernet key"
    #: Protection level, for code (``doctor`` warns about weak ones).
    level: Protection = Protection.KEY
    #: The key file the keys came from, if any.
    path: Optional[str] = None

    def keys_for(self, header: Header) -> list[str]:  # pragma: no cover - abstract
        """Fernet keys able to decrypt a file with ``header``, best match first."""
        raise NotImplementedError

    def new_header(self, previous: Optional[Header]) -> tuple[Header, str]:  # pragma: no cover
        """Header and encryption key for the next write."""
        raise NotImplementedError


class FernetKeys(KeySource):
    """One or more Fernet keys; the first encrypts, any decrypts (rotation)."""

    # A plain class (a dataclass costs ~0.4 ms of code generation at import); its fields
    # are not reassigned, except ``keys`` by :meth:`_reread` (a rotated key file).
    def __init__(
        self,
        keys: tuple[str, ...],
        label: str = "a Fernet key",
        tag: str = "key",
        protection: str = "Fernet key",
        level: Protection = Protection.KEY,
        path: Optional[str] = None,
    ) -> None:
        if not keys or not all(is_fernet_key(k) for k in keys):
            raise ConfigError(f"{label}: expected Fernet keys (32 url-safe base64 bytes)")
        self.keys = tuple(keys)
        self.label = label
        self.tag = tag
        self.protection = protection
        self.level = level
        self.path = path
        self._fps = tuple(fingerprint(k) for k in self.keys)

    def __repr__(self) -> str:
        return f"FernetKeys(label={self.label!r}, fingerprints={list(self._fps)})"

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return self._fps

    def with_keys(self, keys: tuple[str, ...]) -> FernetKeys:
        """The same source (label, tag, key file) holding other keys: a rotation's."""
        return FernetKeys(keys, self.label, self.tag, self.protection, self.level, self.path)

    def keys_for(self, header: Header) -> list[str]:
        if header.kdf != "none":
            raise DecryptError(
                "The cache file is protected by a passphrase, but a Fernet key is configured: "
                f"{self.label}. Set the passphrase (…_PASSPHRASE) instead."
            )
        matching = [k for k, fp in zip(self.keys, self._fps) if fp == header.fp]
        if not matching and self.path and self._reread():
            matching = [k for k, fp in zip(self.keys, self._fps) if fp == header.fp]
        if not matching:
            raise DecryptError(
                f"The cache file was encrypted with a key of fingerprint {header.fp}, but "
                f"{self.label} has fingerprint(s) {', '.join(self._fps)}. Configure the key "
                "the file was written with (a new "
                "key can be put in front of it to rotate), or delete the cache and sign in again. "
                "The file was not changed."
            )
        return matching

    def _reread(self) -> bool:
        """Read the key file again (a key rotation by another process); whether it changed.

        Called once per fingerprint mismatch, so a running process picks up a rotated key
        instead of failing until restarted.
        """
        try:
            keys = read_key_file(self.path or "")
        except ConfigError:
            return False
        if keys == self.keys:
            return False
        self.keys = keys
        self._fps = tuple(fingerprint(k) for k in keys)
        return True

    def new_header(self, previous: Optional[Header]) -> tuple[Header, str]:
        return Header(fp=self._fps[0], gen=secrets.token_hex(16), source=self.tag), self.keys[0]


_derived: dict[bytes, str] = {}
_derived_lock = threading.Lock()


class Passphrase(KeySource):
    """A passphrase; the key is derived with scrypt and a random salt per file."""

    tag = "passphrase"
    protection = "passphrase (scrypt)"
    level = Protection.PASSPHRASE

    def __init__(self, passphrase: str, label: str = "the passphrase") -> None:
        self.passphrase = passphrase
        self.label = label

    def __repr__(self) -> str:
        return "Passphrase(***)"

    def derive(self, salt: bytes, n: int, r: int, p: int) -> str:
        """The Fernet key for these KDF parameters; computed once per process."""
        memo = hashlib.sha256(
            b"%d:%d:%d:" % (n, r, p) + salt + b":" + self.passphrase.encode()
        ).digest()
        with _derived_lock:
            if memo in _derived:
                return _derived[memo]
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        raw = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(self.passphrase.encode())
        key = base64.urlsafe_b64encode(raw).decode("ascii")
        with _derived_lock:
            _derived[memo] = key
        return key

    def keys_for(self, header: Header) -> list[str]:
        if header.kdf != "scrypt":
            raise DecryptError(
                "The cache file is protected by a Fernet key, but a passphrase is configured. "
                "Configure the key (…_KEY or …_KEY_FILE) instead. The file was not changed."
            )
        key = self.derive(header.salt, header.n, header.r, header.p)
        if fingerprint(key) != header.fp:
            raise DecryptError(
                "Wrong passphrase for the cache file (the derived key does not match the "
                "file's key fingerprint). Set the passphrase it was written with, or delete "
                "the cache and sign in again. The file was not changed."
            )
        return [key]

    def new_header(self, previous: Optional[Header]) -> tuple[Header, str]:
        if previous is not None and previous.kdf == "scrypt":
            salt, n, r, p = previous.salt, previous.n, previous.r, previous.p
        else:
            salt, n, r, p = os.urandom(16), SCRYPT_N, SCRYPT_R, SCRYPT_P
        key = self.derive(salt, n, r, p)
        header = Header(fingerprint(key), secrets.token_hex(16), "scrypt", self.tag, salt, n, r, p)
        return header, key


def encrypt(plaintext: bytes, source: KeySource, previous: Optional[Header] = None) -> bytes:
    """A new file: header and snapshot record of ``plaintext``, under ``source``'s first key."""
    return new_file(plaintext, source, previous)[2]


def new_file(
    plaintext: bytes, source: KeySource, previous: Optional[Header] = None
) -> tuple[Header, str, bytes]:
    """:func:`encrypt`, with the new file's header and key (a writer keeps both: parsing
    them back out of the file would copy its whole snapshot)."""
    header, key = source.new_header(previous)
    return header, key, header.to_bytes() + b"\n" + seal(plaintext, key, header, 0)


_fernets: dict[str, Any] = {}


def _fernet(key: str) -> Any:
    # One Fernet object per key: building one costs more than a small record's crypto.
    fernet = _fernets.get(key)
    if fernet is None:
        from cryptography.fernet import Fernet

        if len(_fernets) > 16:
            _fernets.clear()
        fernet = _fernets[key] = Fernet(key.encode())
    return fernet


def seal(payload: bytes, key: str, header: Header, seq: int) -> bytes:
    """Record number ``seq`` of the file with ``header``, with its newline.

    Version 2 and later prefix a journal record's plaintext with ``<gen> <seq>\n``,
    binding it to this file and this place in it; version 3 writes the snapshot
    (``seq`` 0) as one AES-256-GCM record bound the same way, version 4 every record
    (module docstring).
    """
    if header.version >= 4 or (header.version == 3 and seq == 0):
        box = _file_cipher(key, header).encrypt(
            nonce := os.urandom(_NONCE), payload, _binding(header, seq)
        )
        return b"%d:%s%s\n" % (len(box) + _NONCE, nonce, box)
    if header.version >= 2:
        payload = _binding(header, seq) + b"\n" + payload
    return bytes(_fernet(key).encrypt(payload)) + b"\n"


def unseal(token: bytes, key: str, header: Header, seq: int) -> bytes:
    """The payload of record ``seq`` (without its newline); :class:`CorruptCacheError` if
    it is damaged or was not written at this place of this file."""
    if header.version >= 4 or (header.version == 3 and seq == 0):
        return _open_box(token, key, header, seq)
    plaintext = decrypt_record(token, key)
    if header.version < 2:
        # Version 1 records are JSON objects; a version-2 record (its binding first) under
        # a header edited to say version 1 is refused, not parsed as junk.
        if not plaintext.startswith(b"{"):
            raise CorruptCacheError("a record does not match the file's format version")
        return plaintext
    end = plaintext.find(b"\n", 0, 100)
    if end < 0 or plaintext[:end] != _binding(header, seq):
        raise CorruptCacheError(
            f"journal record {seq} is out of place (records were reordered, dropped, "
            "replayed or copied in from another file)"
        )
    return plaintext[end + 1 :]


def _binding(header: Header, seq: int) -> bytes:
    return b"%s %d" % (header.gen.encode(), seq)


def _open_box(token: Union[bytes, memoryview], key: str, header: Header, seq: int) -> bytes:
    """Decrypt binary record ``seq`` (``<length>:<nonce><ciphertext+tag>``): the snapshot
    of version 3, any record of version 4."""
    from cryptography.exceptions import InvalidTag

    what = f"journal record {seq}" if seq else "the encrypted snapshot"
    head = bytes(token[: _LENGTH_DIGITS + 1])
    colon = head.find(b":")
    digits = head[:colon]
    if colon < 0 or not _canonical(digits) or int(digits) != len(token) - colon - 1:
        raise CorruptCacheError(f"{what} has no valid length")
    start = colon + 1
    if len(token) - start < _NONCE + _TAG:
        raise CorruptCacheError(f"{what} is truncated")
    view = memoryview(token)  # no copy of a large snapshot before decrypting it
    try:
        return bytes(
            _file_cipher(key, header).decrypt(
                view[start : start + _NONCE], view[start + _NONCE :], _binding(header, seq)
            )
        )
    except (InvalidTag, ValueError, OverflowError):
        raise CorruptCacheError(
            f"{what} is damaged or out of place (its key fingerprint matches, but it fails "
            "authentication: altered, reordered, replayed, or copied in from another file)"
        ) from None


_ciphers: dict[tuple[str, str], Any] = {}


def _file_cipher(key: str, header: Header) -> Any:
    """AES-256-GCM under this file's own key: HKDF-SHA256 of the Fernet key, salted by gen.

    One per file (key and gen) and process: a reader opens every record of a file with it.
    """
    cipher = _ciphers.get((key, header.gen))
    if cipher is not None:
        return cipher
    raw = base64.urlsafe_b64decode(key.encode("ascii"))
    if len(_ciphers) > 16:
        _ciphers.clear()
    cipher = _ciphers[(key, header.gen)] = _aesgcm()(hkdf_sha256(raw, header.gen.encode()))
    return cipher


def _aesgcm() -> Any:
    """cryptography's ``AESGCM`` class, imported from where its public module takes it.

    ``cryptography.hazmat.primitives.ciphers.aead`` only re-exports the Rust binding's
    class, but importing it runs the whole ``ciphers`` package first: ~1.7 ms more import
    and ~1.2 ms more interpreter teardown in every process that opens a cache. A test
    checks that both names are the same class; a cryptography without that binding gets
    the public import. (Looked up by name: type stubs of a private module may change.)
    """
    try:
        return importlib.import_module("cryptography.hazmat.bindings._rust").openssl.aead.AESGCM
    except (ImportError, AttributeError):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM


def hkdf_sha256(secret: bytes, salt: bytes, info: bytes = _SNAPSHOT_INFO) -> bytes:
    """HKDF-SHA256 (RFC 5869) to a 32-byte key: one HMAC extracts, one expands.

    The standard library's HMAC rather than cryptography's ``HKDF``: the same bytes (the
    tests check it against RFC 5869's vectors and against ``HKDF``) without every process
    importing and first using a second primitive of cryptography for it (~0.9 ms).
    """
    prk = hmac.new(salt, secret, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def encrypt_record(plaintext: bytes, key: str) -> bytes:
    """One newline-terminated record without binding (version 1; tests and tools)."""
    return bytes(_fernet(key).encrypt(plaintext)) + b"\n"


def decrypt_record(token: bytes, key: str) -> bytes:
    """Decrypt one token (without its newline); :class:`CorruptCacheError` if damaged."""
    from cryptography.fernet import InvalidToken

    try:
        return bytes(_fernet(key).decrypt(token))
    except (InvalidToken, ValueError, TypeError):
        raise CorruptCacheError(
            "the encrypted data is damaged (its key fingerprint matches, but it fails "
            "authentication)"
        ) from None


def file_key(header: Header, source: KeySource) -> str:
    """The key of a file with ``header`` among ``source``'s keys (``DecryptError`` if absent)."""
    return source.keys_for(header)[0]


def decrypt(blob: bytes, source: KeySource) -> tuple[bytes, Header]:
    """Decrypt a file's snapshot record.

    Raises :class:`~msal_keyring_cache.DecryptError` when the configured key is not the
    file's key and :class:`CorruptCacheError` when the file is damaged.
    """
    header, _key, plaintext, _end = open_file(blob, source)
    return plaintext, header


def read_key_file(path: str) -> tuple[str, ...]:
    """Fernet keys from a key file (one per line, ``#`` comments); must be private."""
    from .files import check_not_symlink, loose_permissions, read_file

    check_not_symlink(path)
    loose = loose_permissions(path)
    if loose:
        raise ConfigError(
            f"The key file {path} is readable by other users (mode {loose}); run: chmod 600 {path}"
        )
    blob = read_file(path)
    if blob is None:
        raise ConfigError(
            f"The key file {path} does not exist; make one with: "
            f"msal-keyring-cache generate-key > {path}"
        )
    lines = blob.decode("ascii", "replace").splitlines()
    keys = tuple(x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#"))
    if not keys or not all(is_fernet_key(k) for k in keys):
        raise ConfigError(
            f"The key file {path} does not hold Fernet keys (one per line, 32 url-safe "
            "base64-encoded bytes each)."
        )
    return keys


def default_key_file(path: str) -> tuple[str, ...]:
    """The generated key file at ``path``, made on first use (0600, in a 0700 directory)."""
    from .files import atomic_write, ensure_private_dir

    if not os.path.exists(path):
        ensure_private_dir(os.path.dirname(path))
        tmp = f"{path}.{secrets.token_hex(4)}.new"
        os.close(atomic_write(tmp, (generate_key() + "\n").encode()))
        try:
            os.link(tmp, path)  # fails if another process made one first: use theirs
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(
                f"Cannot create the key file {path}: {exc.strerror}. Configure a key "
                "(…_KEY, …_KEY_FILE or …_PASSPHRASE) or fix the directory."
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return read_key_file(path)
