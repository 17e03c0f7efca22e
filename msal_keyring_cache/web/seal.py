"""Names, user binding and encryption of one app's per-user values.

* A user's record is named ``<prefix>:u:{<digest>}``, ``<digest>`` an HMAC of the user id
  under a key derived from the Fernet key: names reveal no user id.
* The value is a Fernet token of ``{"u": <binding>, "c": <msal cache>}``; ``<binding>``
  hashes the prefix and the user id, so a value copied onto another user (or another
  app's prefix) is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from ..crypto import FernetKeys, decrypt_record, encrypt_record
from ..errors import ConfigError, CorruptCacheError
from .merge import parse_payload

__all__ = ["Sealer", "User"]

logger = logging.getLogger("msal_keyring_cache.web")

MAX_PREFIX = 64
MAX_USER_ID = 4096
_NAME_LABEL = b"msal-keyring-cache redis key names v1"  # also for SQL rows: one name scheme
_BINDING_LABEL = b"msal-keyring-cache user binding v1\0"


@dataclass(frozen=True)
class User:
    names: list[str]  # one per configured key; the first is where saves go
    binding: str


class Sealer:
    """Names and seals the values of one app (``prefix``) under its Fernet ``keys``.

    ``count(stat)`` is told of every value refused (``refused``) or unusable (``corrupt``).
    """

    def __init__(
        self, key: Union[str, Sequence[str]], prefix: str, count: Callable[[str], None]
    ) -> None:
        keys = (key,) if isinstance(key, str) else tuple(key) if _is_sequence(key) else ()
        if not keys or not all(isinstance(k, str) for k in keys):
            raise ConfigError(_KEY_HELP)
        try:
            self.keys = FernetKeys(keys, label="the web caches' key")
        except ConfigError:
            raise ConfigError(_KEY_HELP) from None
        _check_prefix(prefix)
        self._prefix = prefix
        self._count = count
        # Names use an HMAC key derived per Fernet key (domain-separated by label).
        self._name_keys = [
            hmac.new(base64.urlsafe_b64decode(k), _NAME_LABEL, hashlib.sha256).digest()
            for k in keys
        ]
        self._prefix_bytes = prefix.encode("utf-8")

    def user(self, user_id: str) -> User:
        raw = _user_bytes(user_id)
        names = [
            f"{self._prefix}:u:{{{hmac.new(k, raw, hashlib.sha256).hexdigest()[:32]}}}"
            for k in self._name_keys
        ]
        return User(names, self._binding_of(raw))

    def binding(self, user_id: str) -> str:
        return self._binding_of(_user_bytes(user_id))

    def _binding_of(self, raw: bytes) -> str:
        # Inside the ciphertext only, so it need not be keyed; the prefix binds the app.
        return hashlib.sha256(_BINDING_LABEL + self._prefix_bytes + b"\0" + raw).hexdigest()

    def decrypt(
        self, name: str, data: bytes, binding: str
    ) -> tuple[Optional[dict[str, Any]], bool, bytes]:
        """(cache or None if unusable, decrypted by an old key, the plain text)."""
        if not data:
            self.unusable(name, "has no encrypted data")
            return None, False, b""
        plain, old_key = None, False
        for index, key in enumerate(self.keys.keys):
            try:
                plain, old_key = decrypt_record(data, key), index > 0
                break
            except CorruptCacheError:
                continue
        if plain is None:
            self.unusable(name, "does not decrypt with any configured key")
            return None, False, b""
        payload = parse_payload(plain)
        if payload is None:
            self.unusable(name, "does not hold a token cache")
            return None, False, b""
        if not hmac.compare_digest(str(payload.get("u", "")).encode(), binding.encode()):
            self._count("refused")
            logger.warning(
                "Refused the value of %s: it belongs to another user or app (copied there?). "
                "Treating this user's cache as empty; it is replaced on the next save.",
                name,
            )
            return None, False, b""
        return payload["c"], old_key, plain

    def open(self, name: str, data: bytes, binding: str) -> tuple[Optional[dict[str, Any]], bool]:
        """Decrypt and check a value: (cache or None if unusable, decrypted by an old key)."""
        cache, old_key, _ = self.decrypt(name, data, binding)
        return cache, old_key

    def open_text(self, slot: str, raw: Any, binding: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, str):
            self.unusable(f"session entry {slot!r}", "is not a token cache")
            return {}
        return (
            self.open(f"session entry {slot!r}", raw.encode("ascii", "replace"), binding)[0] or {}
        )

    def unusable(self, name: str, why: str) -> None:
        self._count("corrupt")
        logger.warning("The value of %s %s; treating this user's cache as empty "
                       "(the user signs in again).", name, why)  # fmt: skip

    def seal(self, binding: str, cache: Mapping[str, Any]) -> bytes:
        payload = json.dumps({"u": binding, "c": cache}, separators=(",", ":"))
        return encrypt_record(payload.encode("utf-8"), self.keys.keys[0])[:-1]


_KEY_HELP = (
    "UserCaches needs one or more Fernet keys (32 url-safe base64-encoded bytes each); "
    "make one with: msal-keyring-cache generate-key"
)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _user_bytes(user_id: str) -> bytes:
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_USER_ID:
        raise ConfigError(
            f"user_id must be a non-empty text of at most {MAX_USER_ID} characters "
            "(a stable id of the signed-in user, such as its home_account_id)"
        )
    try:
        return user_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            "user_id is not valid text (it contains a lone surrogate): pass the user's id "
            "as it came from the identity provider"
        ) from None


def _check_prefix(prefix: Any) -> None:
    ok = isinstance(prefix, str) and 0 < len(prefix) <= MAX_PREFIX and prefix.isprintable()
    if ok and "{" not in prefix and "}" not in prefix:
        try:
            prefix.encode("utf-8")
            return
        except UnicodeEncodeError:
            pass
    shown = repr(prefix) if isinstance(prefix, str) and len(prefix) <= 200 else "given"
    raise ConfigError(
        f"The web cache prefix {shown} is not valid: expected 1 to {MAX_PREFIX} printable "
        "characters without '{' or '}' (braces are Redis Cluster hash tags)"
    )
