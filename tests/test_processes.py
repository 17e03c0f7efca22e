"""Real separate processes sharing one encrypted file cache: reuse, contention, crashes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from msal_keyring_cache import build_cache
from msal_keyring_cache.testing import LoopbackIdentityProvider
from tests.helpers import PYTHON, ROOT, file_env

APP = "msal-keyring-cache-tests"


def _env(path: Path, key: str) -> dict[str, str]:
    return file_env(path, key, 120)


def _child(idp: LoopbackIdentityProvider, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "tests.child", str(idp.port), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _access_token_targets(path: Path, key: str) -> set[str]:
    cache = build_cache(APP, backend="file", path=str(path), key=key)
    data = json.loads(cache.serialize())
    return {entry["target"] for entry in data.get("AccessToken", {}).values()}


def test_second_process_is_served_silently(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    cache = build_cache(APP, backend="file", path=str(cache_path), key=key)
    app = idp.public_app(token_cache=cache)
    result = app.acquire_token_by_username_password("alice@example.com", "pw", ["User.Read"])
    assert "access_token" in result
    idp.reset()

    child = _child(idp, _env(cache_path, key), "silent", "alice@example.com")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert json.loads(out) == {"source": "cache", "backend": "file"}
    assert idp.token_requests == 0


@pytest.mark.slow
def test_many_processes_lose_nothing(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    processes, per_process = 16, 20
    idp.reset()
    env = _env(cache_path, key)
    children = [
        _child(idp, env, "cc", str(i * per_process), str(per_process)) for i in range(processes)
    ]
    outputs = [c.communicate(timeout=300) for c in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err
        assert "ERROR" not in out
    expected = {f"api://t/s{i}/.default" for i in range(processes * per_process)}
    assert _access_token_targets(cache_path, key) == expected
    assert idp.token_requests == processes * per_process


@pytest.mark.slow
def test_128_processes_with_the_default_lock_timeout_lose_nothing(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str
) -> None:
    """Issue 12: 128 processes × 2 misses (each a write) into one file cache, default timeout."""
    processes, each = 128, 2
    build_cache(APP, backend="file", path=str(cache_path), key=key).deserialize("{}")  # exists
    idp.reset()
    env = file_env(cache_path, key, None)  # the library's default lock timeout
    done = subprocess.run(
        [PYTHON, "-m", "tests.lock_worker", "cc", str(idp.port), str(processes), str(each)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["crashes"] == []
    assert (out["errors"], out["kinds"]) == (0, [])
    expected = {f"api://t/p{i}/s{j}/.default" for i in range(processes) for j in range(each)}
    assert set(out["stored"]) == expected  # every acquisition returned a token …
    assert _access_token_targets(cache_path, key) == expected  # … and every one is stored
    assert idp.token_requests == processes * each
