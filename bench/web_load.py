"""Load test of per-user web caches on a real Redis: many users, many requests, many threads.

Each request is ``with caches.for_user(user) as cache: cache.add(<a token response>)``,
adding one access token with its own scope (real msal ``add``, realistic token sizes).
At the end every user must hold exactly one access token per request: anything less
is a lost update. Reports requests/s and p50/p99 of load+save (the time spent in
``for_user`` entering and leaving, not in the request body).

    python bench/web_load.py                         # 1,000 users x 20 requests, 16 threads
    python bench/web_load.py --cluster               # the same on a 3-node Redis Cluster
    python bench/web_load.py --url redis://host:6379/0 --users 100 --requests 5 --json

Without ``--url`` it starts a private redis-server (or cluster) on loopback and stops it
after. Bounded: ``--max-seconds`` stops issuing requests (exit code 2 when reached).
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msal  # noqa: E402

from msal_keyring_cache import generate_key  # noqa: E402
from msal_keyring_cache.web import UserCaches  # noqa: E402

CLIENT_ID = "00000000-0000-0000-0000-00000000c11d"
ENDPOINT = "https://127.0.0.1/bench-tenant/oauth2/v2.0/token"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def token_event(user: int, request: int) -> dict[str, Any]:
    """A token response as msal's ``cache.add`` receives it (sizes like Entra's)."""
    return {
        "client_id": CLIENT_ID,
        "scope": [f"api://bench/r{request}"],
        "token_endpoint": ENDPOINT,
        "response": {
            "token_type": "Bearer",
            "expires_in": 3600,
            "access_token": "at." + secrets.token_urlsafe(1100),
            "refresh_token": "rt." + secrets.token_urlsafe(750),
            "client_info": _b64({"uid": f"user-{user}", "utid": "bench-tenant"}),
        },
        "data": {},
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(caches: UserCaches, users: int, requests: int, threads: int,
        max_seconds: float, seed: int = 1) -> dict[str, Any]:  # fmt: skip
    """Run the load; return the figures (and verify that no update was lost)."""
    tasks: list[tuple[int, int]] = [(u, r) for r in range(requests) for u in range(users)]
    random.Random(seed).shuffle(tasks)
    work: queue.Queue[tuple[int, int]] = queue.Queue()
    for task in tasks:
        work.put(task)
    timings: list[float] = []
    done = [0] * users
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            try:
                user, request = work.get_nowait()
            except queue.Empty:
                return
            event = token_event(user, request)
            try:
                start = time.perf_counter()
                context = caches.for_user(f"user-{user}")
                cache = context.__enter__()
                loaded = time.perf_counter()
                cache.add(event)
                body_done = time.perf_counter()
                context.__exit__(None, None, None)
                end = time.perf_counter()
            except Exception as exc:  # counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                timings.append((loaded - start) + (end - body_done))
                done[user] += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started

    lost = 0
    for user in range(users):
        with caches.for_user(f"user-{user}") as cache:
            kept = len(list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)))
        lost += max(0, done[user] - kept)
    completed = sum(done)
    return {
        "users": users,
        "requests_per_user": requests,
        "threads": threads,
        "completed": completed,
        "planned": len(tasks),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(completed / elapsed, 1) if elapsed else 0.0,
        "load_save_p50_ms": round(percentile(timings, 0.50) * 1000, 2),
        "load_save_p99_ms": round(percentile(timings, 0.99) * 1000, 2),
        "load_save_mean_ms": round(statistics.fmean(timings) * 1000, 2) if timings else 0.0,
        "conflicts_merged": caches.stats.conflicts,
        "lost_updates": lost,
        "stopped_early": completed + len(errors) < len(tasks),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="Redis URL (default: start a private server on loopback)")
    parser.add_argument("--cluster", action="store_true", help="Redis Cluster (3 nodes)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20, help="requests per user")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    service: Any = None
    url = args.url
    if url is None:
        from tests.services_redis import RedisClusterServers, RedisServer

        workdir = Path(tempfile.mkdtemp(prefix="web-load-"))
        service = (RedisClusterServers(workdir) if args.cluster else RedisServer(workdir)).start()
        url = service.url
    try:
        prefix = "bench-" + secrets.token_hex(4)
        caches = UserCaches.from_url(url, key=generate_key(), prefix=prefix, cluster=args.cluster,
                                     ttl=3600)  # fmt: skip
        figures = run(caches, args.users, args.requests, args.threads, args.max_seconds)
        figures["backend"] = "cluster" if args.cluster else "standalone"
        for user in range(args.users):
            caches.delete_user(f"user-{user}")
        caches.close()
    finally:
        if service is not None:
            service.stop()
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:>20}: {value}")
    if figures["lost_updates"] or figures["errors"]:
        return 1
    return 2 if figures["stopped_early"] else 0


if __name__ == "__main__":
    sys.exit(main())
