"""Consecutive writes to one large cache: ``python bench/big_cache.py [TOKENS [MISSES]]``.

One process seeds an encrypted file cache with TOKENS client-credential access tokens
(as ``bench/run.py``'s scale cells do), then makes MISSES client-credential misses through
msal against the loopback identity provider (each a write), and prints the time per miss
(mean, p50, p99, max) and how many writes rewrote the whole file (compactions). It does
that twice per round, alternating, for three rounds: with the file store's compaction rule
as it is, and with the fixed 64-record cap it had before 0.2.0 (``RECORD_SHARE`` made
huge), so the two can be compared on the same machine in the same minute.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import run as bench_run  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from forking import percentile  # noqa: E402

from msal_keyring_cache import build_cache  # noqa: E402
from msal_keyring_cache.stores import file as file_store  # noqa: E402
from msal_keyring_cache.testing import LoopbackIdentityProvider  # noqa: E402


def misses(idp: LoopbackIdentityProvider, seed: str, count: int, rule: str) -> str:
    """``count`` misses on a cache seeded with ``seed``; one line of figures."""
    share = file_store.RECORD_SHARE
    if rule == "fixed 64":
        file_store.RECORD_SHARE = 1 << 62
    directory = tempfile.mkdtemp()
    try:
        path = os.path.join(directory, "cache.bin")
        cache = build_cache("big", backend="file", path=path, key=Fernet.generate_key().decode())
        cache.deserialize(seed)
        app = idp.confidential_app(token_cache=cache)
        app.acquire_token_for_client(["api://big/warm-up/.default"])
        stats = cache.store.stats
        rewrites = stats.saves - stats.appends
        times = []
        for i in range(count):
            start = time.perf_counter()
            app.acquire_token_for_client([f"api://big/{i}/.default"])
            times.append((time.perf_counter() - start) * 1e3)
        rewrites = stats.saves - stats.appends - rewrites
        size = os.path.getsize(path) / 1e6
        cache.close()
    finally:
        file_store.RECORD_SHARE = share
        shutil.rmtree(directory, ignore_errors=True)
    return (
        f"{rule:>10}: mean {statistics.mean(times):6.2f} ms, p50 {percentile(times, 0.5):5.2f}, "
        f"p99 {percentile(times, 0.99):6.2f}, max {max(times):6.1f}; "
        f"whole-file rewrites {rewrites}; file {size:.1f} MB"
    )


def main(argv: list[str]) -> int:
    tokens = int(argv[0]) if argv else 10_000
    count = int(argv[1]) if len(argv) > 1 else 400
    with LoopbackIdentityProvider() as idp:
        seed = bench_run._seed_state(idp, tokens)
        print(f"{tokens} tokens, {count} misses each, 3 alternating rounds", flush=True)
        for round_no in range(3):
            rules = ["as is", "fixed 64"]
            for rule in rules if round_no % 2 == 0 else rules[::-1]:
                print(misses(idp, seed, count, rule), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
