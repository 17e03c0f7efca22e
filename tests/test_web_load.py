"""A small run of bench/web_load.py, so CI exercises the load test (real Redis, loopback)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.helpers import PYTHON, ROOT, child_env

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_web_load_small(redis_backend: Any) -> None:
    script = str(ROOT / "bench" / "web_load.py")
    args = [PYTHON, script, "--url", redis_backend.url, "--users", "40", "--requests", "10",
            "--threads", "16", "--max-seconds", "120", "--json"]  # fmt: skip
    if redis_backend.cluster:
        args.append("--cluster")
    done = subprocess.run(args, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["completed"] == 400
    assert figures["errors"] == 0
    assert figures["lost_updates"] == 0
    assert figures["requests_per_s"] > 0
