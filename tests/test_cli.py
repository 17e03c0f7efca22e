"""The ``msal-keyring-cache`` command, run as a real subprocess against real stores."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from msal_keyring_cache import build_cache, crypto, generate_key
from msal_keyring_cache.testing import LoopbackIdentityProvider
from tests.helpers import PYTHON, child_env, mounted_tmpfs

SCOPES = ["User.Read"]
USERS = ("alice@example.com", "bob@example.com")


class Run:
    """One finished command: exit status, stdout, stderr."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self) -> Any:
        return json.loads(self.out)


#: The installed console script (``pip install -e .`` puts it beside the interpreter).
SCRIPT = Path(PYTHON).with_name("msal-keyring-cache")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [PYTHON, "-m", "msal_keyring_cache"]


def cli(*args: str, env: Optional[dict[str, str]] = None, stdin: str = "") -> Run:
    """Run the real console script in a subprocess (HOME: the test's own, fresh)."""
    proc = subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=child_env(**(env or {})),
        timeout=120,
        check=False,
    )
    return Run(proc)


def assert_no_secret(run: Run, idp: LoopbackIdentityProvider, *extra: str) -> None:
    text = run.out + run.err
    for value in [*idp.issued, *extra]:
        assert value not in text
    assert '"secret"' not in text
    assert "Traceback" not in text


def assert_one_line_error(run: Run, code: int) -> None:
    assert run.code == code, (run.out, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("msal-keyring-cache: error: ")
    assert run.out == ""


def sign_in(app: Any, username: str) -> dict[str, Any]:
    with warnings.catch_warnings():  # msal deprecates the password grant for public apps
        warnings.simplefilter("ignore", DeprecationWarning)
        result: dict[str, Any] = app.acquire_token_by_username_password(username, "pw", SCOPES)
    assert "access_token" in result, result
    return result


@pytest.fixture
def file_env(tmp_path: Path, key: str) -> dict[str, str]:
    return {
        "MSAL_KEYRING_CACHE_BACKEND": "file",
        "MSAL_KEYRING_CACHE_PATH": str(tmp_path / "cache" / "token_cache.bin"),
        "MSAL_KEYRING_CACHE_KEY": key,
    }


@pytest.fixture
def signed_in(idp: LoopbackIdentityProvider, file_env: dict[str, str], key: str) -> dict[str, str]:
    """A real encrypted file cache holding two users, and the env that points at it."""
    cache = build_cache(backend="file", path=file_env["MSAL_KEYRING_CACHE_PATH"], key=key)
    app = idp.public_app(token_cache=cache)
    for user in USERS:
        sign_in(app, user)
    cache.close()
    idp.reset()
    return file_env


# -- usage ---------------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    run = cli("--help")
    assert run.code == 0
    for name in (
        "status",
        "accounts",
        "clear",
        "doctor",
        "migrate",
        "export",
        "import",
        "rotate-key",
        "move",
        "generate-key",
        "demo",
    ):
        assert name in run.out
    assert "--key " not in run.out
    assert "--passphrase" not in run.out


def test_no_argument_shadows_a_setting() -> None:
    # A positional named "path" once fed the import file in as the cache path.
    import argparse

    from msal_keyring_cache.cli import build_parser
    from msal_keyring_cache.config import describe_settings

    names = {row["name"] for row in describe_settings()} | {"env_prefix"}
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.dest in names:
                flag = "--" + action.dest.replace("_", "-")
                assert flag in action.option_strings, (name, action.dest)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--backend", "nope", "status"], {}),
        (["status", "--bogus"], {}),
        ([], {}),
        (["--lock-timeout", "soon", "status"], {}),
        (["status"], {"MSAL_KEYRING_CACHE_BACKEND": "cloud"}),
        (["status"], {"MSAL_KEYRING_CACHE_KEY": "not-a-key"}),
        (["--env-prefix", "1bad", "status"], {}),
        (["export"], {"MSAL_KEYRING_CACHE_BACKEND": "file"}),
        (["move", "--to", "cloud"], {}),
        (["--keyring-timeout", "0", "status"], {}),
        (["--lock-timeout", "nan", "status"], {}),
        (["--app-name", "../x", "status"], {}),
        (["status"], {"MSAL_KEYRING_CACHE_PATH": "cache/"}),
        (["export", "--plaintext", "--output", "out/"], {}),
        (["rotate-key", "--new-key-file", "keys/"], {"MSAL_KEYRING_CACHE_BACKEND": "file"}),
    ],
)
def test_bad_flags_and_values_are_one_line_exit_2(args: list[str], env: dict[str, str]) -> None:
    run = cli(*args, env=env)
    assert_one_line_error(run, 2)
    assert "not-a-key" not in run.err  # a bad secret is named, never shown


def test_flag_wins_over_environment(signed_in: dict[str, str], tmp_path: Path) -> None:
    other = str(tmp_path / "other.bin")
    run = cli("--path", other, "status", "--json", env=signed_in)
    assert run.code == 0, run.err
    assert run.json()["location"] == other
    # a flag after the subcommand works too, and the environment applies otherwise
    assert cli("status", "--json", "--path", other, env=signed_in).json()["location"] == other
    doc = cli("status", "--json", env=signed_in).json()
    assert doc["location"] == signed_in["MSAL_KEYRING_CACHE_PATH"]


def test_env_prefix(signed_in: dict[str, str]) -> None:
    env = {k.replace("MSAL_KEYRING_CACHE", "MYTOOL_CACHE"): v for k, v in signed_in.items()}
    env.update(dict.fromkeys(signed_in, ""))
    run = cli("--env-prefix", "MYTOOL_CACHE", "accounts", "--json", env=env)
    assert run.code == 0, run.err
    assert [a["username"] for a in run.json()["accounts"]] == list(USERS)


# -- status, accounts ------------------------------------------------------------------------


def test_status_json(signed_in: dict[str, str], idp: LoopbackIdentityProvider, key: str) -> None:
    run = cli("status", "--json", env=signed_in)
    assert run.code == 0, run.err
    doc = run.json()
    assert set(doc) >= {
        "backend",
        "reason",
        "location",
        "protection",
        "size",
        "last_write",
        "lock_file",
        "counts",
        "accounts",
        "problem",
        "store",
    }
    assert doc["backend"] == "file"
    assert doc["location"] == signed_in["MSAL_KEYRING_CACHE_PATH"]
    assert doc["lock_file"] == doc["location"] + ".lock"
    assert doc["size"] == os.path.getsize(doc["location"])
    assert doc["counts"]["AccessToken"] == 2
    assert doc["counts"]["RefreshToken"] == 2
    assert doc["counts"]["Account"] == 2
    assert doc["accounts"] == list(USERS)
    assert doc["problem"] is None
    assert_no_secret(run, idp, key)


def test_status_text(signed_in: dict[str, str], idp: LoopbackIdentityProvider, key: str) -> None:
    run = cli("status", env=signed_in)
    assert run.code == 0, run.err
    assert "backend:" in run.out
    assert "protection:" in run.out
    assert "2 RefreshToken" in run.out
    assert_no_secret(run, idp, key)


def test_status_with_wrong_key_reports_a_problem(signed_in: dict[str, str], key: str) -> None:
    env = {**signed_in, "MSAL_KEYRING_CACHE_KEY": generate_key()}
    run = cli("status", "--json", env=env)
    assert run.code == 1
    assert "fingerprint" in run.json()["problem"]
    assert env["MSAL_KEYRING_CACHE_KEY"] not in run.out + run.err


def test_accounts_json(signed_in: dict[str, str], idp: LoopbackIdentityProvider, key: str) -> None:
    run = cli("accounts", "--json", env=signed_in)
    assert run.code == 0, run.err
    rows = run.json()["accounts"]
    assert [r["username"] for r in rows] == list(USERS)
    for row in rows:
        assert set(row) == {
            "username",
            "home_account_id",
            "environment",
            "realm",
            "token_types",
            "access_tokens",
            "refresh_token",
        }
        assert row["token_types"] == ["AccessToken", "RefreshToken", "IdToken"]
        assert row["refresh_token"] is True
        assert row["environment"] == "127.0.0.1"
        [at] = row["access_tokens"]
        assert at["scopes"] == "User.Read"
        assert at["expired"] is False
        assert at["expires_on"].endswith("Z")
    assert_no_secret(run, idp, key)
    text = cli("accounts", env=signed_in)
    assert "alice@example.com" in text.out
    assert "refresh token:   yes" in text.out
    assert_no_secret(text, idp, key)


# -- clear ---------------------------------------------------------------------------------------


def test_clear_one_account(
    signed_in: dict[str, str], idp: LoopbackIdentityProvider, key: str
) -> None:
    run = cli("clear", "--account", "BOB@example.com", "--yes", env=signed_in)
    assert run.code == 0, run.err
    assert_no_secret(run, idp, key)
    rows = cli("accounts", "--json", env=signed_in).json()["accounts"]
    assert [r["username"] for r in rows] == ["alice@example.com"]
    # alice still signs in silently, from the cache
    cache = build_cache(backend="file", path=signed_in["MSAL_KEYRING_CACHE_PATH"], key=key)
    app = idp.public_app(token_cache=cache)
    [alice] = app.get_accounts()
    assert "access_token" in app.acquire_token_silent(SCOPES, account=alice)
    assert idp.token_requests == 0
    assert not app.get_accounts(username="bob@example.com")


def test_clear_removes_set_aside_and_temporary_copies(
    signed_in: dict[str, str], idp: LoopbackIdentityProvider, key: str
) -> None:
    path = Path(signed_in["MSAL_KEYRING_CACHE_PATH"])
    cache = build_cache(backend="file", path=str(path), key=key, http_cache=True)
    app = idp.public_app(token_cache=cache, http_cache=cache.http_cache)
    assert app.acquire_token_silent(SCOPES, account=app.get_accounts()[0])
    cache.close()
    blob = path.read_bytes()
    leftovers = [
        path.with_name(path.name + ".corrupt-20260101T000000-abcdef"),
        path.with_name(f".{path.name}.0123456789ab.tmp"),
    ]
    for leftover in leftovers:
        leftover.write_bytes(blob)  # both would still decrypt to every refresh token
    unrelated = path.with_name("notes.txt")
    unrelated.write_text("mine")
    http = path.with_name(path.name + ".http")
    assert http.exists()  # msal's discovery answer, kept beside the cache
    run = cli("clear", "--yes", env=signed_in)
    assert run.code == 0, run.err
    assert not path.exists()
    assert not any(p.exists() for p in leftovers)
    assert not http.exists()
    assert unrelated.read_text() == "mine"


def test_clear_unknown_account(signed_in: dict[str, str]) -> None:
    run = cli("clear", "--account", "carol@example.com", "--yes", env=signed_in)
    assert_one_line_error(run, 1)
    assert len(cli("accounts", "--json", env=signed_in).json()["accounts"]) == 2


def test_clear_asks_first(signed_in: dict[str, str]) -> None:
    refused = cli("clear", env=signed_in, stdin="n\n")
    assert refused.code == 1
    assert os.path.exists(signed_in["MSAL_KEYRING_CACHE_PATH"])
    done = cli("clear", env=signed_in, stdin="y\n")
    assert done.code == 0, done.err
    assert not os.path.exists(signed_in["MSAL_KEYRING_CACHE_PATH"])
    assert cli("accounts", "--json", env=signed_in).json() == {"accounts": []}
    assert cli("clear", "--yes", env=signed_in).code == 0  # already empty


# -- doctor --------------------------------------------------------------------------------------


def test_doctor_ok(signed_in: dict[str, str], idp: LoopbackIdentityProvider, key: str) -> None:
    run = cli("doctor", "--json", env=signed_in)
    assert run.code == 0, run.out
    doc = run.json()
    assert doc["ok"] is True
    names = {c["name"] for c in doc["checks"]}
    assert {"settings", "backend", "protection", "lock", "decrypt"} <= names
    assert all(c["status"] in {"ok", "warn"} for c in doc["checks"])
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in doc["checks"])
    assert_no_secret(run, idp, key)


def test_doctor_finds_wrong_key_and_loose_permissions(signed_in: dict[str, str]) -> None:
    path = signed_in["MSAL_KEYRING_CACHE_PATH"]
    os.chmod(path, 0o644)
    wrong = generate_key()
    run = cli("doctor", "--json", env={**signed_in, "MSAL_KEYRING_CACHE_KEY": wrong})
    assert run.code == 1
    failed = {c["name"]: c for c in run.json()["checks"] if c["status"] == "fail"}
    assert "decrypt" in failed
    assert failed[f"permissions of {path}"]["fix"] == f"chmod 600 {path}"
    assert wrong not in run.out + run.err
    text = cli("doctor", env={**signed_in, "MSAL_KEYRING_CACHE_KEY": wrong})
    assert text.code == 1
    assert "[fail] decrypt" in text.out
    assert "fix: chmod 600" in text.out


# -- migrate, export, import ------------------------------------------------------------------


def test_migrate_from_msal_extensions(
    idp: LoopbackIdentityProvider, file_env: dict[str, str], key: str, tmp_path: Path
) -> None:
    from msal_extensions import FilePersistence, PersistedTokenCache

    plain = tmp_path / "legacy" / "msal_token_cache.json"
    plain.parent.mkdir()
    legacy = idp.public_app(token_cache=PersistedTokenCache(FilePersistence(str(plain))))
    for user in USERS:
        sign_in(legacy, user)
    assert b"refresh_token" in plain.read_bytes().lower() or plain.stat().st_size > 0
    idp.reset()

    run = cli("migrate", "--from", str(plain), "--delete-source", "--json", env=file_env)
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["verified"] is True
    assert doc["source_deleted"] is True
    assert doc["accounts"] == list(USERS)
    assert not plain.exists()
    assert_no_secret(run, idp, key)

    secure = build_cache(backend="file", path=file_env["MSAL_KEYRING_CACHE_PATH"], key=key)
    app = idp.public_app(token_cache=secure)
    for account in app.get_accounts():
        assert "access_token" in app.acquire_token_silent(SCOPES, account=account)
    assert idp.token_requests == 0
    raw = Path(file_env["MSAL_KEYRING_CACHE_PATH"]).read_bytes()
    assert all(token.encode() not in raw for token in idp.issued)  # encrypted at rest


def test_migrate_refuses_non_cache(file_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    run = cli("migrate", "--from", str(bad), "--delete-source", env=file_env)
    assert_one_line_error(run, 1)
    assert bad.exists()
    missing = cli("migrate", "--from", str(tmp_path / "nope.json"), env=file_env)
    assert_one_line_error(missing, 1)


def test_export_and_import_round_trip(
    signed_in: dict[str, str], idp: LoopbackIdentityProvider, tmp_path: Path
) -> None:
    exported = cli("export", "--plaintext", env=signed_in)
    assert exported.code == 0, exported.err
    dump = json.loads(exported.out)
    assert len(dump["RefreshToken"]) == 2
    plain = tmp_path / "dump.json"
    plain.write_text(exported.out)
    other = {
        "MSAL_KEYRING_CACHE_BACKEND": "file",
        "MSAL_KEYRING_CACHE_PATH": str(tmp_path / "other" / "cache.bin"),
        "MSAL_KEYRING_CACHE_KEY": generate_key(),
    }
    run = cli("import", str(plain), "--json", env=other)
    assert run.code == 0, run.err
    assert run.json()["added_or_updated"] == sum(len(v) for v in dump.values())
    assert_no_secret(run, idp)
    again = cli("import", "-", "--json", env=other, stdin=exported.out)
    assert again.code == 0, again.err
    assert again.json()["added_or_updated"] == 0  # same entries: nothing to replace
    assert (
        cli("accounts", "--json", env=other).json()
        == cli("accounts", "--json", env=signed_in).json()
    )


def test_generate_key() -> None:
    run = cli("generate-key")
    assert run.code == 0
    assert crypto.is_fernet_key(run.out.strip())


# -- rotate-key ----------------------------------------------------------------------------------


@pytest.fixture
def key_file_env(idp: LoopbackIdentityProvider, tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / "keys" / "cache.key"
    key_file.parent.mkdir(mode=0o700)
    key_file.write_text(generate_key() + "\n")
    key_file.chmod(0o600)
    env = {
        "MSAL_KEYRING_CACHE_BACKEND": "file",
        "MSAL_KEYRING_CACHE_PATH": str(tmp_path / "cache" / "token_cache.bin"),
        "MSAL_KEYRING_CACHE_KEY_FILE": str(key_file),
    }
    cache = build_cache(backend="file", path=env["MSAL_KEYRING_CACHE_PATH"], key_file=str(key_file))
    app = idp.public_app(token_cache=cache)
    for user in USERS:
        sign_in(app, user)
    cache.close()
    return env


def _keys(env: dict[str, str]) -> tuple[str, ...]:
    return crypto.read_key_file(env["MSAL_KEYRING_CACHE_KEY_FILE"])


def _file_fp(env: dict[str, str]) -> str:
    header, _ = crypto.parse_header(Path(env["MSAL_KEYRING_CACHE_PATH"]).read_bytes())
    return header.fp


def test_rotate_key_file(key_file_env: dict[str, str], idp: LoopbackIdentityProvider) -> None:
    [old] = _keys(key_file_env)
    before = cli("export", "--plaintext", env=key_file_env).out
    run = cli("rotate-key", "--json", env=key_file_env)
    assert run.code == 0, run.err
    # The old key stays after the new one: another cache may use the same key file.
    new, kept = _keys(key_file_env)
    assert kept == old
    assert new != old
    assert run.json()["old_keys_kept"] is True
    assert "--drop-old" in run.json()["next"]
    assert run.json()["fingerprint"] == crypto.fingerprint(new) == _file_fp(key_file_env)
    assert old not in run.out + run.err
    assert new not in run.out + run.err
    assert_no_secret(run, idp)
    assert cli("export", "--plaintext", env=key_file_env).out == before
    assert oct(Path(key_file_env["MSAL_KEYRING_CACHE_KEY_FILE"]).stat().st_mode & 0o777) == "0o600"


def test_rotate_key_from_environment(signed_in: dict[str, str], key: str) -> None:
    new = generate_key()
    missing = cli("rotate-key", env=signed_in)
    assert_one_line_error(missing, 2)
    assert "MSAL_KEYRING_CACHE_NEW_KEY" in missing.err
    run = cli("rotate-key", env={**signed_in, "MSAL_KEYRING_CACHE_NEW_KEY": new})
    assert run.code == 0, run.err
    assert _file_fp(signed_in) == crypto.fingerprint(new)
    assert new not in run.out + run.err
    assert key not in run.out + run.err
    assert cli("accounts", "--json", env=signed_in).code == 1  # old key alone: refused
    rows = cli("accounts", "--json", env={**signed_in, "MSAL_KEYRING_CACHE_KEY": new})
    assert len(rows.json()["accounts"]) == 2


ROTATE_CHILD = """
import os, sys, time
from msal_keyring_cache import Settings, manage
wanted, fd = sys.argv[1], int(sys.argv[2])
def progress(step):
    if step == wanted:
        os.write(fd, step.encode() + b"\\n")
        time.sleep(600)  # the parent kills us here
manage.rotate_key(Settings.resolve(), progress=progress)
"""


def kill_rotation_at(step: str, env: dict[str, str]) -> int:
    """Run :func:`manage.rotate_key` in a child; SIGKILL it when it reports ``step``."""
    import signal

    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [PYTHON, "-c", ROTATE_CHILD, step, str(write_end)],
        env=child_env(**env),
        pass_fds=(write_end,),
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reported = pipe.readline().strip().decode()
        assert reported == step
        child.send_signal(signal.SIGKILL)
    return child.wait(timeout=60)


@pytest.mark.parametrize("step", ["keys-added", "reencrypted"])
def test_interrupted_rotate_key_loses_nothing(key_file_env: dict[str, str], step: str) -> None:
    [old] = _keys(key_file_env)
    before = cli("export", "--plaintext", env=key_file_env).out
    assert kill_rotation_at(step, key_file_env) == -9  # SIGKILL mid-way, from outside
    keys = _keys(key_file_env)
    assert len(keys) == 2
    assert keys[1] == old
    expected_fp = crypto.fingerprint(keys[0] if step == "reencrypted" else old)
    assert _file_fp(key_file_env) == expected_fp
    assert cli("export", "--plaintext", env=key_file_env).out == before  # nothing lost
    again = cli("rotate-key", "--drop-old", env=key_file_env)
    assert again.code == 0, again.err
    assert len(_keys(key_file_env)) == 1
    assert cli("export", "--plaintext", env=key_file_env).out == before


def test_rotate_key_drop_old(key_file_env: dict[str, str]) -> None:
    [old] = _keys(key_file_env)
    run = cli("rotate-key", "--drop-old", env=key_file_env)
    assert run.code == 0, run.err
    [new] = _keys(key_file_env)
    assert new != old
    assert "holds only the new key" in run.out


def test_no_crash_hook_in_production_code() -> None:
    import msal_keyring_cache

    root = Path(msal_keyring_cache.__file__).parent
    for source in root.rglob("*.py"):
        text = source.read_text()
        assert "os.kill(" not in text, source
        assert "CRASH_AFTER" not in text, source


def test_rotate_key_refuses_a_passphrase_without_the_new_one(tmp_path: Path) -> None:
    env = {
        "MSAL_KEYRING_CACHE_BACKEND": "file",
        "MSAL_KEYRING_CACHE_PATH": str(tmp_path / "c.bin"),
        "MSAL_KEYRING_CACHE_PASSPHRASE": "old passphrase",
    }
    run = cli("rotate-key", env=env)
    assert_one_line_error(run, 2)
    assert "NEW_PASSPHRASE" in run.err
    assert "old passphrase" not in run.err
    ok = cli("rotate-key", env={**env, "MSAL_KEYRING_CACHE_NEW_PASSPHRASE": "new one"})
    assert ok.code == 0, ok.err


# -- move ----------------------------------------------------------------------------------------


def test_move_to_the_same_store_is_refused(signed_in: dict[str, str]) -> None:
    run = cli("move", "--to", "file", env=signed_in)
    assert_one_line_error(run, 1)
    assert len(cli("accounts", "--json", env=signed_in).json()["accounts"]) == 2


# -- demo ------------------------------------------------------------------------------------------


def test_demo_with_a_fresh_empty_home(tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MSAL_KEYRING_CACHE_", "XDG_", "DBUS_"))
    }
    env.update(HOME=str(home), PYTHONPATH=child_env()["PYTHONPATH"])
    proc = subprocess.run(
        [PYTHON, "-m", "msal_keyring_cache", "demo", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True
    assert doc["child"]["token_requests"] == 0
    assert doc["child"]["token_source"] == "cache"
    assert doc["child"]["same_token"] is True
    assert doc["child"]["pid"] != os.getpid()
    assert doc["sign_in_token_requests"] == 1
    assert doc["backend"] in {"file", "keyring"}
    assert not os.path.exists(str(doc["location"]))  # cleaned up
    assert list(home.iterdir()) == []  # nothing of the user's touched
    assert "Traceback" not in proc.stderr


def test_demo_text(tmp_path: Path) -> None:
    run = cli("demo")
    assert run.code == 0, run.err
    assert "Token-endpoint requests by the second process: 0." in run.out
    assert "OpenID discovery" in run.out
    assert "access_token" not in run.out


# -- read-only looks (issue 16) ------------------------------------------------------------


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to prove nothing moved or was created)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("command", ["status", "accounts", "doctor", "export"])
@pytest.mark.parametrize(
    "content",
    [
        b"garbage that is not ours",
        b'{"AccessToken": {}, "RefreshToken": {"k": {"secret": "rt"}}, "Account": {}}',
        b'{"format":"msal-keyring-cache","version":1,"kdf":"none","fp":"x","gen":"y"}\ntrunc',
    ],
    ids=["garbage", "plaintext-msal", "truncated"],
)
def test_looking_at_a_damaged_cache_changes_nothing(
    file_env: dict[str, str], tmp_path: Path, command: str, content: bytes
) -> None:
    path = Path(file_env["MSAL_KEYRING_CACHE_PATH"])
    path.parent.mkdir(mode=0o700)
    path.write_bytes(content)
    path.chmod(0o600)
    before = tree(tmp_path)
    args = [command, "--plaintext"] if command == "export" else [command, "--json"]
    run = cli(*args, env=file_env)
    assert run.code == 1, (run.out, run.err)
    assert tree(tmp_path) == before  # nothing moved aside, rewritten or created
    if command == "export":
        assert run.out == ""
        if b"RefreshToken" in content:
            assert "migrate --from" in run.err  # says what to do
    else:
        doc = run.json()  # exactly one JSON document, also on error
        problem = doc.get("problem") or " ".join(
            c["detail"] + c["fix"] for c in doc.get("checks", []) if c["status"] == "fail"
        )
        assert problem
        if b"RefreshToken" in content:
            text = json.dumps(doc)
            assert "migrate --from" in text
            assert '"rt"' not in text


def test_status_with_no_key_creates_no_key(tmp_path: Path) -> None:
    home = Path(os.environ["HOME"])
    before = tree(home)
    env = {"MSAL_KEYRING_CACHE_BACKEND": "file"}
    run = cli("status", "--json", env=env)
    assert run.code == 0, run.err
    assert run.json()["problem"] is None
    assert tree(home) == before  # no key file, no directory, no lock
    assert "generated key file" in run.json()["protection"]
    # A cache whose generated key was lost: reported, and no new key is made.
    data = home / ".local" / "share" / "msal-keyring-cache"
    assert cli("clear", "--yes", env=env).code == 0
    from msal_keyring_cache import build_cache as build

    cache = build(backend="file", path=str(data / "token_cache.bin"))
    cache.deserialize('{"Account": {}}')
    cache.close()
    key_file = home / ".config" / "msal-keyring-cache" / "cache.key"
    key_file.unlink()
    before = tree(home)
    lost = cli("status", "--json", env=env)
    assert lost.code == 1
    assert "does not exist" in lost.json()["problem"]
    assert tree(home) == before
    assert not key_file.exists()


def test_doctor_runs_every_check_when_the_path_is_a_directory(
    file_env: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "a-directory"
    target.mkdir()
    env = {**file_env, "MSAL_KEYRING_CACHE_PATH": str(target)}
    run = cli("doctor", "--json", env=env)
    assert run.code == 1
    checks = run.json()["checks"]
    names = [c["name"] for c in checks]
    assert f"cache file {target}" in names
    assert {"backend", "protection", "lock", "decrypt"} <= set(names) or "backend" in names
    assert len(checks) >= 5
    [bad] = [c for c in checks if c["name"] == f"cache file {target}"]
    assert bad["status"] == "fail"
    assert "directory" in bad["detail"]
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("command", ["status", "accounts", "doctor", "export"])
def test_looking_at_a_fifo_never_blocks(file_env: dict[str, str], command: str) -> None:
    path = Path(file_env["MSAL_KEYRING_CACHE_PATH"])
    path.parent.mkdir(mode=0o700)
    os.mkfifo(path)
    args = [command, "--plaintext"] if command == "export" else [command, "--json"]
    run = cli(*args, env=file_env)  # returns (cli() has a timeout), does not hang
    assert run.code == 1
    assert "not a regular file" in (run.out + run.err)


def test_a_path_with_a_trailing_slash_is_refused(tmp_path: Path) -> None:
    run = cli("status", "--path", str(tmp_path / "newdir") + "/")
    assert_one_line_error(run, 2)
    assert "directory" in run.err
    assert not (tmp_path / "newdir").exists()


def test_a_mistyped_variable_is_named_with_the_closest_one(signed_in: dict[str, str]) -> None:
    run = cli("status", env={**signed_in, "MSAL_KEYRING_CACHE_BAKEND": "file"})
    assert run.code == 0, run.err
    warnings_ = [line for line in run.err.splitlines() if "BAKEND" in line]
    assert len(warnings_) == 1
    assert "MSAL_KEYRING_CACHE_BACKEND" in warnings_[0]


def test_the_weak_key_warning_comes_once_per_key_file() -> None:
    env = {"MSAL_KEYRING_CACHE_BACKEND": "file"}
    first = cli("import", "--from", "-", env=env, stdin=SAMPLE_CACHE)
    assert first.code == 0, first.err
    assert first.err.count("made the generated key file") == 1
    again = cli("import", "--from", "-", env=env, stdin=SAMPLE_CACHE)
    assert again.code == 0, again.err
    assert "key file" not in again.err
    assert "weak" in cli("status", env=env).out  # status still says so


def test_export_output_is_private(signed_in: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "dump.json"
    run = cli("export", "--plaintext", "--output", str(out), env=signed_in)
    assert run.code == 0, run.err
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert len(json.loads(out.read_text())["RefreshToken"]) == 2
    assert run.out == ""
    # stdout redirected to a file: a warning
    with open(tmp_path / "redirected.json", "w") as fh:
        proc = subprocess.run(
            [*COMMAND, "export", "--plaintext"],
            stdout=fh,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(**signed_in),
            timeout=60,
            check=False,
        )
    assert proc.returncode == 0
    assert "--output" in proc.stderr


def test_subcommand_help_is_short_and_points_to_settings() -> None:
    for command in ("status", "generate-key", "rotate-key"):
        run = cli(command, "--help")
        assert run.code == 0
        assert "--app-name" not in run.out
        assert "msal-keyring-cache settings" in run.out
        assert len(run.out.splitlines()) < 30
    listed = cli("settings")
    assert listed.code == 0
    assert "--app-name" in listed.out
    assert "MSAL_KEYRING_CACHE_KEY " in listed.out or "MSAL_KEYRING_CACHE_KEY\n" in listed.out
    doc = cli("settings", "--json").json()
    assert {r["name"] for r in doc["settings"]} >= {"app_name", "backend", "key", "lock_timeout"}


def test_import_takes_from_like_migrate(signed_in: dict[str, str], tmp_path: Path) -> None:
    dump = cli("export", "--plaintext", env=signed_in).out
    plain = tmp_path / "dump.json"
    plain.write_text(dump)
    for args in (["--from", str(plain)], [str(plain)]):
        env = {
            "MSAL_KEYRING_CACHE_BACKEND": "file",
            "MSAL_KEYRING_CACHE_PATH": str(tmp_path / f"c{len(args)}.bin"),
            "MSAL_KEYRING_CACHE_KEY": generate_key(),
        }
        run = cli("import", *args, "--json", env=env)
        assert run.code == 0, run.err
        assert run.json()["entries"] > 0
    missing = cli("import", "--json")
    assert missing.code == 2
    assert missing.json()["ok"] is False


@pytest.mark.parametrize(
    "args",
    [
        ["accounts", "--json"],
        ["status", "--json"],
        ["doctor", "--json"],
        ["clear", "--account", "x", "--yes", "--json"],
        ["move", "--to", "keyring", "--json"],
        ["rotate-key", "--json"],
        ["status", "--json", "--lock-timeout", "0"],
        ["status", "--json", "--bogus"],
    ],
)
def test_every_json_command_prints_one_document_on_error(
    args: list[str], file_env: dict[str, str]
) -> None:
    env = {**file_env, "MSAL_KEYRING_CACHE_KEY": generate_key()}
    path = Path(file_env["MSAL_KEYRING_CACHE_PATH"])
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b"not ours")
    env["MSAL_KEYRING_CACHE_KEYRING_TIMEOUT"] = "1"
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    run = cli(*args, env=env)
    assert run.code != 0
    doc = json.loads(run.out)  # one document, nothing else on stdout
    assert isinstance(doc, dict)


def test_verbose_shows_what_the_cache_did(
    signed_in: dict[str, str], idp: LoopbackIdentityProvider, key: str
) -> None:
    run = cli("-v", "accounts", env=signed_in)
    assert run.code == 0, run.err
    assert "backend=file was configured" in run.err
    assert "Read" in run.err
    assert_no_secret(run, idp, key)
    write = cli("-v", "clear", "--account", USERS[1], "--yes", env=signed_in)
    assert write.code == 0, write.err
    assert "Got the lock" in write.err  # lock waits
    assert "writes" in write.err  # what the store did
    assert_no_secret(write, idp, key)


# -- refused deletes (issue 10) --------------------------------------------------------------


@pytest.fixture
def fake_keyring(tmp_path: Path) -> dict[str, str]:
    return {
        "PYTHON_KEYRING_BACKEND": "tests.fake_keyring.FileKeyring",
        "FAKE_KEYRING_FILE": str(tmp_path / "keyring.json"),
        "MSAL_KEYRING_CACHE_PATH": str(tmp_path / "data" / "token_cache.bin"),
        "MSAL_KEYRING_CACHE_KEY": generate_key(),
    }


def _fill(env: dict[str, str]) -> None:
    run = cli("import", "--from", "-", env=env, stdin=SAMPLE_CACHE)
    assert run.code == 0, run.err


SAMPLE_CACHE = json.dumps(
    {
        "Account": {
            "h-e-r": {
                "home_account_id": "h",
                "environment": "e",
                "realm": "r",
                "username": "carol@example.com",
                "local_account_id": "l",
                "authority_type": "MSSTS",
            }
        },
        "RefreshToken": {
            "h-e-refreshtoken-c--": {
                "home_account_id": "h",
                "environment": "e",
                "credential_type": "RefreshToken",
                "client_id": "c",
                "secret": "sample-refresh-token",
            }
        },
    }
)


def test_a_refused_delete_is_never_reported_as_a_sign_out(fake_keyring: dict[str, str]) -> None:
    env = {**fake_keyring, "MSAL_KEYRING_CACHE_BACKEND": "keyring"}
    _fill(env)
    refused = {**env, "FAKE_KEYRING_REFUSE_DELETE": "1"}
    run = cli("clear", "--yes", env=refused)
    assert_one_line_error(run, 1)
    assert "Nobody was signed out" in run.err
    assert "sample-refresh-token" not in run.err
    assert cli("accounts", "--json", env=env).json()["accounts"][0]["username"] == (
        "carol@example.com"
    )
    moved = cli("move", "--to", "file", env=refused)
    assert_one_line_error(moved, 1)
    assert "delete" in moved.err
    # Without the refusal, clear works and says so.
    done = cli("clear", "--yes", env=env)
    assert done.code == 0, done.err
    assert "signed out" in done.out


def test_after_move_status_shows_where_the_tokens_are(fake_keyring: dict[str, str]) -> None:
    env = dict(fake_keyring)  # backend auto: the fake keyring answers
    _fill(env)
    assert cli("status", "--json", env=env).json()["backend"] == "keyring"
    moved = cli("move", "--to", "file", env=env)
    assert moved.code == 0, moved.err
    status = cli("status", "--json", env=env).json()
    assert status["backend"] == "file"
    assert status["accounts"] == ["carol@example.com"]
    assert "configured" not in status["reason"]
    back = cli("move", "--to", "keyring", env=env)
    assert back.code == 0, back.err
    status = cli("status", "--json", env=env).json()
    assert status["backend"] == "keyring"
    assert status["accounts"] == ["carol@example.com"]


def test_demo_explains_the_protection_in_plain_words() -> None:
    run = cli("demo", env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
    assert run.code == 0, run.err
    assert "keyring.backends" not in run.out
    protection = next(line for line in run.out.splitlines() if "Protection:" in line)
    assert "weak" in protection
    assert "MSAL_KEYRING_CACHE_KEY" in protection


@pytest.fixture
def read_only_fs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs the test mounts (root only), remounted read-only by the test."""
    with mounted_tmpfs(tmp_path / "mnt", "2m") as mount:
        yield mount


def test_doctor_and_status_on_a_read_only_file_system(
    read_only_fs: Path, idp: LoopbackIdentityProvider, key: str
) -> None:
    env = {
        "MSAL_KEYRING_CACHE_BACKEND": "file",
        "MSAL_KEYRING_CACHE_PATH": str(read_only_fs / "data" / "token_cache.bin"),
        "MSAL_KEYRING_CACHE_KEY": key,
    }
    cache = build_cache(backend="file", path=env["MSAL_KEYRING_CACHE_PATH"], key=key)
    sign_in(idp.public_app(token_cache=cache), USERS[0])
    cache.close()
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_fs)], check=True)
    status = cli("status", "--json", env=env)
    assert status.code == 0, status.err  # reading keeps working
    assert status.json()["accounts"] == [USERS[0]]
    run = cli("doctor", "--json", env=env)
    checks = {c["name"]: c for c in run.json()["checks"]}
    directory = checks[f"directory {read_only_fs / 'data'}"]
    assert directory["status"] == "warn"
    assert "read-only file system" in directory["detail"]
    assert checks["decrypt"]["status"] == "ok"  # every other check still ran
    assert {"backend", "protection", "lock"} <= set(checks)
    assert run.code == 0, run.out
