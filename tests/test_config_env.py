"""Configuration from the environment: every variable of the table, the prefix, precedence
(argument > environment > default), every bad value, and a property test of the parsing."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msal_keyring_cache import CacheError, ConfigError, Settings, generate_key
from msal_keyring_cache.config import DEFAULT_ENV_PREFIX, describe_settings

#: web_* settings and the redis_* names that still set them (docs/configuration.md).
OLD_NAMES = {"redis_url": "web_url", "redis_prefix": "web_prefix", "redis_ttl": "web_ttl",
             "redis_timeout": "web_timeout"}  # fmt: skip

KEY_A, KEY_B = generate_key(), generate_key()


class InHome:
    """A path under the home directory of the moment (tests get their own HOME)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return other == os.path.join(os.path.expanduser("~"), self.name)

    __hash__ = None  # type: ignore[assignment]


# name -> (raw environment value, parsed value, another raw value, its parsed value)
SAMPLES: dict[str, tuple[str, Any, str, Any]] = {
    "app_name": ("my-tool", "my-tool", " other ", "other"),
    "backend": ("keyring", "keyring", " FILE ", "file"),
    "path": ("/tmp/x/cache.bin", "/tmp/x/cache.bin", "~/c.bin", InHome("c.bin")),
    "key": (KEY_A, (KEY_A,), f"{KEY_B}, {KEY_A}", (KEY_B, KEY_A)),
    "passphrase": (" spaced pass ", " spaced pass ", "p2", "p2"),
    "key_file": ("/tmp/k.key", "/tmp/k.key", "~/k.key", InHome("k.key")),
    "key_in_keyring": ("1", True, "off", False),
    "keyring_service": ("svc", "svc", "svc2", "svc2"),
    "keyring_account": ("acct", "acct", "acct2", "acct2"),
    "keyring_timeout": ("2.5", 2.5, "0.25", 0.25),
    "keyring_fallback": ("yes", True, "FALSE", False),
    "lock_timeout": ("10", 10.0, "0.5", 0.5),
    "strict": ("on", True, "0", False),
    "web_url": ("redis://h:6379/0", "redis://h:6379/0", "sqlite:////t/x.db", "sqlite:////t/x.db"),
    "web_prefix": ("p", "p", "q", "q"),
    "web_ttl": ("60", 60, " 7776000 ", 7776000),
    "web_timeout": ("1", 1.0, "0.25", 0.25),
    "redis_url": ("redis://h:6379/0", "redis://h:6379/0", "rediss://h/1", "rediss://h/1"),
    "redis_prefix": ("p", "p", "q", "q"),
    "redis_ttl": ("60", 60, " 7776000 ", 7776000),
    "redis_timeout": ("1", 1.0, "0.25", 0.25),
    "max_value_length": ("1280", 1280, " 300 ", 300),
}

BAD: dict[str, list[str]] = {
    "app_name": ["   "],
    "backend": ["keychain", "auto,file", "1"],
    "path": ["   "],
    "key": ["not-a-key", f"{KEY_A},short", " , "],
    "passphrase": ["   ", "\t"],  # any other text is a passphrase, spaces around it kept
    "key_file": ["  "],
    "key_in_keyring": ["maybe", "2", "enabled"],
    "keyring_service": [" "],
    "keyring_account": [" "],
    "keyring_timeout": ["soon", "-1", "nan", "inf", "1e999", "0", "601"],
    "keyring_fallback": ["y", "ja"],
    "lock_timeout": ["ten", "-0.5", "NaN", "0", "1e9"],
    "strict": ["strict"],
    "web_url": ["  "],
    "web_prefix": ["  "],
    "web_ttl": ["1.5", "0", "-5", "day", "99999999999999999999"],
    "web_timeout": ["x", "-2", "0", "nan", "1e9"],
    "redis_url": ["  "],
    "redis_prefix": ["  "],
    "redis_ttl": ["1.5", "0", "-5", "day", "99999999999999999999"],
    "redis_timeout": ["x", "-2", "0"],
    "max_value_length": ["x", "199", "1.5", "-1", "99999999999"],
}

SETTING_FIELDS = [f for f in dataclasses.fields(Settings) if "env" in f.metadata]
FIELDS = [f.name for f in SETTING_FIELDS]
SECRET = {f.name for f in SETTING_FIELDS if f.metadata["secret"]}
EXCLUSIVE = {"key", "passphrase", "key_file"}


def var(name: str, prefix: str = DEFAULT_ENV_PREFIX) -> str:
    return Settings().env_var(name, prefix)


def test_the_samples_cover_every_setting_of_the_table() -> None:
    assert set(SAMPLES) == set(FIELDS) == set(BAD)
    rows = list(describe_settings())
    assert [r["name"] for r in rows] == FIELDS
    for row in rows:
        assert row["env"] == f"MSAL_KEYRING_CACHE_{row['env'].split('CACHE_', 1)[1]}"
        assert row["type"], row
        assert row["help"], row


@pytest.mark.parametrize("name", FIELDS)
def test_every_variable_is_read(name: str) -> None:
    raw, value, raw2, value2 = SAMPLES[name]
    assert getattr(Settings.resolve(environ={var(name): raw}), name) == value
    assert getattr(Settings.resolve(environ={var(name): raw2}), name) == value2


@pytest.mark.parametrize("name", FIELDS)
def test_empty_means_not_set(name: str) -> None:
    assert getattr(Settings.resolve(environ={var(name): ""}), name) == getattr(Settings(), name)


@pytest.mark.parametrize("name", FIELDS)
def test_precedence_argument_then_environment_then_default(name: str) -> None:
    raw, value, raw2, value2 = SAMPLES[name]
    default = getattr(Settings(), name)
    assert getattr(Settings.resolve(environ={}), name) == default
    env = {var(name): raw}
    assert getattr(Settings.resolve(environ=env), name) == value
    assert getattr(Settings.resolve(environ=env, **{name: raw2}), name) == value2
    assert getattr(Settings.resolve(environ=env, **{name: None}), name) == value


def test_a_custom_prefix_replaces_the_default_one() -> None:
    environ = {"MYTOOL_CACHE_BACKEND": "file", "MSAL_KEYRING_CACHE_BACKEND": "keyring",
               "MYTOOL_CACHE_KEYRING_TIMEOUT": "7"}  # fmt: skip
    for prefix in ("MYTOOL_CACHE", "mytool_cache", "MYTOOL_CACHE_"):
        resolved = Settings.resolve(prefix, environ=environ)
        assert resolved.backend == "file"
        assert resolved.keyring_timeout == 7.0
    assert Settings.resolve(environ=environ).backend == "keyring"
    rows = {r["name"]: r["env"] for r in describe_settings("MYTOOL_CACHE")}
    assert rows["backend"] == "MYTOOL_CACHE_BACKEND"
    with pytest.raises(ConfigError, match="env_prefix"):
        Settings.resolve("1BAD-PREFIX", environ={})


def test_the_whole_table_at_once_under_a_prefix() -> None:
    environ = {var(n, "APP"): SAMPLES[n][0] for n in FIELDS if n not in EXCLUSIVE - {"key"}}
    resolved = Settings.resolve("APP", environ=environ)
    for name in FIELDS:
        expected = SAMPLES[name][1] if name not in EXCLUSIVE - {"key"} else None
        assert getattr(resolved, name) == expected, name


@pytest.mark.parametrize(("name", "raw"), [(n, r) for n in FIELDS for r in BAD[n]])
def test_every_bad_value_is_a_config_error_naming_the_variable(name: str, raw: str) -> None:
    for prefix in (DEFAULT_ENV_PREFIX, "MYTOOL_CACHE"):
        with pytest.raises(ConfigError) as caught:
            Settings.resolve(prefix, environ={var(name, prefix): raw})
        message = str(caught.value)
        assert var(name, prefix) in message
        assert "expected" in message or "(32 url-safe" in message  # says what is accepted
        if name in SECRET and raw.strip():
            assert raw not in message


def test_bad_argument_values_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="backend"):
        Settings.resolve(environ={}, backend="keychain")
    with pytest.raises(ConfigError, match="lock_timeout"):
        Settings.resolve(environ={}, lock_timeout=-1)
    with pytest.raises(ConfigError, match="Unknown setting"):
        Settings.resolve(environ={}, bakend="file")


def test_alternative_keys_are_exclusive() -> None:
    environ = {var("key"): KEY_A, var("passphrase"): "pw"}
    with pytest.raises(ConfigError, match="only one of") as caught:
        Settings.resolve(environ=environ)
    assert KEY_A not in str(caught.value)
    assert "pw" not in str(caught.value).replace("PASSPHRASE", "")


def test_secrets_stay_out_of_the_repr() -> None:
    resolved = Settings.resolve(environ={var("key"): KEY_A})
    assert KEY_A not in repr(resolved)
    assert "passphrase" not in repr(Settings.resolve(environ={var("passphrase"): "hunter2"}))


def env_name(name: str, prefix: str) -> str:
    """The variable the docs promise: upper-cased prefix, one underscore, the setting's name."""
    return f"{prefix.rstrip('_').upper()}_{Settings().env_var(name, 'X')[2:]}"


def _raw(name: str) -> st.SearchStrategy[str]:
    """Any text, the usual suspects, and this setting's own good and bad samples."""
    raw, _, raw2, _ = SAMPLES[name]
    return st.one_of(
        st.text(max_size=60),
        st.sampled_from(["1", "0", "-1", "nan", "inf", "1e999", "auto", "file", " ", "~"]),
        st.just(KEY_A),
        st.sampled_from([raw, raw2, *BAD[name]]),
    )


def _parsed_type(name: str) -> type:
    sample = SAMPLES[name][1]
    return str if isinstance(sample, InHome) else type(sample)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.sampled_from(FIELDS), unique=True, max_size=6).flatmap(
        lambda names: st.fixed_dictionaries({name: _raw(name) for name in names})
    ),
    prefix=st.sampled_from([DEFAULT_ENV_PREFIX, "MYTOOL_CACHE", "x"]),
)
def test_env_parsing_only_ever_raises_config_error(values: dict[str, str], prefix: str) -> None:
    environ = {env_name(name, prefix): raw.replace("\0", "") for name, raw in values.items()}
    try:
        resolved = Settings.resolve(prefix, environ=environ)
    except ConfigError as exc:
        message = str(exc)
        assert message
        shown = {environ[env_name(n, prefix)] for n in set(values) - SECRET}
        for name in SECRET & set(values):
            raw = environ[env_name(name, prefix)]
            if len(raw.strip()) > 12 and raw not in shown:  # a secret's own text is never echoed
                assert raw not in message
        for name, raw in values.items():  # a listed bad value is never accepted
            if raw in BAD[name]:
                return
        for name, raw in values.items():  # else: the mix, or a value outside the samples
            if raw in SAMPLES[name][::2] and len(values) == 1:
                pytest.fail(f"{name}={raw!r} is a good sample but was refused: {message}")
        return
    except CacheError:  # pragma: no cover - would be a wrong subclass
        pytest.fail("only ConfigError may escape")
    for name, raw in values.items():
        parsed = getattr(resolved, name)
        assert raw.replace("\0", "") not in BAD[name], f"{name}={raw!r} was accepted"
        if any(new == name and values.get(old, "").strip() for old, new in OLD_NAMES.items()):
            continue  # its old redis_* name is set too: that value may stand in for it
        if not raw.strip():
            assert parsed == getattr(Settings(), name)  # empty means not set
            continue
        assert isinstance(parsed, _parsed_type(name)), (name, raw, parsed)
        good, value, good2, value2 = SAMPLES[name]
        if raw == good:
            assert parsed == value
        elif raw == good2:
            assert parsed == value2
        # each variable is read on its own: alone it parses the same
        alone = Settings.resolve(
            prefix, environ={env_name(name, prefix): environ[env_name(name, prefix)]}
        )
        assert getattr(alone, name) == parsed


def test_an_old_redis_name_stands_in_for_an_unset_web_setting() -> None:
    environ = {"MSAL_KEYRING_CACHE_REDIS_PREFIX": "old-name", "MSAL_KEYRING_CACHE_WEB_PREFIX": ""}
    assert Settings.resolve(environ=environ).web_prefix == "old-name"
    environ["MSAL_KEYRING_CACHE_WEB_PREFIX"] = "new-name"
    assert Settings.resolve(environ=environ).web_prefix == "new-name"
