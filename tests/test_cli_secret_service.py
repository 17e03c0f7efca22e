"""The command against a real Secret Service (gnome-keyring on a private D-Bus)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from msal_keyring_cache import build_cache, generate_key
from msal_keyring_cache.testing import LoopbackIdentityProvider

from .test_cli import USERS, assert_no_secret, cli, sign_in

pytestmark = [pytest.mark.secret_service, pytest.mark.usefixtures("use_secret_service")]


@pytest.fixture
def keyring_env(tmp_path: Path, idp: LoopbackIdentityProvider) -> dict[str, str]:
    """A cache of two users in the Secret Service, under an app name of its own."""
    env = {
        "MSAL_KEYRING_CACHE_APP_NAME": f"cli-test-{secrets.token_hex(4)}",
        "MSAL_KEYRING_CACHE_BACKEND": "keyring",
        "MSAL_KEYRING_CACHE_PATH": str(tmp_path / "data" / "token_cache.bin"),
    }
    cache = build_cache(
        env["MSAL_KEYRING_CACHE_APP_NAME"], backend="keyring", path=env["MSAL_KEYRING_CACHE_PATH"]
    )
    app = idp.public_app(token_cache=cache)
    for user in USERS:
        sign_in(app, user)
    cache.close()
    idp.reset()
    return env


def test_status_in_secret_service(
    keyring_env: dict[str, str], idp: LoopbackIdentityProvider
) -> None:
    run = cli("status", "--json", env=keyring_env)
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["backend"] == "keyring"
    assert doc["store"]["keyring_backend"] == "keyring.backends.SecretService.Keyring"
    assert doc["store"]["service"] == keyring_env["MSAL_KEYRING_CACHE_APP_NAME"]
    assert doc["protection"].startswith("OS credential store (Secret Service")
    assert doc["counts"]["RefreshToken"] == 2
    assert doc["accounts"] == list(USERS)
    assert doc["size"] > 0
    assert doc["last_write"]
    assert_no_secret(run, idp)
    text = cli("status", env=keyring_env)
    assert "keyring backend:" in text.out
    assert_no_secret(text, idp)


def test_doctor_in_secret_service(
    keyring_env: dict[str, str], idp: LoopbackIdentityProvider
) -> None:
    run = cli("doctor", "--json", env=keyring_env)
    assert run.code == 0, run.out
    checks = {c["name"]: c for c in run.json()["checks"]}
    assert checks["D-Bus"]["status"] == "ok"
    assert checks["credential store"]["status"] == "ok"
    assert "SecretService" in checks["credential store"]["detail"]
    assert checks["probe round trip"]["status"] == "ok"
    assert checks["read"]["status"] == "ok"
    assert_no_secret(run, idp)


def test_doctor_fails_on_a_locked_keyring(keyring_env: dict[str, str], use_secret_service) -> None:  # type: ignore[no-untyped-def]
    use_secret_service.lock()
    run = cli("doctor", "--json", "--keyring-timeout", "5", env=keyring_env)
    assert run.code == 1
    failed = [c for c in run.json()["checks"] if c["status"] == "fail"]
    assert failed
    assert all(c["fix"] for c in failed)


def test_move_between_file_and_secret_service(
    tmp_path: Path,
    idp: LoopbackIdentityProvider,
    use_secret_service,  # type: ignore[no-untyped-def]
) -> None:
    key = generate_key()
    env = {
        "MSAL_KEYRING_CACHE_APP_NAME": f"cli-move-{secrets.token_hex(4)}",
        "MSAL_KEYRING_CACHE_BACKEND": "file",
        "MSAL_KEYRING_CACHE_PATH": str(tmp_path / "data" / "token_cache.bin"),
        "MSAL_KEYRING_CACHE_KEY": key,
    }
    cache = build_cache(
        env["MSAL_KEYRING_CACHE_APP_NAME"],
        backend="file",
        path=env["MSAL_KEYRING_CACHE_PATH"],
        key=key,
    )
    app = idp.public_app(token_cache=cache)
    for user in USERS:
        sign_in(app, user)
    cache.close()
    before = cli("accounts", "--json", env=env).json()

    moved = cli("move", "--to", "keyring", "--json", env=env)
    assert moved.code == 0, moved.err
    assert moved.json()["to"] == "keyring"
    assert moved.json()["entries"] > 0
    assert_no_secret(moved, idp, key)
    assert not Path(env["MSAL_KEYRING_CACHE_PATH"]).exists()  # source cleared
    in_keyring = {**env, "MSAL_KEYRING_CACHE_BACKEND": "keyring"}
    assert cli("accounts", "--json", env=in_keyring).json() == before
    service = env["MSAL_KEYRING_CACHE_APP_NAME"]
    assert any(a.get("service") == service for a, _ in use_secret_service.items())

    back = cli("move", "--to", "file", env=in_keyring)
    assert back.code == 0, back.err
    assert cli("accounts", "--json", env=env).json() == before
    assert cli("accounts", "--json", env=in_keyring).json() == {"accounts": []}


def test_demo_uses_the_secret_service_and_cleans_up(use_secret_service) -> None:  # type: ignore[no-untyped-def]
    run = cli("demo", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["backend"] == "keyring"
    assert doc["child"]["token_requests"] == 0
    assert doc["child"]["same_token"] is True
    demo_items = [
        a
        for a, _ in use_secret_service.items()
        if a.get("service", "").startswith("msal-keyring-cache-demo-")
    ]
    assert demo_items == []
