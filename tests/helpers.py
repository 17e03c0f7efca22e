"""Helpers shared by the tests (import from here, never from conftest)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def require(condition: bool, why: str) -> None:
    """Skip when a real daemon or tool is missing — but fail under CI=true."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {why}: .ci/run must install it", pytrace=False)
    pytest.skip(why)


def require_tool(*names: str) -> None:
    """Skip (fail under CI=true) unless every named program is on PATH."""
    for name in names:
        require(shutil.which(name) is not None, f"{name} is not installed")


def require_module(*names: str) -> None:
    """Skip (fail under CI=true) unless every named package is importable."""
    for name in names:
        require(importlib.util.find_spec(name) is not None, f"the {name} package is not installed")


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python process that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def file_env(
    path: Path, key: str, lock_timeout: Optional[float] = 60, **extra: str
) -> dict[str, str]:
    """:func:`child_env` for a child using the encrypted file ``path`` under ``key``
    (``lock_timeout=None``: the library's default lock wait, no variable set)."""
    env = {
        "MSAL_KEYRING_CACHE_BACKEND": "file",
        "MSAL_KEYRING_CACHE_PATH": str(path),
        "MSAL_KEYRING_CACHE_KEY": key,
    }
    if lock_timeout is not None:
        env["MSAL_KEYRING_CACHE_LOCK_TIMEOUT"] = str(lock_timeout)
    return child_env(**env, **extra)


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str = "1m") -> Iterator[Path]:
    """A small tmpfs mounted at ``directory`` for a fault test (root only; fails under CI=true
    when it cannot be mounted), unmounted after."""
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    require(done.returncode == 0, "cannot mount a tmpfs (needs root)")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def journal_records(path: Path, key: str) -> list[dict[str, Any]]:
    """The journal records of an encrypted cache file, decrypted: one per physical append."""
    import json

    from msal_keyring_cache import crypto

    blob = path.read_bytes()
    header, token = crypto.parse_header(blob)
    file_key = crypto.file_key(header, crypto.FernetKeys((key,)))
    start = blob.find(b"\n") + 1 + len(token) + 1
    records, _ = crypto.split_records(blob, start, header.version)
    return [json.loads(crypto.unseal(r, file_key, header, seq)) for seq, r in enumerate(records, 1)]


def open_descriptors(path: Path) -> int:
    """Descriptors of this process open on ``path`` (the kernel's view; other tests'
    objects opening or closing their own files meanwhile do not count)."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve())
        except OSError:
            continue  # closed while we looked
    return found
