"""Shared fixtures. Daemon fixtures live in their own plugin modules (listed below)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from msal_keyring_cache import generate_key
from msal_keyring_cache.testing import LoopbackIdentityProvider

pytest_plugins = [
    "tests.services_secret_service",
    "tests.services_redis",
    "tests.services_postgres",
    "tests.services_web",
]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ROOT = Path(__file__).resolve().parent.parent


def require(condition: bool, why: str) -> None:
    """Skip when a real daemon or tool is missing — but fail under CI=true."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {why}: .ci/run must install it", pytrace=False)
    pytest.skip(why)


def require_tool(*names: str) -> None:
    for name in names:
        require(shutil.which(name) is not None, f"{name} is not installed")


@pytest.fixture
def key() -> str:
    return generate_key()


@pytest.fixture
def cache_path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "token_cache.bin"


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never touch the developer's real caches, keys or keyring config."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    for name in list(os.environ):
        if name.startswith("MSAL_KEYRING_CACHE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def idp() -> Iterator[LoopbackIdentityProvider]:
    """A loopback identity provider shared by the session (call ``idp.reset()`` as needed)."""
    with LoopbackIdentityProvider() as provider:
        yield provider


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python process that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


PYTHON = sys.executable
