"""Every setting bounded and validated: each bad value a ConfigError naming its variable;
the prefix remembered; no secret in ``repr``; unknown variables named with the closest one."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msal_keyring_cache import ConfigError, Settings, build_cache
from msal_keyring_cache import config as config_module

BAD = [
    ("APP_NAME", "../x"),
    ("APP_NAME", "a/b"),
    ("APP_NAME", ".."),
    ("APP_NAME", "x" * 300),
    ("APP_NAME", "bad\x01name"),
    ("PATH", "/tmp/a\0b"),
    ("PATH", "newdir/"),
    ("PATH", "/tmp/" + "x" * 5000),
    ("KEY_FILE", "keys/"),
    ("KEY_FILE", "/tmp/k\0"),
    ("KEYRING_TIMEOUT", "0"),
    ("KEYRING_TIMEOUT", "nan"),
    ("KEYRING_TIMEOUT", "inf"),
    ("KEYRING_TIMEOUT", "-1"),
    ("KEYRING_TIMEOUT", "100000"),
    ("LOCK_TIMEOUT", "0"),
    ("LOCK_TIMEOUT", "NaN"),
    ("LOCK_TIMEOUT", "-inf"),
    ("LOCK_TIMEOUT", "-3"),
    ("LOCK_TIMEOUT", "1e12"),
    ("REDIS_TTL", "99999999999999999999"),
    ("REDIS_TTL", "0"),
    ("REDIS_TIMEOUT", "0"),
    ("KEYRING_SERVICE", "s\0"),
    ("KEYRING_ACCOUNT", "a" * 1000),
    ("PASSPHRASE", "p\0q"),
]


@pytest.mark.parametrize(("suffix", "raw"), BAD)
def test_bad_values_are_config_errors_naming_the_variable(suffix: str, raw: str) -> None:
    var = f"MSAL_KEYRING_CACHE_{suffix}"
    with pytest.raises(ConfigError) as caught:
        Settings.resolve(environ={var: raw})
    assert var in str(caught.value)
    if suffix == "PASSPHRASE":
        assert raw not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("app_name", "../x"),
        ("app_name", "\udcff"),  # a lone surrogate
        ("path", "dir/"),
        ("lock_timeout", 0),
        ("keyring_timeout", float("nan")),
        ("keyring_timeout", float("inf")),
        ("redis_ttl", 10**20),
    ],
)
def test_bad_arguments_are_config_errors_naming_the_setting(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        build_cache(**{name: value})  # type: ignore[arg-type]


def test_zero_timeouts_are_refused_and_say_so() -> None:
    with pytest.raises(ConfigError, match="> 0"):
        Settings.resolve(keyring_timeout=0)
    described = {r["name"]: r for r in config_module.describe_settings()}
    assert "0 is refused" in described["keyring_timeout"]["help"]
    assert "0 is refused" in described["lock_timeout"]["help"]


def test_the_prefix_is_remembered_and_normalized() -> None:
    resolved = Settings.resolve("mytool_cache", environ={"MYTOOL_CACHE_BACKEND": "file"})
    assert resolved.backend == "file"
    assert resolved.env_prefix == "MYTOOL_CACHE"
    assert resolved.env_var("key") == "MYTOOL_CACHE_KEY"
    assert resolved.env_var("new_key") == "MYTOOL_CACHE_NEW_KEY"
    with pytest.raises(ConfigError) as caught:
        Settings.resolve("mytool_cache", environ={"MYTOOL_CACHE_LOCK_TIMEOUT": "0"})
    assert "MYTOOL_CACHE_LOCK_TIMEOUT" in str(caught.value)
    assert "mytool_cache" not in str(caught.value)


def test_messages_name_the_variables_actually_read(tmp_path: object) -> None:
    with pytest.raises(ConfigError) as caught:
        build_cache(
            "x",
            env_prefix="mytool_cache",
            backend="file",
            path=f"{tmp_path}/c.bin",
            strict=True,
        )
    assert "MYTOOL_CACHE_KEY" in str(caught.value)
    assert "MSAL_KEYRING_CACHE" not in str(caught.value)


def test_repr_never_shows_a_secret() -> None:
    resolved = Settings.resolve(
        environ={
            "MSAL_KEYRING_CACHE_PASSPHRASE": "hunter2-hunter2",
            "MSAL_KEYRING_CACHE_REDIS_URL": "rediss://user:s3cret-pw@redis.example:6380/0",
        }
    )
    text = repr(resolved)
    assert "hunter2" not in text
    assert "s3cret-pw" not in text
    assert "redis.example" in text  # the shape stays, for debugging
    with pytest.raises(ConfigError) as caught:
        Settings.resolve(redis_url="redis://:pw-in-error@h/0\0")
    assert "pw-in-error" not in str(caught.value)


def test_unknown_variables_warn_once_with_the_closest_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config_module._warned_unknown.clear()
    environ = {"MSAL_KEYRING_CACHE_BAKEND": "file", "MSAL_KEYRING_CACHE_ZZZ": "1"}
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        Settings.resolve(environ=environ)
        Settings.resolve(environ=environ)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    [typo] = [m for m in messages if "BAKEND" in m]
    assert "did you mean MSAL_KEYRING_CACHE_BACKEND" in typo
    [other] = [m for m in messages if "ZZZ" in m]
    assert "did you mean" not in other


def test_rotation_variables_are_known(caplog: pytest.LogCaptureFixture) -> None:
    config_module._warned_unknown.clear()
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        Settings.resolve(environ={"MSAL_KEYRING_CACHE_NEW_KEY": "x"})
    assert not caplog.records


@settings(max_examples=2000, deadline=None)
@given(
    name=st.sampled_from(["app_name", "path", "key_file", "keyring_service", "keyring_account"]),
    raw=st.text(max_size=80),
)
def test_text_settings_only_ever_raise_config_error(name: str, raw: str) -> None:
    try:
        value = getattr(Settings.resolve(**{name: raw}), name)
    except ConfigError:
        return
    assert "\0" not in value
    if name == "app_name":
        assert "/" not in value
        assert value not in {".", ".."}


def test_public_path_and_secret_arguments_are_checked(tmp_path: object) -> None:
    from msal_keyring_cache import manage

    for bad in ("a\0b", "dir/", 42):
        with pytest.raises(ConfigError, match="output"):
            manage.write_private(bad, "x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as caught:
        config_module.check_secret("p\0secret-text", "NEW_PASSPHRASE")
    assert "secret-text" not in str(caught.value)
