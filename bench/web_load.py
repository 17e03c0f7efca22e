"""Load test of the per-user web caches: many users, many requests, worker processes.

Like a pre-forking WSGI server (gunicorn): ``--workers`` processes, each with its own
``UserCaches`` and ``--threads`` request threads; the requests of one user land on any
worker, so the same user's requests race across processes. Each request is
``with caches.for_user(user) as cache: cache.add(<a token response>)`` (real msal ``add``,
token sizes like Entra's). At the end every user must hold exactly one access token per
request: anything less is a lost update. Reports load+save per second (completed
requests / wall time) and p50/p99 of load+save (the time spent entering and leaving
``for_user``, not in the request body).

    python bench/web_load.py                                  # every store, default shapes
    python bench/web_load.py --store redis --workers 2 --threads 2
    python bench/web_load.py --store postgresql --users 100 --requests 5 --json
    python bench/web_load.py --store redis --url redis://host:6379/0
    python bench/web_load.py --store postgresql --postgres-fsync off   # the disk's share

Without ``--url`` it starts a private server (redis-server, a 3-node cluster, or
PostgreSQL as in the tests) on loopback, or a temporary SQLite file, and removes it
after. Bounded: ``--max-seconds`` stops issuing requests (exit code 2 when reached).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import queue
import random
import secrets
import shutil
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
#: The shape each store is measured in by default (the targets of issue 14).
SHAPES = {
    "redis": (2, 2),  # 2 worker processes x 2 threads = 4 concurrent requests
    "cluster": (2, 2),
    "postgresql": (2, 2),
    "sqlite": (1, 2),  # one process: SQLite is the single-server store
}


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


def _caches(spec: dict[str, Any]) -> UserCaches:
    return UserCaches.from_url(spec["url"], key=spec["key"], prefix=spec["prefix"],
                               cluster=spec["cluster"], ttl=3600, timeout=10)  # fmt: skip


def worker(spec: dict[str, Any], tasks: list[tuple[int, int]], ready: Any, go: Any,
           results: Any) -> None:  # fmt: skip
    """One worker process: its own caches, ``threads`` request threads over ``tasks``."""
    caches = _caches(spec)
    with caches.for_user("warm-up"):  # connect before the clock starts
        pass
    events = {(u, r): token_event(u, r) for u, r in tasks}  # made before the clock too
    work: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for task in tasks:
        work.put(task)
    timings: list[float] = []
    loads: list[float] = []  # the load alone (the rest of a timing is the save)
    done: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    ready.put(os.getpid())
    go.wait()
    deadline = time.monotonic() + spec["max_seconds"]

    def run() -> None:
        while time.monotonic() < deadline:
            try:
                user, request = work.get_nowait()
            except queue.Empty:
                return
            try:
                start = time.perf_counter()
                context = caches.for_user(f"user-{user}")
                cache = context.__enter__()
                loaded = time.perf_counter()
                cache.add(events[(user, request)])
                body_done = time.perf_counter()
                context.__exit__(None, None, None)
                end = time.perf_counter()
            except Exception as exc:  # counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                timings.append((loaded - start) + (end - body_done))
                loads.append(loaded - start)
                done[user] = done.get(user, 0) + 1

    started, cpu = time.time(), time.process_time()
    pool = [threading.Thread(target=run) for _ in range(spec["threads"])]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put({"timings": timings, "loads": loads, "done": done, "errors": errors,
                 "started": started, "ended": time.time(), "cpu": time.process_time() - cpu,
                 "conflicts": caches.stats.conflicts, "saves": caches.stats.saves})  # fmt: skip
    caches.close()


def process_cpu(pids: list[int]) -> float:
    """CPU seconds of the processes ``pids`` and all their children (live or reaped)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    roots = set(pids)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(entry) in roots:  # utime, stime, and those of its reaped children
            total += sum(int(x) for x in fields[11:15])
        elif int(fields[1]) in roots:  # a live child (a PostgreSQL backend)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def postgres_counters(url: str) -> dict[str, float]:
    """The server's WAL and transaction counters (pg_stat_wal needs PostgreSQL 14+)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        wal = conn.execute("SELECT wal_bytes, wal_sync FROM pg_stat_wal").fetchone()
        xact = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert wal is not None
    assert xact is not None
    return {"wal_bytes": float(wal[0]), "wal_syncs": float(wal[1]), "commits": float(xact[0])}


def run(spec: dict[str, Any], users: int, requests: int, workers: int,
        server_pids: Optional[list[int]] = None) -> dict[str, Any]:  # fmt: skip
    """Run the load over ``workers`` processes; return the figures (and check for loss).

    ``server_pids``: the store's server processes, whose CPU per request is reported.
    """
    tasks = [(u, r) for r in range(requests) for u in range(users)]
    random.Random(1).shuffle(tasks)
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    procs = [
        context.Process(target=worker, args=(spec, tasks[i::workers], ready, go, results))
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=120)
    postgres = spec["url"].startswith("postgresql")
    counters = postgres_counters(spec["url"]) if postgres else {}
    server_cpu = process_cpu(server_pids) if server_pids else 0.0
    go.set()
    parts = [results.get(timeout=spec["max_seconds"] + 120) for _ in procs]
    server_cpu = process_cpu(server_pids) - server_cpu if server_pids else 0.0
    if postgres:
        time.sleep(1.5)  # backends report their counters once a second when idle
        after = postgres_counters(spec["url"])
        counters = {k: after[k] - v for k, v in counters.items()}
    for proc in procs:
        proc.join(60)
    timings = [t for p in parts for t in p["timings"]]
    saves_only = [t - lt for p in parts for t, lt in zip(p["timings"], p["loads"])]
    loads_only = [lt for p in parts for lt in p["loads"]]
    errors = [e for p in parts for e in p["errors"]]
    done = [0] * users
    for part in parts:
        for user, count in part["done"].items():
            done[user] += count
    elapsed = max(p["ended"] for p in parts) - min(p["started"] for p in parts)
    load = os.getloadavg()[0]

    caches = _caches(spec)
    lost = 0
    for user in range(users):
        with caches.for_user(f"user-{user}") as cache:
            kept = len(list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)))
        lost += max(0, done[user] - kept)
    for user in range(users):
        caches.delete_user(f"user-{user}")
    caches.delete_user("warm-up")
    caches.close()
    completed = sum(done)
    saves = sum(p["saves"] for p in parts)
    server: dict[str, Any] = {}
    if server_pids:
        # What the store's server spent per request: with the workers' CPU, what a request
        # costs the machine (2 cores: 2,000 ms of CPU a second at most).
        server["server_cpu_ms_per_request"] = round(server_cpu / max(1, completed) * 1000, 3)
    if counters:
        server["wal_kb_per_save"] = round(counters["wal_bytes"] / max(1, saves) / 1024, 1)
        server["wal_flushes_per_save"] = round(counters["wal_syncs"] / max(1, saves), 2)
        # Every statement is its own transaction (autocommit): one load + one save = 2.
        server["transactions_per_request"] = round(counters["commits"] / max(1, completed), 2)
    return {
        "users": users,
        "requests_per_user": requests,
        "workers": workers,
        "threads": spec["threads"],
        "completed": completed,
        "planned": len(tasks),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(completed / elapsed, 1) if elapsed else 0.0,
        "load_save_p50_ms": round(percentile(timings, 0.50) * 1000, 2),
        "load_save_p99_ms": round(percentile(timings, 0.99) * 1000, 2),
        "load_save_mean_ms": round(statistics.fmean(timings) * 1000, 2) if timings else 0.0,
        # The two halves apart: a save waits for the store's durable write, a load does not.
        "load_p50_ms": round(percentile(loads_only, 0.50) * 1000, 2),
        "load_p99_ms": round(percentile(loads_only, 0.99) * 1000, 2),
        "save_p50_ms": round(percentile(saves_only, 0.50) * 1000, 2),
        "save_p99_ms": round(percentile(saves_only, 0.99) * 1000, 2),
        # CPU of the worker processes per request (load+save and the msal add in the body):
        # what a request costs the app server, whatever else the machine is doing.
        "worker_cpu_ms_per_request": round(
            sum(p["cpu"] for p in parts) / max(1, completed) * 1000, 3
        ),
        "machine_load_1min": round(load, 1),
        "conflicts_merged": sum(p["conflicts"] for p in parts),
        **server,
        "lost_updates": lost,
        "stopped_early": completed + len(errors) < len(tasks),
    }


class _Service:
    """A private server for one store, or nothing when ``--url`` is given."""

    def __init__(self, store: str, url: Optional[str], fsync: bool = True) -> None:
        self.store, self.url, self.server, self.tmp = store, url, None, ""
        if url:
            return
        if store == "sqlite":
            self.tmp = tempfile.mkdtemp(prefix="web-load-")
            self.url = f"sqlite:///{self.tmp}/tokens.db"
        elif store == "postgresql":
            from tests.services_postgres import PostgresServer

            # fsync on, as in production (every save that returned is durable); off only
            # to see how much of a figure is the disk's (--postgres-fsync off).
            self.server = PostgresServer(fsync=fsync).start()
            self.url = self.server.url
        else:
            from tests.services_redis import RedisClusterServers, RedisServer

            self.tmp = tempfile.mkdtemp(prefix="web-load-")
            kind = RedisClusterServers if store == "cluster" else RedisServer
            self.server = kind(Path(self.tmp)).start()
            self.url = self.server.url

    def pids(self) -> Optional[list[int]]:
        """The private server's processes (None with ``--url`` or SQLite)."""
        nodes = getattr(self.server, "nodes", None) or [self.server]
        found = [n.process.pid for n in nodes if getattr(n, "process", None) is not None]
        return found or None

    def stop(self) -> None:
        if self.server is not None:
            remove = getattr(self.server, "remove", None)
            (remove or self.server.stop)()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--store", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--url", help="an existing server (default: start a private one)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20, help="requests per user")
    parser.add_argument("--workers", type=int, help="worker processes (default: per store)")
    parser.add_argument("--threads", type=int, help="request threads per worker")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--postgres-fsync", choices=["on", "off"], default="on",
                        help="the private PostgreSQL server's fsync (off: not durable, for "
                        "comparison only)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    stores = list(SHAPES) if args.store == "all" else [args.store]
    if args.url and len(stores) > 1:
        parser.error("--url needs --store")

    rows = []
    for store in stores:
        workers, threads = SHAPES[store]
        service = _Service(store, args.url, args.postgres_fsync == "on")
        try:
            spec = {"url": service.url, "key": generate_key(), "cluster": store == "cluster",
                    "prefix": "bench-" + secrets.token_hex(4), "threads": args.threads or threads,
                    "max_seconds": args.max_seconds}  # fmt: skip
            figures = run(spec, args.users, args.requests, args.workers or workers,
                          service.pids())  # fmt: skip
        finally:
            service.stop()
        if store == "postgresql" and not args.url:
            figures["server_fsync"] = args.postgres_fsync
        rows.append({"store": store, **figures})
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0]))
    else:
        print("| store | workers × threads | load+save/s | p50 ms | p99 ms "
              "| worker CPU ms/request | server CPU ms/request | conflicts merged | lost | errors "
              "| machine load |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['store']} | {r['workers']} × {r['threads']} | {r['requests_per_s']:,.0f} "
                  f"| {r['load_save_p50_ms']} | {r['load_save_p99_ms']} "
                  f"| {r['worker_cpu_ms_per_request']} | {r.get('server_cpu_ms_per_request', '—')} "
                  f"| {r['conflicts_merged']} | {r['lost_updates']} | {r['errors']} "
                  f"| {r['machine_load_1min']} |")  # fmt: skip
        for r in rows:
            if "wal_kb_per_save" in r:
                print(f"\n{r['store']}: {r['wal_kb_per_save']} KB of WAL and "
                      f"{r['wal_flushes_per_save']} WAL flushes per save, "
                      f"{r['transactions_per_request']} transactions per request")  # fmt: skip
    if any(r["lost_updates"] or r["errors"] for r in rows):
        return 1
    return 2 if any(r["stopped_early"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
