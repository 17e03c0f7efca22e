"""Fault injection for the credential-store path (issue 10, keyring/D-Bus items; 16; 17).

Real processes, a real Secret Service where it can run, and faithful fakes only for what
cannot: a D-Bus that never answers (tests/silent_dbus.py) and keyring backends that
misbehave the ways keyring allows (tests/fakes.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msal_keyring_cache import (
    CacheError,
    ConfigError,
    CorruptCacheError,
    DecryptError,
    StoreError,
    build_cache,
)
from msal_keyring_cache.config import Settings
from msal_keyring_cache.factory import default_lock_path
from msal_keyring_cache.stores.credential import (
    KeyringStore,
    format_manifest,
    parse_manifest,
    parse_stamp,
)
from tests.fakes import (
    DenyingKeyring,
    EchoingKeyring,
    FileKeyring,
    FlakyKeyring,
    ScopedKeyring,
    WindowsLikeKeyring,
)
from tests.helpers import PYTHON, child_env
from tests.silent_dbus import SilentBus
from tests.test_keyring_store import make_store, memory_keyring, sign_in

__all__ = ["memory_keyring"]  # the fixture, shared

SS = "keyring.backends.SecretService.Keyring"
SCOPED = "tests.fakes.ScopedKeyring"


def use(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    import keyring.core

    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", name)
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)


# -- hangs: a D-Bus that accepts and never answers ---------------------------------------

TIMEOUT = 1.0
# Each bounded step may use the whole timeout; a remembered backend that fails is tried
# once more by discovery: at most two steps time out before our error.
LIMIT = 2 * TIMEOUT + 4.0


def _silent_env(tmp_path: Path, bus: SilentBus, scenario: str) -> dict[str, str]:
    home = tmp_path / "home"
    env = child_env(
        DBUS_SESSION_BUS_ADDRESS=bus.address,
        HOME=str(home),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        MSAL_KEYRING_CACHE_KEYRING_TIMEOUT=str(TIMEOUT),
        MSAL_KEYRING_CACHE_APP_NAME="silent",
    )
    env.pop("PYTHON_KEYRING_BACKEND", None)
    env.pop("GNOME_KEYRING_CONTROL", None)
    if scenario in {"remembered", "remembered+property"}:
        # A stamp from an earlier run on a working Secret Service (the fast path).
        old = {k: os.environ.get(k) for k in ("XDG_DATA_HOME", "HOME")}
        os.environ.update(XDG_DATA_HOME=env["XDG_DATA_HOME"], HOME=env["HOME"])
        try:
            lock = default_lock_path(Settings.resolve(app_name="silent"))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        Path(lock).parent.mkdir(parents=True, exist_ok=True)
        stamp = {"format": "msal-keyring-cache-stamp", "write": "00", "backend": SS}
        Path(lock[: -len(".lock")] + ".stamp").write_text(json.dumps(stamp))
    if scenario in {"property", "remembered+property"}:
        env["KEYRING_PROPERTY_SCHEME"] = "default"  # once hung in the unbounded priority read
    if scenario == "named":
        env["PYTHON_KEYRING_BACKEND"] = SS
    return env


_BUILD = (
    "import json, time, msal_keyring_cache as m\n"
    "t = time.monotonic()\n"
    "try:\n"
    "    m.build_cache(path={path!r})\n"
    "    out = ['no error']\n"
    "except m.CacheError as exc:\n"
    "    out = [type(exc).__name__, str(exc)]\n"
    "print(json.dumps(out + [time.monotonic() - t]))\n"
)


@pytest.mark.parametrize("mode", ["mute", "auth"])
@pytest.mark.parametrize("scenario", ["fresh", "named", "remembered", "remembered+property"])
def test_build_cache_on_a_silent_dbus_returns_our_error_in_time(
    tmp_path: Path, mode: str, scenario: str
) -> None:
    with SilentBus(tmp_path, mode) as bus:
        env = _silent_env(tmp_path, bus, scenario)
        script = _BUILD.format(path=str(tmp_path / "c.bin"))
        out = subprocess.run([PYTHON, "-c", script], env=env, capture_output=True, timeout=60)
        assert bus.connections >= 1  # it really talked to the silent bus
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    name, message, took = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert name in {"BackendUnavailableError", "KeyringTimeoutError"}
    assert "did not answer" in message
    assert took < LIMIT


@pytest.mark.parametrize(
    ("command", "mode"), [("status", "auth"), ("doctor", "auth"), ("doctor", "mute")]
)
def test_cli_on_a_silent_dbus_reports_and_exits_in_time(
    tmp_path: Path, command: str, mode: str
) -> None:
    with SilentBus(tmp_path, mode) as bus:
        env = _silent_env(tmp_path, bus, "remembered+property")
        started = time.monotonic()
        out = subprocess.run(
            [PYTHON, "-m", "msal_keyring_cache", command],
            env=env,
            capture_output=True,
            timeout=90,
        )
        took = time.monotonic() - started
    text = out.stdout.decode() + out.stderr.decode()
    assert out.returncode != 0
    assert "did not answer" in text
    assert "Traceback" not in text
    assert took < LIMIT + 20  # interpreter start-up on a loaded machine, then bounded steps


def test_a_non_positive_or_infinite_keyring_timeout_is_refused(tmp_path: Path) -> None:
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="positive"):
            KeyringStore("s", "a", lock_path=str(tmp_path / "l.lock"), keyring_timeout=bad)


# -- nothing overwritten on a bad read ------------------------------------------------------


@pytest.mark.secret_service
def test_a_garbled_entry_is_kept_aside_and_the_next_sign_in_loses_nothing(
    tmp_path: Path, use_secret_service: Any, idp: Any
) -> None:
    import keyring

    path = str(tmp_path / "token_cache.bin")
    cache = build_cache("garble", path=path)
    assert cache.backend_info.backend == "keyring"
    users = [f"user{i}@example.com" for i in range(4)]
    for user in users:
        sign_in(idp, cache, user)
    whole = keyring.get_password("garble", "token-cache")
    doc = json.loads(whole)
    tokens = [e["secret"] for e in doc["RefreshToken"].values()]
    assert len(tokens) == 4
    # Truncated: the tail (one account's worth) is lost, the rest still in the text.
    garbled = whole[: whole.index(tokens[3])]
    keyring.set_password("garble", "token-cache", garbled)
    again = build_cache("garble", path=path)  # another process, say
    sign_in(idp, again, "user4@example.com")
    items = {a["username"]: a for a, _ in use_secret_service.items() if a["service"] == "garble"}
    aside = [name for name in items if name.startswith("token-cache.corrupt-")]
    assert len(aside) == 1
    kept = keyring.get_password("garble", aside[0])
    assert kept == garbled  # byte for byte: nothing written over
    assert sum(token in kept for token in tokens[:3]) == 3
    now = json.loads(keyring.get_password("garble", "token-cache"))
    assert len(now["RefreshToken"]) == 1
    # clear removes the set-aside copy too (it holds refresh tokens).
    again.clear()
    left = [a for a, _ in use_secret_service.items() if a["service"] == "garble"]
    assert left == []


def test_a_read_only_store_never_writes_and_reports_damage(
    tmp_path: Path, memory_keyring: type[ScopedKeyring]
) -> None:
    lock = tmp_path / "ro" / "kr.lock"
    reader = KeyringStore(
        "test-service", "token-cache", lock_path=str(lock), keyring=ScopedKeyring(),
        read_only=True,
    )  # fmt: skip
    assert reader.load() is None
    with reader.lock():
        with pytest.raises(StoreError, match="read-only"):
            reader.save(b"{}")
        with pytest.raises(StoreError, match="read-only"):
            reader.clear()
    assert not lock.parent.exists()  # no lock file, no stamp, no directory
    ScopedKeyring.entries[("test-service", "token-cache")] = '{"RefreshToken": {"x": '
    before = dict(ScopedKeyring.entries)
    with pytest.raises(CorruptCacheError, match="Nothing was changed"):
        reader.load()
    assert ScopedKeyring.entries == before
    assert ScopedKeyring.calls["set"] == ScopedKeyring.calls["delete"] == 0
    assert not lock.parent.exists()
    assert reader.describe().lock_file is None


# -- envelope mode: a key is only ever made when there is nothing to decrypt -----------------


def test_envelope_a_spurious_not_found_never_replaces_the_key(
    monkeypatch: pytest.MonkeyPatch,
    memory_keyring: type[ScopedKeyring],
    tmp_path: Path,
    idp: Any,
) -> None:
    use(monkeypatch, "tests.fakes.FlakyKeyring")
    args = {"app_name": "flaky", "path": str(tmp_path / "env.bin"), "backend": "file"}
    sign_in(idp, build_cache(**args, key_in_keyring=True))
    key = ScopedKeyring.entries[("flaky", "token-cache.key")]
    monkeypatch.setattr(FlakyKeyring, "misses", 1)  # one "not found" although it is there
    assert list(build_cache(**args, key_in_keyring=True).search("RefreshToken"))  # read again
    assert ScopedKeyring.entries[("flaky", "token-cache.key")] == key
    monkeypatch.setattr(FlakyKeyring, "misses", 2)  # not found twice: the key may be gone
    with pytest.raises(DecryptError, match="No new key was made") as caught:
        build_cache(**args, key_in_keyring=True)
    assert "try again" in str(caught.value)
    assert ScopedKeyring.entries[("flaky", "token-cache.key")] == key
    again = build_cache(**args, key_in_keyring=True)
    assert list(again.search("RefreshToken"))


def test_envelope_a_missing_key_with_an_existing_file_is_an_error_not_a_new_key(
    monkeypatch: pytest.MonkeyPatch,
    memory_keyring: type[ScopedKeyring],
    tmp_path: Path,
    idp: Any,
) -> None:
    use(monkeypatch, SCOPED)
    args = {"app_name": "lost", "path": str(tmp_path / "env.bin"), "backend": "file"}
    sign_in(idp, build_cache(**args, key_in_keyring=True))
    del ScopedKeyring.entries[("lost", "token-cache.key")]
    with pytest.raises(DecryptError, match="exists, but its key is not"):
        build_cache(**args, key_in_keyring=True)
    assert ("lost", "token-cache.key") not in ScopedKeyring.entries
    # A garbled key entry is kept aside, never replaced, and also an error.
    ScopedKeyring.entries[("lost", "token-cache.key")] = "not a key"
    with pytest.raises(DecryptError):
        build_cache(**args, key_in_keyring=True)
    aside = [k for k in ScopedKeyring.entries if k[1].startswith("token-cache.key.corrupt-")]
    assert [ScopedKeyring.entries[k] for k in aside] == ["not a key"]


def test_key_in_keyring_under_auto_is_envelope_mode(
    monkeypatch: pytest.MonkeyPatch, memory_keyring: type[ScopedKeyring], tmp_path: Path, idp: Any
) -> None:
    """Issue 16: auto + key_in_keyring: the file holds the cache, the keyring its key."""
    use(monkeypatch, SCOPED)
    path = tmp_path / "auto-env.bin"
    cache = build_cache("autoenv", path=str(path), key_in_keyring=True)
    assert cache.backend_info.backend == "file"
    assert "KEY_IN_KEYRING=1" in cache.backend_info.reason
    sign_in(idp, cache)
    assert path.exists()
    assert list(ScopedKeyring.entries) == [("autoenv", "token-cache.key")]
    with pytest.raises(ConfigError, match="Choose one"):
        build_cache("autoenv", path=str(path), key_in_keyring=True, backend="keyring")


# -- one entry, one lock: whatever the app name or path -----------------------------------

_WRITER = (
    "import msal, sys, msal_keyring_cache as m\n"
    "from msal_keyring_cache.testing import loopback_http_client\n"
    "app_name, path, tag, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])\n"
    "cache = m.build_cache(app_name, path=path, keyring_service='shared-entry')\n"
    "app = msal.PublicClientApplication('{client}', authority='{authority}',"
    " http_client=loopback_http_client({port}), instance_discovery=False, token_cache=cache)\n"
    "for i in range(count):\n"
    "    r = app.acquire_token_by_username_password(f'{{tag}}{{i}}@example.com', 'pw',"
    " ['User.Read'])\n"
    "    assert 'access_token' in r, r\n"
    "print(cache.store.lock().path)\n"
)


@pytest.mark.secret_service
def test_processes_sharing_an_entry_share_its_lock_whatever_their_app_name_or_path(
    tmp_path: Path, use_secret_service: Any, idp: Any
) -> None:
    import keyring

    app = idp.public_app()
    script = _WRITER.format(client=app.client_id, authority=idp.authority, port=idp.port)
    count = 6
    children = [
        subprocess.Popen(
            [PYTHON, "-c", script, f"app-{tag}", str(tmp_path / tag / "c.bin"), tag, str(count)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for tag in ("a", "b", "c")
    ]
    locks = set()
    for child in children:
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err.decode()[-2000:]
        locks.add(out.decode().strip().splitlines()[-1])
    assert len(locks) == 1  # one lock file for the one entry
    doc = json.loads(keyring.get_password("shared-entry", "token-cache"))
    names = {a["username"] for a in doc["Account"].values()}
    assert names == {f"{tag}{i}@example.com" for tag in "abc" for i in range(count)}


# -- deletes fail loudly; clear removes everything ever written --------------------------------


def test_a_refused_delete_fails_loudly_and_the_data_stays(
    monkeypatch: pytest.MonkeyPatch, memory_keyring: type[ScopedKeyring], tmp_path: Path, idp: Any
) -> None:
    use(monkeypatch, "tests.fakes.DenyingKeyring")
    cache = build_cache("deny", path=str(tmp_path / "c.bin"))
    sign_in(idp, cache)
    with pytest.raises(StoreError, match="refused to delete") as caught:
        cache.clear()
    assert "rt." not in str(caught.value)
    assert ("deny", "token-cache") in ScopedKeyring.entries
    assert DenyingKeyring.calls["delete"] >= 1


def _chunked_child(
    tmp_path: Path, version: int, exit_after: int = 0
) -> subprocess.CompletedProcess[bytes]:
    script = (
        "import sys\n"
        "from msal_keyring_cache.stores.credential import KeyringStore\n"
        "from tests.fakes import FileKeyring\n"
        f"store = KeyringStore('svc', 'acct', lock_path={str(tmp_path / 'kr.lock')!r},"
        " keyring=FileKeyring(), keyring_timeout=20)\n"
        f"tag = '{version:06d}'\n"
        "data = ('{\"v\": \"' + tag * 2000 + '\"}').encode()\n"
        "with store.lock():\n"
        "    store.load()\n"
        "    store.save(data)\n"
    )
    env = child_env(
        FAKE_KEYRING_FILE=str(tmp_path / "keyring.json"),
        FAKE_KEYRING_LIMIT="1280",
        FAKE_KEYRING_EXIT_AFTER_SETS=str(exit_after),
    )
    return subprocess.run([PYTHON, "-c", script], env=env, capture_output=True, timeout=60)


def _value(version: int) -> bytes:
    return ('{"v": "' + f"{version:06d}" * 2000 + '"}').encode()


@pytest.mark.parametrize("killed_after", ["first chunk", "last chunk"])
def test_a_save_killed_before_its_manifest_keeps_the_old_generation_and_clear_takes_orphans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_after: str
) -> None:
    """Issue 17 (deterministic: the process dies at a named write) and issue 10 (orphans)."""
    assert _chunked_child(tmp_path, 1).returncode == 0
    monkeypatch.setenv("FAKE_KEYRING_FILE", str(tmp_path / "keyring.json"))
    chunks = -(-len(_value(2)) // 1280)
    exit_after = 1 if killed_after == "first chunk" else chunks  # the manifest would be next
    died = _chunked_child(tmp_path, 2, exit_after)
    assert died.returncode == 9, died.stderr.decode()[-2000:]
    entries = FileKeyring.read_all(str(tmp_path / "keyring.json"))
    gens = {s.rsplit("|", 1)[1].split(".")[0] for s, _ in entries if "|" in s}
    assert len(gens) == 2  # the old generation and the orphans of the killed save
    store = KeyringStore(
        "svc", "acct", lock_path=str(tmp_path / "kr.lock"), keyring=FileKeyring(),
        keyring_timeout=20,
    )  # fmt: skip
    assert store.load() == _value(1)  # the previous generation, whole
    store.clear()
    assert FileKeyring.read_all(str(tmp_path / "keyring.json")) == {}


# -- error text never quotes what the backend was given ------------------------------------------


@pytest.mark.parametrize(
    "error", [RuntimeError, OSError, AttributeError, ImportError, ValueError, KeyError, TypeError]
)
def test_backend_errors_that_quote_the_value_are_never_repeated(
    tmp_path: Path,
    memory_keyring: type[ScopedKeyring],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: type[BaseException],
) -> None:
    monkeypatch.setattr(EchoingKeyring, "error", error)
    secret = '{"RefreshToken": {"k": {"secret": "rt.SECRET-VALUE"}}}'
    store = make_store(tmp_path, EchoingKeyring())
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(CacheError) as caught, store.lock():
            store.save(secret.encode())
        ScopedKeyring.entries[("test-service", "token-cache")] = secret
        with pytest.raises(CacheError) as deleted:
            store.clear()
    for exc in (caught.value, deleted.value):
        assert exc.__cause__ is None
        assert exc.__context__ is None or exc.__suppress_context__
        for text in (str(exc), repr(exc)):
            assert "SECRET-VALUE" not in text
    assert "SECRET-VALUE" not in caplog.text


# -- parsers: every input has the documented outcome ---------------------------------------------


def test_deeply_nested_stamp_and_manifest_have_the_documented_outcome(
    tmp_path: Path, memory_keyring: type[ScopedKeyring], caplog: pytest.LogCaptureFixture
) -> None:
    deep = "[" * 2000
    assert parse_stamp(deep.encode()) == {}  # no stamp: discover again, replaced next write
    assert parse_manifest("msal-keyring-cache-manifest:" + deep) is None  # damaged
    store = make_store(tmp_path, ScopedKeyring())
    Path(store.stamp_path).parent.mkdir(parents=True, exist_ok=True)
    Path(store.stamp_path).write_text(deep)
    ScopedKeyring.entries[("test-service", "token-cache")] = "msal-keyring-cache-manifest:" + deep
    with caplog.at_level(logging.WARNING):
        assert store.load() is None  # set aside, started empty: no RecursionError
    assert "damaged" in caplog.text
    with store.lock():
        store.save(b"{}")
    assert parse_stamp(Path(store.stamp_path).read_bytes())["format"]
    ScopedKeyring.entries[("test-service", "token-cache")] = deep
    with pytest.raises(CorruptCacheError):
        make_store(tmp_path, ScopedKeyring(), read_only=True).load()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_gen = st.text("0123456789abcdef", min_size=1, max_size=32)
_fast = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))


@_fast
@given(st.one_of(st.binary(max_size=300), _json.map(lambda v: json.dumps(v).encode())))
def test_fuzz_stamp_parser_never_raises(blob: bytes) -> None:
    doc = parse_stamp(blob)
    assert isinstance(doc, dict)
    assert not doc or doc["format"] == "msal-keyring-cache-stamp"


@_fast
@given(
    st.text(max_size=40),
    st.integers(min_value=200, max_value=10**6),
    st.lists(_gen, max_size=5),
    st.lists(st.text(max_size=30), max_size=5),
    st.dictionaries(st.text(max_size=6), _json, max_size=3),
)
def test_fuzz_stamp_round_trip(
    backend: str, limit: int, gens: list[str], aside: list[str], noise: dict[str, Any]
) -> None:
    doc = {**noise, "format": "msal-keyring-cache-stamp", "backend": backend, "limit": limit,
           "gens": gens, "aside": aside}  # fmt: skip
    parsed = parse_stamp(json.dumps(doc).encode())
    assert parsed == {"format": "msal-keyring-cache-stamp", "backend": backend, "limit": limit,
                      "gens": gens, "aside": aside}  # fmt: skip


@_fast
@given(st.one_of(st.text(max_size=300), _json.map(json.dumps)))
def test_fuzz_manifest_parser_never_raises(tail: str) -> None:
    for value in (tail, "msal-keyring-cache-manifest:" + tail):
        parsed = parse_manifest(value)
        assert parsed is None or (isinstance(parsed[1], int) and parsed[1] > 0)


@_fast
@given(_gen, st.integers(min_value=1, max_value=100_000), st.binary(min_size=1, max_size=64))
def test_fuzz_manifest_round_trip(gen: str, count: int, data: bytes) -> None:
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    assert parse_manifest(format_manifest(gen, count, digest)) == (gen, count, digest)
    assert parse_manifest(format_manifest(gen, count, digest)[:-1]) is None


# -- issue 16: max_value_length is a real setting ------------------------------------------------


def test_max_value_length_is_a_setting_with_an_env_var(
    monkeypatch: pytest.MonkeyPatch, memory_keyring: type[ScopedKeyring], tmp_path: Path
) -> None:
    use(monkeypatch, SCOPED)
    monkeypatch.setenv("MSAL_KEYRING_CACHE_MAX_VALUE_LENGTH", "300")
    cache = build_cache("mvl", path=str(tmp_path / "c.bin"))
    assert isinstance(cache.store, KeyringStore)
    assert cache.store.max_value_length == 300
    assert "300" in str(cache.backend_info.details["chunking"])
    monkeypatch.setenv("MSAL_KEYRING_CACHE_MAX_VALUE_LENGTH", "12")
    with pytest.raises(ConfigError, match="MAX_VALUE_LENGTH"):
        build_cache("mvl", path=str(tmp_path / "c.bin"))
    # The CLI flag comes from the same Settings table.
    out = subprocess.run(
        [PYTHON, "-m", "msal_keyring_cache", "settings"],
        env=child_env(),
        capture_output=True,
        timeout=60,
    )
    assert "--max-value-length" in out.stdout.decode()
    assert "MSAL_KEYRING_CACHE_MAX_VALUE_LENGTH" in out.stdout.decode()


def test_a_windows_like_store_works_with_no_configuration_through_build_cache(
    monkeypatch: pytest.MonkeyPatch, memory_keyring: type[ScopedKeyring], tmp_path: Path, idp: Any
) -> None:
    use(monkeypatch, "tests.fakes.WindowsLikeKeyring")
    cache = build_cache("winlike", path=str(tmp_path / "c.bin"))
    for i in range(3):
        sign_in(idp, cache, f"w{i}@example.com")
    assert all(len(v) <= 1280 for v in ScopedKeyring.entries.values())
    assert len(ScopedKeyring.entries) > 2  # chunks and a manifest
    again = build_cache("winlike", path=str(tmp_path / "c.bin"))
    assert len(list(again.search("RefreshToken"))) == 3
    assert WindowsLikeKeyring.calls["set"] > 0


# -- issue 16: auto goes where the data is -------------------------------------------------------


def test_after_move_to_file_auto_picks_the_file_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
    memory_keyring: type[ScopedKeyring],
    tmp_path: Path,
    idp: Any,
    key: str,
) -> None:
    use(monkeypatch, SCOPED)
    path = str(tmp_path / "moved.bin")
    monkeypatch.setenv("MSAL_KEYRING_CACHE_APP_NAME", "moving")
    monkeypatch.setenv("MSAL_KEYRING_CACHE_PATH", path)
    monkeypatch.setenv("MSAL_KEYRING_CACHE_KEY", key)
    sign_in(idp, build_cache())
    assert ("moving", "token-cache") in ScopedKeyring.entries
    from msal_keyring_cache.cli.parser import main

    assert main(["move", "--to", "file"]) == 0
    cache = build_cache()
    assert cache.backend_info.backend == "file"
    assert "holds no token cache" in cache.backend_info.reason
    assert "configured" not in cache.backend_info.reason.replace("backend=keyring", "")
    assert list(cache.search("RefreshToken"))
    assert main(["move", "--to", "keyring"]) == 0  # not "already lives in the keyring"
    assert build_cache().backend_info.backend == "keyring"


# -- issue 17: a write between the probe and the first read; one save, one physical write -------


def test_a_write_between_the_probe_and_the_first_read_is_seen(
    monkeypatch: pytest.MonkeyPatch, memory_keyring: type[ScopedKeyring], tmp_path: Path, idp: Any
) -> None:
    use(monkeypatch, SCOPED)
    args = {"app_name": "probe-race", "path": str(tmp_path / "c.bin")}
    probed = build_cache(**args)  # the probe read: nothing there yet
    sign_in(idp, build_cache(**args), "late@example.com")  # another process writes
    accounts = [a["username"] for a in probed.search("Account")]
    assert accounts == ["late@example.com"]


def test_one_sign_in_is_one_backend_write_and_one_stamp_replacement(
    monkeypatch: pytest.MonkeyPatch, memory_keyring: type[ScopedKeyring], tmp_path: Path, idp: Any
) -> None:
    use(monkeypatch, SCOPED)
    cache = build_cache("one-write", path=str(tmp_path / "c.bin"))
    store = cache.store
    assert isinstance(store, KeyringStore)
    replaced: list[str] = []
    real_replace = os.replace

    def counting_replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        replaced.append(os.fspath(dst))
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", counting_replace)
    app = idp.public_app(token_cache=cache)
    for i in range(3):
        sets = ScopedKeyring.calls["set"]  # the backend's own count, not the store's
        before = _identity(store.stamp_path)
        result = app.acquire_token_by_username_password(f"o{i}@example.com", "pw", ["User.Read"])
        assert "access_token" in result
        assert ScopedKeyring.calls["set"] - sets == 1
        assert replaced.count(store.stamp_path) == i + 1
        assert _identity(store.stamp_path) != before
        assert [p for p in replaced if p != store.stamp_path] == []


def _identity(path: str) -> tuple[int, int]:
    st_ = os.stat(path) if os.path.exists(path) else None
    return (st_.st_ino, st_.st_mtime_ns) if st_ else (0, 0)


# -- issue 12: writes on the kept Secret Service connection, readable by keyring and back ---------


@pytest.mark.secret_service
def test_direct_secret_service_writes_are_keyrings_entries_and_the_other_way_round(
    tmp_path: Path, use_secret_service: Any, idp: Any
) -> None:
    import keyring

    path = str(tmp_path / "c.bin")
    cache = build_cache("ss-direct-write", path=path)
    store = cache.store
    assert isinstance(store, KeyringStore)
    sign_in(idp, cache, "ours@example.com")
    assert store.direct  # the write went over the kept connection
    ours = keyring.get_password("ss-direct-write", "token-cache")
    assert "ours@example.com" in ours
    keyring.set_password("ss-direct-write", "other", "written by keyring")
    items = {a["username"]: (a, label) for a, label in use_secret_service.items()
             if a["service"] == "ss-direct-write"}  # fmt: skip
    (ours_attrs, ours_label), (theirs_attrs, theirs_label) = items["token-cache"], items["other"]
    added = {"xdg:schema"}  # gnome-keyring may add its generic schema to any item
    assert (
        set(ours_attrs) - added
        == set(theirs_attrs) - added
        == {
            "application",
            "service",
            "username",
        }
    )
    assert ours_attrs["application"] == theirs_attrs["application"]
    assert ours_label == "Password for 'token-cache' on 'ss-direct-write'"
    assert theirs_label == "Password for 'other' on 'ss-direct-write'"
    # keyring writes, we read (a new process would); keyring deletes what we wrote.
    doc = json.loads(ours)
    doc["Account"]["extra"] = {"username": "keyring-wrote@example.com"}
    keyring.set_password("ss-direct-write", "token-cache", json.dumps(doc))
    reader = build_cache("ss-direct-write", path=path)
    names = {a.get("username") for a in reader.search("Account")}
    assert "keyring-wrote@example.com" in names
    keyring.delete_password("ss-direct-write", "other")
    reader.clear()
    assert keyring.get_password("ss-direct-write", "token-cache") is None


def test_read_only_envelope_key_never_makes_a_key(
    monkeypatch: pytest.MonkeyPatch, memory_keyring: type[ScopedKeyring], tmp_path: Path
) -> None:
    from msal_keyring_cache.factory import envelope_key

    use(monkeypatch, SCOPED)
    settings = Settings.resolve(app_name="ro-env", path=str(tmp_path / "c.bin"))
    source = envelope_key(settings, read_only=True)  # a key source that decrypts nothing
    assert "nothing was created" in source.why  # type: ignore[attr-defined]
    with pytest.raises(DecryptError):
        source.keys_for(None)  # type: ignore[arg-type]
    assert ScopedKeyring.entries == {}
    assert ScopedKeyring.calls["set"] == 0
    assert not Path(default_lock_path(settings, "token-cache.key")).parent.exists()
