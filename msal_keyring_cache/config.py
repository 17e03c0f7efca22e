"""Every setting, its environment variable, type, default and meaning: one table.

The table is the :class:`Settings` dataclass itself. Each field carries its
environment-variable suffix, a parser and a help text in its metadata; the docs'
configuration reference and the CLI flags are generated from it.

Precedence: an explicit argument wins over ``<PREFIX>_<NAME>`` in the environment,
which wins over the default. The prefix is ``MSAL_KEYRING_CACHE`` unless the
application chooses its own (``env_prefix="MYTOOL_CACHE"``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Optional

from .errors import ConfigError

__all__ = ["DEFAULT_ENV_PREFIX", "Settings", "describe_settings"]

DEFAULT_ENV_PREFIX = "MSAL_KEYRING_CACHE"
DEFAULT_APP_NAME = "msal-keyring-cache"

Parser = Callable[[str], Any]


class _Invalid(ValueError):
    """A raw value did not parse; the text says what is accepted."""


# -- parsers: str -> value, raising _Invalid with the accepted values ---------------


def _choice(*choices: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise _Invalid("expected one of " + ", ".join(choices))
        return value

    parse.__doc__ = "one of " + ", ".join(f"``{c}``" for c in choices)
    return parse


def _text(raw: str) -> str:
    """text"""
    value = raw.strip()
    if not value:
        raise _Invalid("expected a non-empty text")
    return value


def _secret(raw: str) -> str:
    """text (secret)"""
    if not raw:
        raise _Invalid("expected a non-empty value")
    return raw


def _path(raw: str) -> str:
    """file path (``~`` expanded)"""
    value = raw.strip()
    if not value:
        raise _Invalid("expected a file path")
    return os.path.abspath(os.path.expanduser(value))


def _seconds(raw: str) -> float:
    """number of seconds"""
    try:
        value = float(raw.strip())
    except ValueError:
        raise _Invalid("expected a number of seconds, such as 30 or 2.5") from None
    if not value >= 0 or value == float("inf"):  # rejects nan too
        raise _Invalid("expected a finite number of seconds >= 0")
    return value


def _whole_seconds(raw: str) -> int:
    """whole number of seconds (> 0)"""
    try:
        value = int(raw.strip())
    except ValueError:
        raise _Invalid("expected a whole number of seconds, such as 7776000") from None
    if value <= 0:
        raise _Invalid("expected a whole number of seconds > 0")
    return value


def _length(raw: str) -> int:
    """number of characters (>= 200)"""
    try:
        value = int(raw.strip())
    except ValueError:
        raise _Invalid("expected a whole number of characters, such as 1280") from None
    if not 200 <= value <= 10_000_000:
        raise _Invalid("expected a whole number of characters from 200 to 10000000")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(raw: str) -> bool:
    """boolean (``1/0``, ``true/false``, ``yes/no``, ``on/off``)"""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _Invalid("expected one of 1, 0, true, false, yes, no, on, off")


def _keys(raw: str) -> tuple[str, ...]:
    """Fernet key(s), comma-separated; the first encrypts, all decrypt (secret)"""
    from . import crypto  # late: keeps cryptography off the import path

    keys = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not keys:
        raise _Invalid("expected one or more Fernet keys, comma-separated")
    for index, key in enumerate(keys, 1):
        if not crypto.is_fernet_key(key):
            raise _Invalid(
                f"key #{index} is not a Fernet key (32 url-safe base64-encoded bytes); "
                "make one with: msal-keyring-cache generate-key"
            )
    return keys


def _setting(
    default: Any,
    env: str,
    parse: Parser,
    help: str,  # noqa: A002 - reads best in the table
    *,
    secret: bool = False,
    cli: bool = True,
) -> Any:
    return dataclasses.field(
        default=default,
        repr=not secret,
        metadata={"env": env, "parse": parse, "help": help, "secret": secret, "cli": cli},
    )


BACKENDS = ("auto", "keyring", "file")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with :meth:`Settings.resolve`."""

    app_name: str = _setting(
        DEFAULT_APP_NAME,
        "APP_NAME",
        _text,
        "Application name: names the default file location and the keyring service.",
    )
    backend: str = _setting(
        "auto",
        "BACKEND",
        _choice(*BACKENDS),
        "Where the cache lives. ``auto``: the OS credential store when a secure one "
        "answers, else the encrypted file. ``keyring``: the credential store or an "
        "error. ``file``: the encrypted file.",
    )
    path: Optional[str] = _setting(
        None,
        "PATH",
        _path,
        "Encrypted cache file. Default: ``token_cache.bin`` in the user data directory "
        "of ``app_name``. (The keyring backend keeps its lock and stamp files per "
        "credential-store entry, in the user data directory of msal-keyring-cache.)",
    )
    key: Optional[tuple[str, ...]] = _setting(
        None,
        "KEY",
        _keys,
        "Fernet key(s) for the file, comma-separated. The first encrypts; every one "
        "decrypts, so a new key can be put in front to rotate.",
        secret=True,
        cli=False,
    )
    passphrase: Optional[str] = _setting(
        None,
        "PASSPHRASE",
        _secret,
        "Passphrase for the file; the key is derived with scrypt and a random salt per file.",
        secret=True,
        cli=False,
    )
    key_file: Optional[str] = _setting(
        None,
        "KEY_FILE",
        _path,
        "File holding the Fernet key(s), one per line; must not be readable by others.",
    )
    key_in_keyring: bool = _setting(
        False,
        "KEY_IN_KEYRING",
        _flag,
        "Envelope mode: keep the cache in the encrypted file and only its key in the "
        "OS credential store. Best for very large caches and slow credential stores.",
    )
    keyring_service: Optional[str] = _setting(
        None,
        "KEYRING_SERVICE",
        _text,
        "Credential-store service name. Default: ``app_name``.",
    )
    keyring_account: str = _setting(
        "token-cache",
        "KEYRING_ACCOUNT",
        _text,
        "Credential-store account (user name) under the service.",
    )
    keyring_timeout: float = _setting(
        3.0,
        "KEYRING_TIMEOUT",
        _seconds,
        "Seconds to wait for the credential store to answer before giving up on it "
        "(a hanging D-Bus or unlock prompt never hangs the app).",
    )
    keyring_fallback: bool = _setting(
        False,
        "KEYRING_FALLBACK",
        _flag,
        "With ``auto``: fall back to the encrypted file even when a credential store "
        "exists but is locked or not answering (by default that is an error, so a "
        "cache kept in the locked store is not silently replaced by an empty one).",
    )
    max_value_length: Optional[int] = _setting(
        None,
        "MAX_VALUE_LENGTH",
        _length,
        "Characters per credential-store entry; a longer cache is split into chunks. "
        "Default: the backend's known limit (Windows: 1,280), else learnt the first time "
        "the store refuses a value as too large (remembered, logged once at INFO).",
    )
    lock_timeout: float = _setting(
        60.0,
        "LOCK_TIMEOUT",
        _seconds,
        "Seconds to wait for the cross-process lock before raising ``LockTimeoutError``.",
    )
    strict: bool = _setting(
        False,
        "STRICT",
        _flag,
        "Refuse weak protection: no generated key file beside the user's data.",
    )
    redis_url: Optional[str] = _setting(
        None,
        "REDIS_URL",
        _text,
        "Redis URL for per-user web caches (``redis://host:6379/0``, ``rediss://`` for TLS).",
        cli=False,
    )
    redis_prefix: str = _setting(
        "msal-keyring-cache",
        "REDIS_PREFIX",
        _text,
        "Key prefix for per-user web caches in Redis.",
        cli=False,
    )
    redis_ttl: int = _setting(
        90 * 24 * 3600,
        "REDIS_TTL",
        _whole_seconds,
        "Seconds a user's cache lives in Redis after its last write (default 90 days, "
        "the lifetime of an idle refresh token).",
        cli=False,
    )
    redis_timeout: float = _setting(
        5.0,
        "REDIS_TIMEOUT",
        _seconds,
        "Seconds to wait for Redis before raising ``StoreError``.",
        cli=False,
    )

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.key, self.passphrase, self.key_file)) > 1:
            raise ConfigError(
                "Set only one of key, passphrase and key_file (environment: *_KEY, "
                "*_PASSPHRASE, *_KEY_FILE): they are alternative ways to protect the file."
            )

    @classmethod
    def resolve(
        cls,
        env_prefix: str = DEFAULT_ENV_PREFIX,
        environ: Optional[Mapping[str, str]] = None,
        **overrides: Any,
    ) -> Settings:
        """Resolve settings: ``overrides`` > ``<env_prefix>_<NAME>`` > defaults.

        An override of ``None`` counts as not given. Every bad value raises
        :class:`~msal_keyring_cache.ConfigError` naming the setting or variable.
        """
        prefix = _check_prefix(env_prefix)
        env = os.environ if environ is None else environ
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigError(
                f"Unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(known)}"
            )
        values: dict[str, Any] = {}
        for name, field in known.items():
            parse: Parser = field.metadata["parse"]
            given = overrides.get(name)
            if given is not None:
                values[name] = _parse_override(name, field, given)
                continue
            var = f"{prefix}_{field.metadata['env']}"
            raw = env.get(var)
            if raw:  # unset and empty both mean "not given"
                try:
                    values[name] = parse(raw)
                except _Invalid as exc:
                    shown = "" if field.metadata["secret"] else f"={raw!r}"
                    raise ConfigError(f"{var}{shown} is not valid: {exc}.") from None
        return cls(**values)

    def env_var(self, name: str, env_prefix: str = DEFAULT_ENV_PREFIX) -> str:
        """The environment variable of setting ``name`` under ``env_prefix``."""
        field = {f.name: f for f in dataclasses.fields(self)}[name]
        return f"{env_prefix}_{field.metadata['env']}"

    @property
    def service(self) -> str:
        """The keyring service name in effect."""
        return self.keyring_service or self.app_name


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", prefix):
        raise ConfigError(
            f"env_prefix {prefix!r} is not valid: expected letters, digits and "
            "underscores, starting with a letter (e.g. MYTOOL_CACHE)"
        )
    return prefix.rstrip("_").upper()


def _parse_override(name: str, field: dataclasses.Field[Any], given: Any) -> Any:
    parse: Parser = field.metadata["parse"]
    if name == "key" and isinstance(given, (list, tuple)):
        given = ",".join(given)
    if isinstance(given, bytes):
        given = given.decode("ascii", "replace")
    if isinstance(given, os.PathLike):
        given = os.fspath(given)
    if isinstance(given, bool) and parse is _flag:
        return given
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        given = str(given)
    if not isinstance(given, str):
        raise ConfigError(f"Setting {name} has the wrong type {type(given).__name__}.")
    try:
        return parse(given)
    except _Invalid as exc:
        shown = "" if field.metadata["secret"] else f"={given!r}"
        raise ConfigError(f"Setting {name}{shown} is not valid: {exc}.") from None


def describe_settings(env_prefix: str = DEFAULT_ENV_PREFIX) -> Iterator[dict[str, Any]]:
    """Yield one row per setting: name, env var, type, default and help (for docs and CLI)."""
    prefix = _check_prefix(env_prefix)
    for field in dataclasses.fields(Settings):
        parse: Parser = field.metadata["parse"]
        yield {
            "name": field.name,
            "env": f"{prefix}_{field.metadata['env']}",
            "type": (parse.__doc__ or "").strip(),
            "default": field.default,
            "help": field.metadata["help"],
            "secret": field.metadata["secret"],
            "cli": field.metadata["cli"],
        }
