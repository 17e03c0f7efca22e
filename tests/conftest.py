"""Shared fixtures. Daemon fixtures live in their own plugin modules (listed below)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from msal_keyring_cache import factory, generate_key
from msal_keyring_cache.testing import LoopbackIdentityProvider
from tests.helpers import IN_CI, PYTHON, ROOT, child_env, require, require_tool

__all__ = ["IN_CI", "PYTHON", "ROOT", "child_env", "require", "require_tool"]  # old import path

pytest_plugins = [
    "tests.services_secret_service",
    "tests.services_redis",
    "tests.services_postgres",
    "tests.services_web",
]


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
    # "Token cache backend: …" is logged once per process and choice; each test starts
    # unlogged, so a test of that message does not depend on which tests ran before it.
    monkeypatch.setattr(factory, "_logged", set())


@pytest.fixture(scope="session")
def idp() -> Iterator[LoopbackIdentityProvider]:
    """A loopback identity provider shared by the session (call ``idp.reset()`` as needed)."""
    with LoopbackIdentityProvider() as provider:
        yield provider
