"""Helpers shared by the tests (import from here, never from conftest)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

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


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python process that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env
