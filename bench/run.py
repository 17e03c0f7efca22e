"""Benchmarks: this project against plain msal and msal-extensions, side by side, as ratios.

``nox -s bench`` runs ``python bench/run.py``; ``--quick`` is a smoke run. It writes
docs/performance.md (tables, ratios against the targets of issues 5, 12 and 13, machine
and versions) and docs/performance.png, plus the raw figures in
bench/results/last_run.json (not committed).

Every row is a real process or a real library call: a loopback identity provider serves
the tokens, msal-extensions and this project write real files, and the Secret Service
rows talk to a private gnome-keyring on a private D-Bus.

Method (the same for every comparison): alternating rounds — each round runs every
variant of a cell once, the round's first variant rotating — at least 3 rounds, the
median per cell with its range, and ratios taken within a round (median of the
per-round ratios), which cancels most of the noise of a shared machine. Every persistent
variant starts from the same state: one interactive sign-in (``setup``) before a cell.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    "ours-apart": "ours: encrypted file, key, a cache per process (nothing shared)",
}
PERSISTENT = [v for v in ALL_VARIANTS if v != "msal-memory"]
#: Variants that keep data in the run's one Secret Service: every cell deletes its own.
IN_SECRET_SERVICE = ("msalx-libsecret", "ours-keyring", "ours-envelope")


ROUNDS = 3  # every cell: the median of at least this many, with its spread
CELL_CAP_S = 150.0  # a cell slower than this in round 1 is not repeated (said in the report)
SHAPES = [(4, 30), (16, 30), (32, 15), (64, 5), (128, 2)]
QUICK_SHAPES = [(4, 5), (16, 2)]
CONTENDERS = [
    "msal-memory",
    "msalx-file",
    "ours-key",
    "ours-apart",
    "ours-keyring",
    "ours-envelope",
]
#: Contention-only variants: (the variant it runs, extra environment for its launcher).
APART = {"ours-apart": ("ours-key", {"BENCH_APART": "1"})}
LOCK_STRESS = (80, 5)
#: Whole processes (fresh interpreters): the N of the issue's targets, fewer variants.
WHOLE_SHAPES = [(16, 30), (32, 15), (64, 5), (128, 2)]
QUICK_WHOLE = [(4, 2)]
WHOLE = ["msal-memory", "msalx-file", "ours-key"]


def spread(values: list[float]) -> dict[str, float]:
    """Median and range of repeated measurements."""
    return {"median": statistics.median(values), "lo": min(values), "hi": max(values)}


class Bench:
    def __init__(self, quick: bool, port: int, extra_env: dict[str, str]) -> None:
        self.quick = quick
        self.port = port
        self.rounds = 1 if quick else ROUNDS  # quick: a smoke run (CI runs it)
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
        self,
        mode: str,
        variant: str,
        directory: str,
        *args: str,
        timeout: float = 300,
        env: Optional[dict[str, str]] = None,
    ) -> dict[str, Any]:
        done = subprocess.run(
            self.worker(mode, variant, directory, *args),
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            if os.environ.get("BENCH_DEBUG"):
                print(done.stderr, file=sys.stderr)
            raise WorkerFailed(_last_line(done.stderr) or f"exit code {done.returncode}")
        lines = done.stdout.strip().splitlines()
        return dict(json.loads(lines[-1])) if lines else {}

    def forget(self, variant: str, *directories: str) -> None:
        """Delete what ``variant`` keeps in the Secret Service for the caches in
        ``directories``, when the cell that used them ends (worker.py's ``mode_forget``:
        gnome-keyring rewrites its whole keyring on every write, so leftovers would slow
        every later cell). A failure is reported, not fatal: the run goes on."""
        if variant not in IN_SECRET_SERVICE:
            return
        for directory in directories:
            try:
                self.run("forget", variant, directory, timeout=120)
            except (WorkerFailed, subprocess.TimeoutExpired) as exc:
                print(f"[bench] could not delete {variant}'s entries: {exc}", file=sys.stderr)

    def setup(self, variant: str, directory: str) -> None:
        """The same starting state for every persistent variant: one interactive sign-in."""
        if variant != "msal-memory":
            self.run("setup", variant, directory, timeout=120)

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
                self.setup(variant, directory)
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
        requests: dict[str, list[int]] = {v: [] for v in variants}
        import_cmds = {
            "import msal": [sys.executable, "-c", "import msal"],
            # build_cache looked up: the package loads its modules on first use of a name,
            # and the scale rows count that import here, not as part of a load.
            "import msal + msal_keyring_cache": [
                sys.executable,
                "-c",
                "import msal, msal_keyring_cache; msal_keyring_cache.build_cache",
            ],
        }
        import_times: dict[str, list[float]] = {k: [] for k in import_cmds}
        # The added import time measured inside one process as well: far less noisy
        # than the difference of two whole processes on a shared machine.
        in_process = [
            sys.executable,
            "-c",
            "import time, msal; t = time.perf_counter(); import msal_keyring_cache; "
            "msal_keyring_cache.build_cache; print(time.perf_counter() - t)",
        ]
        added_in_process: list[float] = []
        for round_no in range(rounds):
            for variant in _rotated(variants, round_no):
                cmd = self.worker("cold", variant, homes[variant])
                elapsed, out = _time_process(cmd, self.env)
                times[variant].append(elapsed)
                requests[variant].append(int(out.get("requests", -1)))
            for name, cmd in import_cmds.items():
                import_times[name].append(_time_process(cmd, self.env)[0])
            done = subprocess.run(in_process, env=self.env, capture_output=True, text=True)
            added_in_process.append(float(done.stdout) * 1e3)
        for variant in variants:
            self.forget(variant, homes[variant])
        base = times["msal-json"]
        rows = {}
        for variant, values in times.items():
            ratios = [t / b for t, b in zip(values, base)]
            ms = spread([v * 1e3 for v in values])
            r = spread(ratios)
            rows[variant] = {
                "ms": ms["median"],
                "ms_lo": ms["lo"],
                "ms_hi": ms["hi"],
                "ratio": r["median"],
                "ratio_lo": r["lo"],
                "ratio_hi": r["hi"],
                # the most any run made: one extra request is not hidden by a median
                "requests": max(requests[variant]),
                "requests_min": min(requests[variant]),
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
        per_round: dict[str, list[float]] = {v: [] for v in self.available}
        for round_no in range(self.rounds):
            for variant in _rotated(self.available, round_no):
                directory = self.new_dir("warm-" + variant)
                row = self.run("warm", variant, directory, str(calls))
                self.forget(variant, directory)
                per_round[variant].append(row["us"])
        base = per_round["msal-memory"]
        rows = {}
        for variant, values in per_round.items():
            us = spread(values)
            ratio = spread([v / b for v, b in zip(values, base)])
            rows[variant] = {
                "us": us["median"],
                "us_lo": us["lo"],
                "us_hi": us["hi"],
                "ratio": ratio["median"],
                "ratio_lo": ratio["lo"],
                "ratio_hi": ratio["hi"],
            }
        return {"calls": calls, "rounds": self.rounds, "rows": rows}

    # -- 3. store writes per operation ------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        rows = {}
        for variant in self.available:
            if variant == "msal-memory":
                continue
            directories = (self.new_dir("counts-" + variant), self.new_dir("cc-" + variant))
            rows[variant] = self.run("counts", variant, *directories)
            self.forget(variant, *directories)
        return {"rows": rows}

    # -- 4. N processes x M acquisitions into one cache -------------------------------------

    def contention(self) -> dict[str, Any]:
        shapes = QUICK_SHAPES if self.quick else SHAPES
        variants = [v for v in CONTENDERS if APART.get(v, (v,))[0] in self.available]
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        capped: set[tuple[str, int]] = set()
        for variant, processes, each in self._schedule(shapes, variants, "", capped):
            run = self._contend(variant, processes, each)
            runs.setdefault((variant, processes), []).append(run)
            if run["wall"] > CELL_CAP_S:
                capped.add((variant, processes))
        rows: list[dict[str, Any]] = []
        for row, cell_runs in _grid(shapes, variants, runs):
            row.update(
                capped=(row["variant"], row["processes"]) in capped and self.rounds > 1,
                p50_ms=statistics.median(r["p50"] for r in cell_runs) * 1e3,
                p99_ms=statistics.median(r["p99"] for r in cell_runs) * 1e3,
                held_ms=_median_or_none([r.get("held_p50") for r in cell_runs], 1e3),
                held_share=_median_or_none(
                    [
                        (r["held_total"] / r["wall"]) if r.get("held_total") else None
                        for r in cell_runs
                    ]
                ),
            )
            rows.append(row)
        return {"rounds": self.rounds, "rows": rows, "cap_s": CELL_CAP_S}

    def _schedule(
        self,
        shapes: list[tuple[int, int]],
        variants: list[str],
        label: str,
        skip: set[tuple[str, int]],
    ) -> Iterator[tuple[str, int, int]]:
        """Every (variant, N, M) cell of every round, in alternating order, announced on
        stderr; cells in ``skip`` (which may grow as the caller runs) are left out."""
        for round_no in range(self.rounds):
            for processes, each in shapes:
                for variant in _rotated(variants, round_no):
                    if (variant, processes) in skip:
                        continue
                    print(
                        f"[bench]   {label}{variant} {processes}×{each} round {round_no + 1}",
                        file=sys.stderr,
                        flush=True,
                    )
                    yield variant, processes, each

    def contend(
        self, variant: str, directory: str, processes: int, each: int
    ) -> tuple[int, str, str]:
        """One contention run in ``directory``, from one sign-in: (exit code, stdout, stderr).

        The launcher forks its processes, says ``ready``, and releases them all on ``go``.
        """
        variant, extra = APART.get(variant, (variant, {}))
        self.setup(variant, directory)  # the same state for every side: one sign-in
        proc = subprocess.Popen(
            self.worker("contend", variant, directory, str(processes), str(each)),
            env={**self.env, **extra},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        if proc.stdout.readline() == "ready\n":
            proc.stdin.write("go\n")
            proc.stdin.flush()
        out, err = proc.communicate(timeout=1800)
        return proc.returncode, out, err

    def _contend(self, variant: str, processes: int, each: int) -> dict[str, Any]:
        from forking import percentile

        directory = self.new_dir(f"contend-{variant}-{processes}")
        code, out, err = self.contend(variant, directory, processes, each)
        try:
            lines = out.strip().splitlines()
            if code != 0 or not lines:
                kind = _last_line(err) or f"exit {code}"
                return {
                    "wall": 0.0,
                    "errors": processes * each,
                    "lost": 0,
                    "kinds": [kind],
                    "p50": 0.0,
                    "p99": 0.0,
                }
            found = json.loads(lines[-1])
            lost = self._lost(variant, directory, found["stored"], found["own_tokens"])
            held = found.get("held", [])
            return {
                "wall": found["wall"],
                "held_p50": percentile(held, 0.5) if held else None,
                "held_total": sum(held) if held else None,
                "errors": found["errors"],
                "lost": lost,
                "kinds": found["kinds"],
                "p50": percentile(found["times"], 0.50),
                "p99": percentile(found["times"], 0.99),
                "requests_before": found.get("requests_before", []),
            }
        finally:
            self.forget(variant, directory)  # when the cell ends, whatever happened

    # -- 4b. the same, as whole processes ------------------------------------------------

    def processes(self) -> dict[str, Any]:
        """N×M as the issue first measured it: N fresh interpreters, each started, its
        libraries imported and its app built before a common start; timed from the start
        to the last exit (its calls, and its interpreter's exit)."""
        shapes = QUICK_WHOLE if self.quick else WHOLE_SHAPES
        variants = [v for v in WHOLE if v in self.available]
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for variant, processes, each in self._schedule(
            shapes, variants, "whole processes: ", set()
        ):
            run = self._whole(variant, processes, each)
            runs.setdefault((variant, processes), []).append(run)
        return {"rounds": self.rounds, "rows": [row for row, _ in _grid(shapes, variants, runs)]}

    def _whole(self, variant: str, processes: int, each: int) -> dict[str, Any]:
        directory = self.new_dir(f"whole-{variant}-{processes}")
        self.setup(variant, directory)
        procs = [
            subprocess.Popen(
                self.worker("process", variant, directory, str(index), str(each)),
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for index in range(processes)
        ]
        for proc in procs:  # each has imported, opened its cache and built its app
            assert proc.stdout is not None
            proc.stdout.readline()
        start = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):  # one that died is counted below
                proc.stdin.write("go\n")
                proc.stdin.flush()
        outputs = [proc.communicate(timeout=1800) for proc in procs]
        wall = time.perf_counter() - start
        errors, kinds, stored, own, before = 0, set(), [], 0, set()
        for proc, (out, err) in zip(procs, outputs):
            lines = out.strip().splitlines()
            if proc.returncode != 0 or not lines:
                errors += each
                kinds.add(_last_line(err) or f"exit {proc.returncode}")
                continue
            found = json.loads(lines[-1])
            errors += found["errors"]
            kinds.update(found["kinds"])
            stored += found["stored"]
            own += found.get("own_tokens", 0)
            before.add(found["requests_before"])
        lost = self._lost(variant, directory, stored, own)
        self.forget(variant, directory)
        return {
            "wall": wall,
            "requests_before": sorted(before),
            "errors": errors,
            "lost": lost,
            "kinds": sorted(kinds),
        }

    def _lost(self, variant: str, directory: str, stored: list[str], own_tokens: int) -> int:
        """Acquired (the call returned a token) but not in the shared cache afterwards;
        without a shared cache (msal in memory), what the processes hold themselves."""
        returned = set(stored)
        if variant == "msal-memory":
            present = returned if own_tokens == len(returned) else set()
        else:
            base, extra = APART.get(variant, (variant, {}))
            present = set(self.run("tally", base, directory, env=extra)["targets"])
        return len(returned - present)

    # -- 5. the lock alone: 80 processes --------------------------------------------------

    def lock_stress(self) -> dict[str, Any]:
        from forking import percentile

        processes, each = (20, 2) if self.quick else LOCK_STRESS
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "msalx": []}
        for round_no in range(self.rounds):
            for side in _rotated(list(runs), round_no):
                directory = self.new_dir(f"lock-{side}")  # a fresh lock file each run
                out = self.run(
                    "lockstress", side, directory, str(processes), str(each), timeout=600
                )
                out["p50"] = percentile(out.pop("times"), 0.5)
                runs[side].append(out)
        rows = {}
        for side, side_runs in runs.items():
            walls = [r["wall"] for r in side_runs]
            rows[side] = {
                **spread(walls),
                "walls": walls,
                "errors": sum(r["errors"] + r["crashes"] for r in side_runs),
                "overlaps": sum(r["overlaps"] for r in side_runs),
                "p50_ms": statistics.median(r["p50"] for r in side_runs) * 1e3,
            }
        ratio = spread([a["wall"] / b["wall"] for a, b in zip(runs["ours"], runs["msalx"])])
        return {
            "processes": processes,
            "each": each,
            "rounds": self.rounds,
            "rows": rows,
            "ratio": ratio,
            "msalx_lock": _msalx_lock_kind(self.env),
        }

    # -- 6. scaling with cache size ---------------------------------------------------------

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
            size_bytes = os.path.getsize(seed)
            dirs: dict[str, str] = {}
            skipped: dict[str, str] = {}
            for variant in variants:
                if variant == "ours-keyring" and size > 1000:
                    skipped[variant] = "a whole cache of this size in one Secret Service item"
                    continue
                directory = self.new_dir(f"scale-{variant}-{size}")
                try:
                    self.run("seed", variant, directory, seed)
                except (WorkerFailed, subprocess.TimeoutExpired) as exc:
                    skipped[variant] = str(exc)
                    continue
                dirs[variant] = directory
            found: dict[str, list[dict[str, Any]]] = {v: [] for v in dirs}
            for round_no in range(self.rounds):
                for variant in _rotated(list(dirs), round_no):
                    try:
                        found[variant].append(self.run("scale", variant, dirs[variant]))
                    except (WorkerFailed, subprocess.TimeoutExpired) as exc:
                        skipped[variant] = str(exc)
            for seeded, directory in dirs.items():
                self.forget(seeded, directory)
            base = found.get("msal-json", [])
            for variant in variants:
                row: dict[str, Any] = {"variant": variant, "tokens": size, "bytes": size_bytes}
                runs = found.get(variant, [])
                if variant in skipped or not runs:
                    row["skipped"] = skipped.get(variant, "no run")
                    rows.append(row)
                    continue
                first = spread([r["first_ms"] for r in runs])
                row.update(
                    first_ms=first["median"],
                    first_lo=first["lo"],
                    first_hi=first["hi"],
                    warm_us=statistics.median(r["warm_us"] for r in runs),
                    miss_ms=statistics.median(r["miss_ms"] for r in runs),
                    rss_mb=statistics.median(r["rss_mb"] for r in runs),
                    runs=len(runs),
                )
                if base and len(base) == len(runs):
                    ratio = spread([r["first_ms"] / b["first_ms"] for r, b in zip(runs, base)])
                    row.update(ratio=ratio["median"], ratio_lo=ratio["lo"], ratio_hi=ratio["hi"])
                    row["over_ms"] = statistics.median(
                        r["first_ms"] - b["first_ms"] for r, b in zip(runs, base)
                    )
                rows.append(row)
        return {"rounds": self.rounds, "rows": rows}

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _row(
    variant: str,
    processes: int,
    each: int,
    cell_runs: list[dict[str, Any]],
    floor: list[dict[str, Any]],
    theirs: list[dict[str, Any]],
) -> dict[str, Any]:
    """One N×M cell: wall median and range, lost and errors, and its ratios to the floor
    and to msal-extensions (median of the per-round ratios, with their range)."""
    walls = [r["wall"] for r in cell_runs]
    row: dict[str, Any] = {
        "variant": variant,
        "processes": processes,
        "each": each,
        "runs": len(cell_runs),
        "walls": walls,
        "seconds": statistics.median(walls),
        "lost": sum(r["lost"] for r in cell_runs),
        "errors": sum(r["errors"] for r in cell_runs),
        "error_kinds": sorted({k for r in cell_runs for k in r["kinds"]})[:5],
        # requests each process made before the common start (its discovery): the same
        # for every variant, so every first timed call finds its connection open
        "requests_before": sorted({n for r in cell_runs for n in r.get("requests_before", [])}),
    }
    for key, ref in (("vs_msalx", theirs), ("vs_floor", floor)):
        pairs = list(zip(walls, (r["wall"] for r in ref)))
        if pairs:
            ratio = spread([a / b for a, b in pairs])
            row[key] = ratio["median"]
            row[key + "_lo"], row[key + "_hi"] = ratio["lo"], ratio["hi"]
    return row


def _grid(
    shapes: list[tuple[int, int]],
    variants: list[str],
    runs: dict[tuple[str, int], list[dict[str, Any]]],
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each N×M cell that ran, in table order: its :func:`_row` (ratios to the floor and
    to msal-extensions at the same N) and its runs."""
    for processes, each in shapes:
        floor = runs.get(("msal-memory", processes), [])
        theirs = runs.get(("msalx-file", processes), [])
        for variant in variants:
            cell_runs = runs.get((variant, processes), [])
            if cell_runs:
                yield _row(variant, processes, each, cell_runs, floor, theirs), cell_runs


def _median_or_none(values: list[Optional[float]], scale: float = 1.0) -> Optional[float]:
    found = [v * scale for v in values if v is not None]
    return statistics.median(found) if found else None


def _rotated(items: list[str], round_no: int) -> list[str]:
    """Alternating order: each round starts with the next variant (same work, new order)."""
    if not items:
        return []
    k = round_no % len(items)
    return items[k:] + items[:k]


def _msalx_lock_kind(env: dict[str, str]) -> str:
    code = "import msal_extensions as m; print(m.CrossPlatLock.__module__)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


class WorkerFailed(Exception):
    pass


def _time_process(cmd: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise WorkerFailed(_last_line(done.stderr) or f"exit code {done.returncode}")
    lines = done.stdout.strip().splitlines()
    return elapsed, (json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {})


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


def fsync_cost(directory: str, count: int = 200) -> dict[str, float]:
    """What one durable append costs on this disk (write 1 KB + fsync), in ms."""
    from forking import percentile

    path = os.path.join(directory, "fsync-probe")
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * 1024)
            os.fsync(fd)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    return {"p50": percentile(times, 0.5), "p99": percentile(times, 0.99)}


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
    parser.add_argument("--quick", action="store_true", help="a smoke run (a few minutes)")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated steps to run (cold,warm,counts,contention,lock_stress,scale); "
        "the report needs all of them",
    )
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
            results["machine"]["fsync_ms"] = fsync_cost(bench.tmp)
            homes = bench.probe()
            results["skipped"] = bench.skipped
            results["available"] = bench.available
            steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                ("cold", lambda: bench.cold(homes)),
                ("warm", bench.warm),
                ("counts", bench.counts),
                ("contention", bench.contention),
                ("processes", bench.processes),
                ("lock_stress", bench.lock_stress),
                ("scale", lambda: bench.scale(idp)),
            ]
            only = {x for x in args.only.split(",") if x}
            for name, step in steps:
                if only and name not in only:
                    continue
                t0 = time.perf_counter()
                print(f"[bench] {name} …", file=sys.stderr, flush=True)
                results[name] = step()
                results[name]["took_s"] = time.perf_counter() - t0
            # every cell deleted its entries (Bench.forget): what is left, none expected
            results["secret_service_items_left"] = secret_service.items()
        finally:
            bench.cleanup()
            secret_service.stop()
    results["took_s"] = time.perf_counter() - began
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=1)
    if args.only:
        print(f"[bench] partial run (--only): raw figures in {args.json}", file=sys.stderr)
        return 0
    write_report(results, args.out, LABELS)
    print(f"[bench] done in {results['took_s']:.0f} s: {args.out}/performance.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
