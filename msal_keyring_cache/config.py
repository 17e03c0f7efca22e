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
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Optional

from .errors import ConfigError

__all__ = [
    "DEFAULT_ENV_PREFIX",
    "EXTRA_VARIABLES",
    "Settings",
    "check_path",
    "check_secret",
    "describe_settings",
]

logger = logging.getLogger("msal_keyring_cache")

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


#: Upper bounds: a value past them is a typo, and would overflow or hang somewhere later.
MAX_TEXT = 256
MAX_PATH = 4096
MAX_SECRET = 4096
MAX_WAIT = 24 * 3600.0  # a lock wait of a day
MAX_TTL = 10 * 365 * 24 * 3600  # ten years
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _plain(value: str, limit: int, what: str) -> str:
    """Refuse control characters (NUL …), lone surrogates and absurd lengths."""
    if _CONTROL.search(value):
        raise _Invalid(f"expected {what} without control characters (NUL, newline …)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid(f"expected {what} of valid Unicode text") from None
    if len(value) > limit:
        raise _Invalid(f"expected {what} of at most {limit} characters")
    return value


def _text(raw: str) -> str:
    """text"""
    value = raw.strip()
    if not value:
        raise _Invalid("expected a non-empty text")
    return _plain(value, MAX_TEXT, "a text")


def _name(raw: str) -> str:
    """name (no ``/``, ``\\``, ``..``)"""
    value = _text(raw)
    if value in {".", ".."}:
        raise _Invalid("expected a name, not . or ..")
    if "/" in value or "\\" in value or ":" in value:
        raise _Invalid(
            "expected a plain name without /, \\ or : (it names folders and the keyring service)"
        )
    return value


def _secret(raw: str) -> str:
    """text (secret)"""
    if not raw.strip():  # spaces only: an unset variable written as "" with a typo, not a secret
        raise _Invalid("expected a non-empty value (not only spaces)")
    if "\0" in raw or len(raw) > MAX_SECRET:
        raise _Invalid(f"expected at most {MAX_SECRET} characters and no NUL")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid("expected valid Unicode text") from None
    return raw


def _path(raw: str) -> str:
    """file path (``~`` expanded)"""
    value = raw.strip()
    if not value:
        raise _Invalid("expected a file path")
    _plain(value, MAX_PATH, "a file path")
    if value.endswith(("/", os.sep)) or value in {"~", ".", ".."}:
        raise _Invalid("expected a file path, not a directory (it ends with a separator)")
    return os.path.abspath(os.path.expanduser(value))


def _seconds_upto(limit: float) -> Parser:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Invalid("expected a number of seconds, such as 30 or 2.5") from None
        # 0 is refused, not "wait forever": every wait in the library is bounded.
        if not (math.isfinite(value) and 0 < value <= limit):
            raise _Invalid(f"expected a number of seconds > 0 and at most {limit:g}")
        return value

    parse.__doc__ = f"number of seconds (> 0, at most {limit:g})"
    return parse


_seconds = _seconds_upto(MAX_WAIT)


def _whole_seconds(raw: str) -> int:
    """whole number of seconds (> 0)"""
    try:
        value = int(raw.strip())
    except ValueError:
        raise _Invalid("expected a whole number of seconds, such as 7776000") from None
    if not 0 < value <= MAX_TTL:
        raise _Invalid(f"expected a whole number of seconds > 0 and at most {MAX_TTL}")
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

    if len(raw) > MAX_SECRET:
        raise _Invalid(f"expected at most {MAX_SECRET} characters")
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


@dataclasses.dataclass(frozen=True, repr=False)  # its own __repr__ hides secrets
class Settings:
    """Resolved configuration. Build it with :meth:`Settings.resolve`."""

    app_name: str = _setting(
        DEFAULT_APP_NAME,
        "APP_NAME",
        _name,
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
        _seconds_upto(600.0),
        "Seconds to wait for the credential store to answer before giving up on it "
        "(a hanging D-Bus or unlock prompt never hangs the app). 0 is refused: every "
        "wait is bounded.",
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
        "Seconds to wait for the cross-process lock before raising ``LockTimeoutError`` "
        "(0 is refused: every wait is bounded).",
    )
    strict: bool = _setting(
        False,
        "STRICT",
        _flag,
        "Refuse weak protection: no generated key file beside the user's data.",
    )
    web_url: Optional[str] = _setting(
        None,
        "WEB_URL",
        _text,
        "Store of the per-user web caches: ``redis://host:6379/0`` (``rediss://`` for TLS), "
        "``sqlite:///PATH``, ``postgresql://user:password@host/db`` or another SQLAlchemy URL. "
        "A password in it is a secret: ``repr()`` and messages hide it.",
        cli=False,
    )
    web_prefix: str = _setting(
        "msal-keyring-cache",
        "WEB_PREFIX",
        _text,
        "Start of every record name of the per-user web caches; bound into every value.",
        cli=False,
    )
    web_ttl: int = _setting(
        90 * 24 * 3600,
        "WEB_TTL",
        _whole_seconds,
        "Seconds a user's web cache lives after its last write (default 90 days, "
        "the lifetime of an idle refresh token; at most 10 years).",
        cli=False,
    )
    web_timeout: float = _setting(
        5.0,
        "WEB_TIMEOUT",
        _seconds_upto(600.0),
        "Seconds to wait for the web caches' store before raising ``StoreError``.",
        cli=False,
    )
    redis_url: Optional[str] = _setting(
        None, "REDIS_URL", _text, "Old name of ``web_url``.", cli=False
    )
    redis_prefix: Optional[str] = _setting(
        None, "REDIS_PREFIX", _text, "Old name of ``web_prefix``.", cli=False
    )
    redis_ttl: Optional[int] = _setting(
        None, "REDIS_TTL", _whole_seconds, "Old name of ``web_ttl``.", cli=False
    )
    redis_timeout: Optional[float] = _setting(
        None, "REDIS_TIMEOUT", _seconds_upto(600.0), "Old name of ``web_timeout``.", cli=False
    )

    #: The normalized prefix of the environment variables these settings were read from
    #: (``MSAL_KEYRING_CACHE``, or the application's own): messages name its variables.
    env_prefix: str = dataclasses.field(
        default=DEFAULT_ENV_PREFIX, compare=False, repr=False, metadata={"prefix": True}
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "env_prefix", _check_prefix(self.env_prefix))
        if sum(x is not None for x in (self.key, self.passphrase, self.key_file)) > 1:
            raise ConfigError(
                f"Set only one of key, passphrase and key_file (environment: "
                f"{self.env_var('key')}, {self.env_var('passphrase')}, "
                f"{self.env_var('key_file')}): they are alternative ways to protect the file."
            )
        for old, new in _ALIASES.items():  # redis_* are the old names of web_*
            value = getattr(self, old)
            if value is not None and getattr(self, new) == _DEFAULT_OF[new]:
                object.__setattr__(self, new, value)

    def __repr__(self) -> str:
        # Secrets never show; a URL keeps its shape but not its password.
        shown = []
        for field in _setting_fields():
            value = getattr(self, field.name)
            if field.metadata["secret"] or not field.repr:
                continue
            if isinstance(value, str):
                value = redact(value)
            shown.append(f"{field.name}={value!r}")
        shown.append(f"env_prefix={self.env_prefix!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def resolve(
        cls,
        env_prefix: str = DEFAULT_ENV_PREFIX,
        environ: Optional[Mapping[str, str]] = None,
        **overrides: Any,
    ) -> Settings:
        """Resolve settings: ``overrides`` > ``<env_prefix>_<NAME>`` > defaults.

        An override of ``None`` counts as not given. Every bad value raises
        :class:`~msal_keyring_cache.ConfigError` naming the setting or variable. A
        variable under the prefix that names no setting (a typo such as
        ``MSAL_KEYRING_CACHE_BAKEND``) is logged once as a WARNING naming the closest one.
        """
        prefix = _check_prefix(env_prefix)
        env = os.environ if environ is None else environ
        known = {f.name: f for f in _setting_fields()}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigError(
                f"Unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(known)}"
            )
        _warn_unknown(prefix, env)
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
                    shown = "" if field.metadata["secret"] else f"={redact(raw)!r}"
                    raise ConfigError(f"{var}{shown} is not valid: {exc}.") from None
        return cls(**values, env_prefix=prefix)

    def env_var(self, name: str, env_prefix: Optional[str] = None) -> str:
        """The environment variable of setting ``name`` (or ``new_key``, ``new_passphrase``).

        Under the prefix these settings were read with, unless ``env_prefix`` is given.
        """
        prefix = self.env_prefix if env_prefix is None else _check_prefix(env_prefix)
        fields = {f.name: f.metadata["env"] for f in _setting_fields()}
        suffix = fields.get(name) or EXTRA_VARIABLES.get(name)
        if suffix is None:
            raise KeyError(name)
        return f"{prefix}_{suffix}"

    @property
    def service(self) -> str:
        """The keyring service name in effect."""
        return self.keyring_service or self.app_name


#: Variables read under the prefix that are not settings (``rotate-key``'s new secrets).
EXTRA_VARIABLES = {"new_key": "NEW_KEY", "new_passphrase": "NEW_PASSPHRASE"}

_warned_unknown: set[str] = set()


def _setting_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Settings) if "env" in f.metadata]


def _warn_unknown(prefix: str, env: Mapping[str, str]) -> None:
    """One WARNING per variable under the prefix that names no setting: a typo does nothing."""
    head = prefix + "_"
    suffixes = [f.metadata["env"] for f in _setting_fields()] + list(EXTRA_VARIABLES.values())
    for var in env:
        if not var.startswith(head) or var in _warned_unknown:
            continue
        suffix = var[len(head) :]
        if suffix in suffixes:
            continue
        _warned_unknown.add(var)
        import difflib  # only for a typo: not on every process's start-up

        close = difflib.get_close_matches(suffix, suffixes, n=1, cutoff=0.6)
        hint = f"; did you mean {head}{close[0]}?" if close else ""
        logger.warning("%s is not a setting of msal-keyring-cache and is ignored%s", var, hint)


def check_path(value: Any, what: str) -> str:
    """A file path argument checked as the ``path`` setting is (absolute, ``~`` expanded);
    :class:`~msal_keyring_cache.ConfigError` naming ``what`` otherwise."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a file path, not {type(value).__name__}.")
    try:
        return _path(value)
    except _Invalid as exc:
        raise ConfigError(f"{what}={redact(value)!r} is not valid: {exc}.") from None


def check_secret(value: Any, what: str) -> str:
    """A passphrase-like argument checked as the ``passphrase`` setting is (never echoed)."""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be text, not {type(value).__name__}.")
    try:
        return _secret(value)
    except _Invalid as exc:
        raise ConfigError(f"{what} is not valid: {exc}.") from None


def redact(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` URL replaced by ***."""
    return re.sub(r"(://[^/@\s:]*:)[^/@\s]*@", r"\1***@", text)


_ALIASES = {"redis_url": "web_url", "redis_prefix": "web_prefix", "redis_ttl": "web_ttl",
            "redis_timeout": "web_timeout"}  # fmt: skip
_DEFAULT_OF = {f.name: f.default for f in dataclasses.fields(Settings)}


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
        shown = "" if field.metadata["secret"] else f"={redact(str(given))!r}"
        raise ConfigError(f"Setting {name}{shown} is not valid: {exc}.") from None


def describe_settings(env_prefix: str = DEFAULT_ENV_PREFIX) -> Iterator[dict[str, Any]]:
    """Yield one row per setting: name, env var, type, default and help (for docs and CLI)."""
    prefix = _check_prefix(env_prefix)
    for field in _setting_fields():
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
