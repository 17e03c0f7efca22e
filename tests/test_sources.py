"""Foreign caches: found where the Azure tools leave them, read, validated, migrated, deleted.

Real msal-extensions writes the plaintext caches, a real separate process holds its lock,
a real gnome-keyring holds the encrypted ones (written the way libsecret writes them).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import subprocess
import textwrap
import warnings
from pathlib import Path
from typing import Any

import msal
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msal_keyring_cache import (
    CacheError,
    CorruptCacheError,
    LockTimeoutError,
    MemoryStore,
    PersistentTokenCache,
    Settings,
    StoreError,
    build_cache,
)
from msal_keyring_cache import sources as src
from msal_keyring_cache.cli import migrate as cli_migrate
from msal_keyring_cache.cli.common import _Context
from msal_keyring_cache.errors import UsageError
from msal_keyring_cache.testing import LoopbackIdentityProvider

from .helpers import PYTHON, child_env, require_tool

SCOPES = ["User.Read"]
USERS = ("alice@example.com", "bob@example.com")


def sign_in(app: Any, username: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result = app.acquire_token_by_username_password(username, "pw", SCOPES)
    assert "access_token" in result, result


def legacy_cache_text(idp: LoopbackIdentityProvider, users: tuple[str, ...] = USERS) -> str:
    cache = msal.SerializableTokenCache()
    app = idp.public_app(token_cache=cache)
    for user in users:
        sign_in(app, user)
    return str(cache.serialize())


def write_with_msal_extensions(idp: LoopbackIdentityProvider, path: Path) -> None:
    from msal_extensions import FilePersistence, PersistedTokenCache

    app = idp.public_app(token_cache=PersistedTokenCache(FilePersistence(str(path))))
    for user in USERS:
        sign_in(app, user)


@pytest.fixture
def target(tmp_path: Path, key: str) -> Settings:
    return Settings.resolve(backend="file", path=str(tmp_path / "secure" / "cache.bin"), key=key)


def silent_everyone(idp: LoopbackIdentityProvider, settings: Settings) -> None:
    """A fresh cache on the migrated store signs every user in without a token request."""
    cache = build_cache(backend="file", path=settings.path, key=settings.key)
    app = idp.public_app(token_cache=cache)
    idp.reset()
    accounts = app.get_accounts()
    assert sorted(a["username"] for a in accounts) == sorted(USERS)
    for account in accounts:
        assert "access_token" in app.acquire_token_silent(["Other.Scope"], account=account)
    assert idp.token_requests == len(USERS)  # refreshed by the migrated refresh tokens
    idp.reset()
    for account in accounts:
        result = app.acquire_token_silent(SCOPES, account=account)
        assert result["token_source"] == "cache"
    assert idp.token_requests == 0
    raw = Path(str(settings.path)).read_bytes()
    assert all(token.encode() not in raw for token in idp.issued)


# -- finding ------------------------------------------------------------------------------


def test_find_sources_honours_azure_config_dir_and_home(tmp_path: Path) -> None:
    home, config = tmp_path / "home", tmp_path / "az"
    (home / ".IdentityService").mkdir(parents=True)
    config.mkdir()
    (config / "msal_token_cache.json").write_text("{}")
    (config / "msal_token_cache.bin").write_bytes(b"")
    (home / ".IdentityService" / "msal.cache.nocae").write_bytes(b"")
    (home / ".IdentityService" / "msal.cache.cae").write_text("{}")
    (home / ".IdentityService" / "msal.cache.nocae.lockfile").write_text("1")
    (home / ".azure").mkdir()
    (home / ".azure" / "msal_token_cache.json").write_text("{}")  # not used: AZURE_CONFIG_DIR

    found = {
        s.name: s for s in src.find_sources({"HOME": str(home), "AZURE_CONFIG_DIR": str(config)})
    }
    assert set(found) == {
        "azure-cli",
        "azure-cli-encrypted",
        "azure-identity:msal.cache.cae",
        "azure-identity:msal.cache.nocae",
    }
    assert found["azure-cli"].path == str(config / "msal_token_cache.json")
    assert found["azure-cli"].lock_path == str(config / "msal_token_cache.json.lockfile")
    assert not found["azure-cli"].encrypted
    assert dict(found["azure-cli-encrypted"].attributes) == {
        "xdg:schema": "my_schema_name", "my_attr1": "foo", "my_attr2": "bar",
    }  # fmt: skip
    assert dict(found["azure-identity:msal.cache.nocae"].attributes) == {
        "xdg:schema": "msal.cache.nocae", "MsalClientID": "Microsoft.Developer.IdentityService",
    }  # fmt: skip
    assert not found["azure-identity:msal.cache.cae"].encrypted  # plaintext: not a marker
    default = {s.name for s in src.find_sources({"HOME": str(home)})}
    assert "azure-cli" in default  # ~/.azure without AZURE_CONFIG_DIR


# -- plaintext sources --------------------------------------------------------------------


def test_migrate_azure_cli_plaintext_cache(
    idp: LoopbackIdentityProvider, tmp_path: Path, target: Settings
) -> None:
    config = tmp_path / "az"
    write_with_msal_extensions(idp, config / "msal_token_cache.json")
    source = src.source_for("azure-cli", {"AZURE_CONFIG_DIR": str(config)})
    done = src.migrate(source, target, delete=True)
    assert done.entries > 0
    assert done.added_or_updated == done.entries
    assert done.accounts == list(USERS)
    assert done.source_deleted
    assert not (config / "msal_token_cache.json").exists()
    assert not (config / "msal_token_cache.json.lockfile").exists()  # released like theirs
    silent_everyone(idp, target)


def test_migrate_azure_identity_plaintext_cache(
    idp: LoopbackIdentityProvider, tmp_path: Path, target: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(os.environ["HOME"]) / ".IdentityService" / "msal.cache.nocae"
    write_with_msal_extensions(idp, path)
    source = src.source_for("azure-identity:msal.cache.nocae")
    assert source.tool == "azure-identity"
    done = src.migrate(source, target)
    assert done.accounts == list(USERS)
    assert not done.source_deleted
    assert path.exists()  # kept unless asked
    silent_everyone(idp, target)


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from msal_extensions import CrossPlatLock
    with CrossPlatLock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.readline()
    """
)


def test_reading_waits_for_azure_clis_lock_held_by_another_process(
    idp: LoopbackIdentityProvider, tmp_path: Path
) -> None:
    config = tmp_path / "az"
    config.mkdir()
    plain = config / "msal_token_cache.json"
    plain.write_text(legacy_cache_text(idp))
    lock = str(plain) + ".lockfile"
    holder = subprocess.Popen(
        [PYTHON, "-c", _HOLDER, lock], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=child_env(), text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        source = src.source_for("azure-cli", {"AZURE_CONFIG_DIR": str(config)})
        with pytest.raises(LockTimeoutError, match="holds it"):
            src.read_source(source, lock_timeout=0.5)
        assert os.path.exists(lock)  # theirs: untouched
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    assert src.read_source(source, lock_timeout=5).entries > 0
    assert not os.path.exists(lock)


_WRITER = textwrap.dedent(
    """
    import sys
    from msal_extensions import CrossPlatLock, FilePersistence
    path, n = sys.argv[1], int(sys.argv[2])
    p = FilePersistence(path)
    for i in range(n):
        with CrossPlatLock(path + ".lockfile"):
            p.save(p.load() + "x")
    """
)


def test_our_lock_and_msal_extensions_lock_exclude_each_other(tmp_path: Path) -> None:
    """msal-extensions' writers and our locked read-modify-writes lose no update."""
    path = tmp_path / "counter.txt"
    path.write_text("")
    lock = str(path) + ".lockfile"
    writers = [
        subprocess.Popen([PYTHON, "-c", _WRITER, str(path), "40"], env=child_env())
        for _ in range(2)
    ]
    for _ in range(40):
        with src.msal_extensions_lock(lock, 30):
            text = path.read_text()
            path.write_text(text + "y")
    assert all(w.wait(timeout=120) == 0 for w in writers)
    assert len(path.read_text()) == 120


def test_empty_marker_and_zero_entry_sources_are_refused_and_kept(
    tmp_path: Path, target: Settings
) -> None:
    marker = tmp_path / "msal_token_cache.bin"
    marker.write_bytes(b"")
    source = src.source_for(str(marker))
    assert source.encrypted  # an empty file is taken for msal-extensions' marker
    with pytest.raises(CacheError, match="empty marker file"):
        src.migrate(source, target, delete=True)
    assert marker.exists()

    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(StoreError, match="no token-cache entries"):
        src.migrate(src.source_for(str(empty)), target, delete=True)
    assert empty.exists()
    only_metadata = tmp_path / "meta.json"
    only_metadata.write_text('{"customized": "whatever"}')
    with pytest.raises(StoreError, match="no token-cache entries"):
        src.migrate(src.source_for(str(only_metadata)), target, delete=True)
    assert only_metadata.exists()


def test_a_source_that_changed_after_reading_is_not_deleted(
    idp: LoopbackIdentityProvider, tmp_path: Path, target: Settings
) -> None:
    plain = tmp_path / "legacy.json"
    plain.write_text(legacy_cache_text(idp, USERS[:1]))
    snap = src.read_source(src.source_for(str(plain)))
    plain.write_text(legacy_cache_text(idp))  # another sign-in landed meanwhile
    with pytest.raises(StoreError, match="changed after it was migrated"):
        src.delete_source(snap)
    assert plain.exists()


def test_non_regular_and_symlinked_sources_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="not a regular file"):
        src.read_source(src.source_for(str(fifo)))
    real = tmp_path / "real.json"
    real.write_text('{"RefreshToken": {}}')
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(StoreError, match="symbolic link"):
        src.read_source(src.source_for(str(link)))
    ours = tmp_path / "ours.bin"
    ours.write_bytes(b'{"format":"msal-keyring-cache","v":1}\n')
    with pytest.raises(StoreError, match="already an encrypted"):
        src.read_source(src.source_for(str(ours)))


# -- validation ---------------------------------------------------------------------------


AT_TYPE = {"credential_type": "AccessToken"}
IDT_TYPE = {"credential_type": "IdToken"}


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ({"RefreshToken": {"k1": "not an object"}}, "RefreshToken['k1'] is not an object"),
        ({"RefreshToken": {"k1": {}}}, "RefreshToken['k1'] has no 'secret'"),
        ({"AccessToken": {"a": {**AT_TYPE, "secret": "s", "expires_on": "soon"}}}, "'expires_on'"),
        (
            {"AccessToken": {"a": {**AT_TYPE, "secret": "s", "expires_on": "1", "target": 3}}},
            "'target'",
        ),
        ({"AccessToken": {"a": {"secret": "s", "expires_on": "1"}}}, "has no 'credential_type'"),
        (
            {
                "AccessToken": {
                    "a": {"credential_type": "IdToken", "secret": "s", "expires_on": "1"}
                }
            },
            "has a 'credential_type' that is not 'AccessToken'",
        ),
        ({"Account": {"x": {"home_account_id": "h", "environment": "e"}}}, "no 'authority_type'"),
        ({"Account": {"x": {"home_account_id": "h"}}}, "has no 'environment'"),
        ({"Account": []}, "the 'Account' section is not an object"),
        (
            {"IdToken": {"i": {"credential_type": "IdToken", "secret": 5}}},
            "'secret' that is not text",
        ),
    ],
)
def test_a_bad_entry_refuses_the_whole_import_and_is_named(doc: Any, named: str) -> None:
    good = {"RefreshToken": {"good": {"credential_type": "RefreshToken", "secret": "s"}}}
    merged = {**good, **doc} if "RefreshToken" not in doc else doc
    with pytest.raises(CorruptCacheError) as caught:
        src.parse_cache(json.dumps(merged), "the file")
    assert named in str(caught.value)
    assert "nothing was imported" in str(caught.value)


def test_deeply_nested_json_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(CorruptCacheError, match="not JSON"):
        src.parse_cache("[" * 100_000, "the file")


def test_a_real_cache_with_extra_content_is_accepted(idp: LoopbackIdentityProvider) -> None:
    doc = json.loads(legacy_cache_text(idp))
    doc["customized"] = "whatever"  # msal keeps unknown top-level content; so do we
    assert src.parse_cache(json.dumps(doc)) == doc


_text = st.one_of(st.none(), st.text(max_size=8), st.integers(), st.booleans(), st.floats())
_entry = st.one_of(
    _text,
    st.dictionaries(
        st.sampled_from(["secret", "expires_on", "refresh_on", "home_account_id", "environment",
                         "client_id", "realm", "target", "username", "cached_at"]),
        _text,
    ),
)  # fmt: skip
_doc = st.dictionaries(
    st.sampled_from(["AccessToken", "RefreshToken", "IdToken", "Account", "AppMetadata", "x"]),
    st.one_of(_text, st.dictionaries(st.text(max_size=6), _entry, max_size=3)),
    max_size=5,
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_doc)
def test_fuzz_whatever_parse_cache_accepts_msal_can_use(
    idp: LoopbackIdentityProvider, doc: Any
) -> None:
    """Accepted caches never make msal raise; refused ones raise only CorruptCacheError."""
    text = json.dumps(doc)
    try:
        src.parse_cache(text, "the fuzzed cache")
    except CorruptCacheError:
        return
    cache = PersistentTokenCache(MemoryStore())
    cache.merge(text)
    app = idp.public_app("c", token_cache=cache)
    # What msal does with a cache on a silent call: list accounts, search every type,
    # prune expired access tokens (modify), read refresh tokens.
    app.get_accounts()
    for kind in ("AccessToken", "RefreshToken", "IdToken", "Account", "AppMetadata"):
        list(cache.search(kind, query={}))
    list(cache.search("AccessToken", target=["s"], query={"client_id": "c"}))


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_parse_cache_raises_only_its_own_error(text: str) -> None:
    with contextlib.suppress(CorruptCacheError):
        src.parse_cache(text)


# -- the command (its arguments and handlers, as the CLI parser uses them) -----------------


def run_cli(handler: Any, add: Any, argv: list[str], env_prefix: str = "MSAL_KEYRING_CACHE") -> Any:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    add(parser)
    args = parser.parse_args(argv)
    args.env_prefix = env_prefix
    out = io.StringIO()
    assert handler(_Context(args, out, io.StringIO())) == 0
    return json.loads(out.getvalue()) if "--json" in argv else out.getvalue()


@pytest.fixture
def file_settings(tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "MSAL_KEYRING_CACHE_BACKEND": "file",
        "MSAL_KEYRING_CACHE_PATH": str(tmp_path / "secure" / "cache.bin"),
        "MSAL_KEYRING_CACHE_KEY": key,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_migrate_list_then_migrate_by_name(
    idp: LoopbackIdentityProvider, tmp_path: Path, file_settings: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    config = tmp_path / "az"
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(config))
    write_with_msal_extensions(idp, config / "msal_token_cache.json")
    identity = Path(os.environ["HOME"]) / ".IdentityService"
    identity.mkdir()
    (identity / "msal.cache.nocae").write_text("{}")  # zero entries: listed, not migratable

    listed = run_cli(
        cli_migrate.cmd_migrate, cli_migrate.add_migrate_arguments, ["--list", "--json"]
    )
    rows = {r["name"]: r for r in listed["sources"]}
    assert rows["azure-cli"]["accounts"] == list(USERS)
    assert rows["azure-cli"]["entries"] > 0
    assert rows["azure-cli"]["problem"] is None
    assert "no token-cache entries" in rows["azure-identity:msal.cache.nocae"]["problem"]
    text = run_cli(cli_migrate.cmd_migrate, cli_migrate.add_migrate_arguments, ["--list"])
    assert "azure-cli" in text
    assert "not migratable" in text
    assert all(t not in json.dumps(listed) + text for t in idp.issued)

    done = run_cli(
        cli_migrate.cmd_migrate, cli_migrate.add_migrate_arguments,
        ["--from", "azure-cli", "--delete-source", "--json"],
    )  # fmt: skip
    assert done["verified"]
    assert done["source_deleted"]
    assert done["accounts"] == list(USERS)
    assert not (config / "msal_token_cache.json").exists()
    with pytest.raises(UsageError):
        run_cli(cli_migrate.cmd_migrate, cli_migrate.add_migrate_arguments, [])


def test_import_uses_the_same_validation(tmp_path: Path, file_settings: dict[str, str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"RefreshToken": {"k": 1}}))
    with pytest.raises(CorruptCacheError, match=r"RefreshToken\['k'\]"):
        run_cli(cli_migrate.cmd_import, cli_migrate.add_import_arguments, [str(bad)])
    assert not Path(file_settings["MSAL_KEYRING_CACHE_PATH"]).exists()  # nothing written


# -- the Secret Service (real gnome-keyring), entries written as libsecret writes them -----


def write_like_libsecret(service: Any, attributes: dict[str, str], label: str, text: str) -> None:
    collection = service.collection()
    try:
        collection.create_item(label, attributes, text.encode(), replace=True)
    finally:
        collection.connection.close()


@pytest.mark.secret_service
@pytest.mark.parametrize("tool", ["azure-identity", "azure-cli"])
def test_migrate_encrypted_caches_from_the_secret_service(
    tool: str, idp: LoopbackIdentityProvider, tmp_path: Path, target: Settings,
    use_secret_service: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    require_tool("gnome-keyring-daemon")
    home = Path(os.environ["HOME"])
    if tool == "azure-identity":
        marker = home / ".IdentityService" / "msal.cache.nocae"
        attributes = {"xdg:schema": "msal.cache.nocae",
                      "MsalClientID": "Microsoft.Developer.IdentityService"}  # fmt: skip
        name, label = "azure-identity:msal.cache.nocae", "MSALCache"
    else:
        monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "az"))
        marker = tmp_path / "az" / "msal_token_cache.bin"
        attributes = {"xdg:schema": "my_schema_name", "my_attr1": "foo", "my_attr2": "bar"}
        name, label = "azure-cli-encrypted", ""
    marker.parent.mkdir(parents=True)
    marker.write_bytes(b"")  # msal-extensions touches it
    write_like_libsecret(use_secret_service, attributes, label, legacy_cache_text(idp))

    listed = {s.name: s for s in src.find_sources()}
    assert listed[name].encrypted
    done = src.migrate(src.source_for(name), target, delete=True)
    assert done.accounts == list(USERS)
    assert done.source_deleted
    assert not marker.exists()
    remaining = [
        a for a, _ in use_secret_service.items() if a.get("xdg:schema") == attributes["xdg:schema"]
    ]
    assert remaining == []
    silent_everyone(idp, target)


@pytest.mark.secret_service
def test_a_missing_secret_service_entry_is_refused_and_the_marker_kept(
    tmp_path: Path, target: Settings, use_secret_service: Any
) -> None:
    marker = Path(os.environ["HOME"]) / ".IdentityService" / "msal.cache.nocae"
    marker.parent.mkdir(parents=True)
    marker.write_bytes(b"")
    with pytest.raises(StoreError, match="not found in the Secret Service"):
        src.migrate(src.source_for("azure-identity:msal.cache.nocae"), target, delete=True)
    assert marker.exists()


def test_a_secret_service_that_never_answers_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A D-Bus that accepts the connection and never answers: the read gives up in time."""
    import socket
    import threading

    path = str(tmp_path / "silent-bus")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # accept, then say nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={path}")
    marker = tmp_path / "msal.cache.nocae"
    marker.write_bytes(b"")
    source = src.Source("x", "azure-identity", str(marker), (("xdg:schema", "x"),))
    try:
        from msal_keyring_cache.errors import BackendUnavailableError

        with pytest.raises(BackendUnavailableError, match="did not answer"):
            src.read_source(source, timeout=1.0)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
        # The abandoned reader now fails; let it end and drop its socket here, quietly.
        for worker in threading.enumerate():
            if worker.name == "msal-keyring-cache-source":
                worker.join(timeout=10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def test_migrate_command_refuses_an_empty_marker_and_keeps_it(
    tmp_path: Path, file_settings: dict[str, str]
) -> None:
    """0.1.0 said "Imported 0 entries… verified" here and deleted the marker."""
    marker = tmp_path / "msal_token_cache.bin"
    marker.write_bytes(b"")
    with pytest.raises(CacheError, match="empty marker file") as caught:
        run_cli(
            cli_migrate.cmd_migrate, cli_migrate.add_migrate_arguments,
            ["--from", str(marker), "--delete-source"],
        )  # fmt: skip
    assert "nothing was" in str(caught.value).lower()
    assert marker.exists()
    assert not Path(file_settings["MSAL_KEYRING_CACHE_PATH"]).exists()
