"""Benchmarks: this project against plain msal and msal-extensions, side by side, as ratios.

``nox -s bench`` runs ``python bench/run.py``; ``--quick`` is a smoke run. It writes
docs/performance.md (tables, ratios against the targets of issue 5, machine and
versions) and docs/performance.png, plus the raw figures in bench/results/last_run.json
(not committed).

Every row is a real process or a real library call: a loopback identity provider serves
the tokens, msal-extensions and this project write real files, and the Secret Service
rows talk to a private gnome-keyring on a private D-Bus. Whole-process times are taken
in alternating rounds and compared per round (median of the per-round ratios), which
cancels most of the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from report import write_report  # noqa: E402
from secret_service import PrivateSecretService  # noqa: E402

from msal_keyring_cache.testing import LoopbackIdentityProvider  # noqa: E402

WORKER = os.path.join(HERE, "worker.py")
ALL_VARIANTS = [
    "msal-memory",
    "msal-json",
    "msalx-file",
    "msalx-libsecret",
    "ours-key",
    "ours-pass",
    "ours-keyring",
    "ours-envelope",
]
LABELS = {
    "msal-memory": "msal, in memory",
    "msal-json": "msal + JSON file (docs recipe)",
    "msalx-file": "msal-extensions FilePersistence",
    "msalx-libsecret": "msal-extensions LibsecretPersistence",
    "ours-key": "ours: encrypted file, key",
    "ours-pass": "ours: encrypted file, passphrase",
    "ours-keyring": "ours: keyring (Secret Service)",
    "ours-envelope": "ours: envelope (file + key in keyring)",
}
PERSISTENT = [v for v in ALL_VARIANTS if v != "msal-memory"]


class Bench:
    def __init__(self, quick: bool, port: int, extra_env: dict[str, str]) -> None:
        self.quick = quick
        self.port = port
        self.tmp = tempfile.mkdtemp(prefix="msal-keyring-cache-bench-")
        home = os.path.join(self.tmp, "home")
        self.env = dict(os.environ)
        for name in list(self.env):
            if name.startswith("MSAL_KEYRING_CACHE_"):
                del self.env[name]
        self.env.update(
            HOME=home,
            XDG_DATA_HOME=os.path.join(home, "data"),
            XDG_CONFIG_HOME=os.path.join(home, "config"),
            XDG_CACHE_HOME=os.path.join(home, "cache"),
            PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
            BENCH_KEY=_fernet_key(),
            BENCH_PASSPHRASE=secrets.token_urlsafe(18),
        )
        self.env.update(extra_env)
        self.skipped: dict[str, str] = {}
        self.no_secret_service = ""
        self.available: list[str] = []
        self._dirs = 0

    def new_dir(self, label: str) -> str:
        self._dirs += 1
        path = os.path.join(self.tmp, f"{label}-{self._dirs}")
        os.makedirs(path, mode=0o700)
        return path

    def worker(self, mode: str, variant: str, directory: str, *args: str) -> list[str]:
        return [sys.executable, WORKER, mode, variant, directory, str(self.port), *args]

    def run(
        self, mode: str, variant: str, directory: str, *args: str, timeout: float = 300
    ) -> dict[str, Any]:
        done = subprocess.run(
            self.worker(mode, variant, directory, *args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise WorkerFailed(_last_line(done.stderr) or f"exit code {done.returncode}")
        lines = done.stdout.strip().splitlines()
        return dict(json.loads(lines[-1])) if lines else {}

    # -- which variants can run here ---------------------------------------------------

    def probe(self) -> dict[str, str]:
        """Set up every variant once; the ones that cannot run get a reason instead."""
        homes: dict[str, str] = {}
        for variant in ALL_VARIANTS:
            if variant == "msalx-libsecret" and not _importable("gi", self.env):
                self.skipped[variant] = (
                    "PyGObject (gi) is not importable here: msal-extensions needs it for "
                    "libsecret (pip install PyGObject, which builds against libgirepository)"
                )
                continue
            if "DBUS_SESSION_BUS_ADDRESS" not in self.env and variant in (
                "msalx-libsecret",
                "ours-keyring",
                "ours-envelope",
            ):
                self.skipped[variant] = (
                    f"no Secret Service could be started here ({self.no_secret_service})"
                )
                continue
            directory = self.new_dir("cold-" + variant)
            try:
                if variant != "msal-memory":
                    self.run("setup", variant, directory, timeout=60)
            except (WorkerFailed, subprocess.TimeoutExpired) as exc:
                self.skipped[variant] = f"could not set up: {exc}"
                continue
            self.available.append(variant)
            homes[variant] = directory
        return homes

    # -- 1. a fresh CLI process doing a silent hit -----------------------------------------

    def cold(self, homes: dict[str, str]) -> dict[str, Any]:
        rounds = 4 if self.quick else 30
        variants = [v for v in PERSISTENT if v in self.available]
        times: dict[str, list[float]] = {v: [] for v in variants}
        import_cmds = {
            "import msal": [sys.executable, "-c", "import msal"],
            "import msal + msal_keyring_cache": [
                sys.executable,
                "-c",
                "import msal, msal_keyring_cache",
            ],
        }
        import_times: dict[str, list[float]] = {k: [] for k in import_cmds}
        # The added import time measured inside one process as well: far less noisy
        # than the difference of two whole processes on a shared machine.
        in_process = [
            sys.executable,
            "-c",
            "import time, msal; t = time.perf_counter(); import msal_keyring_cache; "
            "print(time.perf_counter() - t)",
        ]
        added_in_process: list[float] = []
        for _ in range(rounds):
            order = variants[:]
            random.shuffle(order)
            for variant in order:
                cmd = self.worker("cold", variant, homes[variant])
                times[variant].append(_time_process(cmd, self.env))
            for name, cmd in import_cmds.items():
                import_times[name].append(_time_process(cmd, self.env))
            done = subprocess.run(in_process, env=self.env, capture_output=True, text=True)
            added_in_process.append(float(done.stdout) * 1e3)
        base = times["msal-json"]
        rows = {}
        for variant, values in times.items():
            ratios = [t / b for t, b in zip(values, base)]
            rows[variant] = {
                "ms": statistics.median(values) * 1e3,
                "ratio": statistics.median(ratios),
            }
        plain, ours = import_times["import msal"], import_times["import msal + msal_keyring_cache"]
        added = statistics.median([(b - a) * 1e3 for a, b in zip(plain, ours)])
        return {
            "rounds": rounds,
            "rows": rows,
            "import": {
                "msal_ms": statistics.median(plain) * 1e3,
                "with_ours_ms": statistics.median(ours) * 1e3,
                "added_process_ms": added,
                "added_ms": statistics.median(added_in_process),
            },
        }

    # -- 2. a warm in-process silent hit -----------------------------------------------

    def warm(self) -> dict[str, Any]:
        calls = 450 if self.quick else 2700
        rows = {}
        for variant in self.available:
            rows[variant] = self.run("warm", variant, self.new_dir("warm-" + variant), str(calls))
        base = rows["msal-memory"]["us"]
        for row in rows.values():
            row["ratio"] = row["us"] / base
        return {"calls": calls, "rows": rows}

    # -- 3. store writes per operation ------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        rows = {}
        for variant in self.available:
            if variant == "msal-memory":
                continue
            rows[variant] = self.run(
                "counts", variant, self.new_dir("counts-" + variant), self.new_dir("cc-" + variant)
            )
        return {"rows": rows}

    # -- 4. N processes x M acquisitions into one cache -------------------------------------

    def contention(self) -> dict[str, Any]:
        shapes = [(4, 5)] if self.quick else [(4, 30), (16, 30), (32, 15)]
        variants = [
            v
            for v in ("msal-memory", "msalx-file", "ours-key", "ours-keyring", "ours-envelope")
            if v in self.available
        ]
        rows: list[dict[str, Any]] = []
        for processes, each in shapes:
            for variant in variants:
                rows.append(self._contend(variant, processes, each))
        return {"rows": rows}

    def _contend(self, variant: str, processes: int, each: int) -> dict[str, Any]:
        directory = self.new_dir(f"contend-{variant}-{processes}")
        if variant in ("ours-keyring", "ours-envelope", "ours-key"):
            self.run("setup", variant, directory)  # the store exists, as in real use
        procs = [
            subprocess.Popen(
                self.worker("contend", variant, directory, str(i), str(each)),
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(processes)
        ]
        ready = [p for p in procs if p.stdout is not None and p.stdout.readline() == "ready\n"]
        start = time.perf_counter()
        for proc in ready:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=600) for proc in procs]
        wall = time.perf_counter() - start
        errors, own_tokens = 0, 0
        kinds: set[str] = set()
        for proc, (out, err) in zip(procs, outputs):
            lines = out.strip().splitlines()
            if proc.returncode != 0 or not lines:
                errors += each
                kinds.add(_last_line(err) or f"exit {proc.returncode}")
                continue
            found = json.loads(lines[-1])
            errors += found["errors"]
            own_tokens += found.get("own_tokens", 0)
            kinds.update(x for x in err.split() if x.endswith(("Error", "Exception", "Timeout")))
        if variant == "msal-memory":
            tokens = own_tokens
        else:
            tokens = self.run("tally", variant, directory)["tokens"]
        return {
            "variant": variant,
            "processes": processes,
            "each": each,
            "seconds": wall,
            # An acquisition that failed may still have stored its token: never below 0.
            "lost": max(0, processes * each - errors - tokens),
            "tokens": tokens,
            "errors": errors,
            "error_kinds": sorted(kinds)[:5],
        }

    # -- 5. scaling with cache size ---------------------------------------------------------

    def scale(self, idp: LoopbackIdentityProvider) -> dict[str, Any]:
        sizes = [10, 1000] if self.quick else [10, 100, 1000, 10000]
        variants = [
            v
            for v in (
                "msal-json",
                "msalx-file",
                "ours-key",
                "ours-pass",
                "ours-keyring",
                "ours-envelope",
            )
            if v in self.available
        ]
        rows: list[dict[str, Any]] = []
        for size in sizes:
            seed = os.path.join(self.tmp, f"seed-{size}.json")
            with open(seed, "w") as fh:
                fh.write(_seed_state(idp, size))
            for variant in variants:
                row: dict[str, Any] = {
                    "variant": variant,
                    "tokens": size,
                    "bytes": os.path.getsize(seed),
                }
                if variant == "ours-keyring" and size > 1000:
                    row["skipped"] = "a whole cache of this size in one Secret Service item"
                    rows.append(row)
                    continue
                directory = self.new_dir(f"scale-{variant}-{size}")
                try:
                    self.run("seed", variant, directory, seed)
                    row.update(self.run("scale", variant, directory))
                except (WorkerFailed, subprocess.TimeoutExpired) as exc:
                    row["skipped"] = str(exc)
                rows.append(row)
        return {"rows": rows}

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class WorkerFailed(Exception):
    pass


def _time_process(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise WorkerFailed(_last_line(done.stderr) or f"exit code {done.returncode}")
    return elapsed


def _importable(module: str, env: dict[str, str]) -> bool:
    cmd = [sys.executable, "-c", f"import {module}"]
    return subprocess.run(cmd, env=env, capture_output=True, check=False).returncode == 0


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _fernet_key() -> str:
    import base64

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _seed_state(idp: LoopbackIdentityProvider, size: int) -> str:
    """msal's JSON for a cache holding ``size`` client-credential access tokens.

    One token comes from a real acquisition; the others are copies of its entry with
    their own scope, key and random token text of the same length.
    """
    import msal

    cache = msal.SerializableTokenCache()
    app = idp.confidential_app(token_cache=cache)
    app.acquire_token_for_client(["api://scale/0/.default"])
    state = json.loads(cache.serialize())
    (template,) = state["AccessToken"].values()
    make_key = cache.key_makers[msal.TokenCache.CredentialType.ACCESS_TOKEN]
    tokens = {}
    for i in range(size):
        entry = dict(template, target=f"api://scale/{i}/.default")
        if i:
            entry["secret"] = secrets.token_urlsafe(len(template["secret"]))[
                : len(template["secret"])
            ]
        tokens[make_key(**entry)] = entry
    state["AccessToken"] = tokens
    return json.dumps(state)


def machine() -> dict[str, Any]:
    import platform
    from importlib import metadata

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in (
        "msal",
        "msal-extensions",
        "msal-keyring-cache",
        "cryptography",
        "keyring",
        "filelock",
        "secretstorage",
        "jeepney",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else [],
        "versions": versions,
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute)")
    parser.add_argument(
        "--out",
        default=os.path.join(ROOT, "docs"),
        help="where performance.md and performance.png go",
    )
    parser.add_argument(
        "--json",
        default=os.path.join(HERE, "results", "last_run.json"),
        help="where the raw figures go",
    )
    args = parser.parse_args(argv)
    began = time.perf_counter()
    results: dict[str, Any] = {"quick": args.quick, "machine": machine()}
    # Bytecode first, as pip compiles it on install: with PYTHONDONTWRITEBYTECODE set
    # (as here) every process would otherwise compile the package from source, ~9 ms
    # that no installed user pays and that msal, in site-packages, does not pay either.
    import compileall

    for directory in (os.path.join(ROOT, "msal_keyring_cache"), HERE):
        compileall.compile_dir(directory, quiet=1)
    secret_service = PrivateSecretService()
    with LoopbackIdentityProvider() as idp:
        bench = Bench(args.quick, idp.port, secret_service.start())
        try:
            bench.no_secret_service = secret_service.why_not or ""
            homes = bench.probe()
            results["skipped"] = bench.skipped
            results["available"] = bench.available
            steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                ("cold", lambda: bench.cold(homes)),
                ("warm", bench.warm),
                ("counts", bench.counts),
                ("contention", bench.contention),
                ("scale", lambda: bench.scale(idp)),
            ]
            for name, step in steps:
                t0 = time.perf_counter()
                print(f"[bench] {name} …", file=sys.stderr, flush=True)
                results[name] = step()
                results[name]["took_s"] = time.perf_counter() - t0
        finally:
            bench.cleanup()
            secret_service.stop()
    results["took_s"] = time.perf_counter() - began
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=1)
    write_report(results, args.out, LABELS)
    print(f"[bench] done in {results['took_s']:.0f} s: {args.out}/performance.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
