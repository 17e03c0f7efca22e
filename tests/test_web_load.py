"""A small run of bench/web_load.py per store, so CI exercises the load test: worker
processes, real servers, every update checked (0 lost)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.helpers import PYTHON, ROOT, child_env

pytestmark = pytest.mark.slow


def test_web_load_small(web_store: Any) -> None:
    script = str(ROOT / "bench" / "web_load.py")
    args = [PYTHON, script, "--store", web_store.name, "--url", web_store.url, "--users", "30",
            "--requests", "6", "--workers", "2", "--threads", "3", "--max-seconds", "120",
            "--json"]  # fmt: skip
    done = subprocess.run(args, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["completed"] == 180
    assert figures["errors"] == 0
    assert figures["lost_updates"] == 0
    assert figures["workers"] == 2
    assert figures["requests_per_s"] > 0
    if web_store.name == "postgresql":  # counted by the server: a load and a save each
        assert 1.5 <= figures["transactions_per_request"] <= 3.0
        assert figures["wal_kb_per_save"] > 0
