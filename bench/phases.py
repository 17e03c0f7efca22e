"""Where the time and CPU of a contention cell go: ``python bench/phases.py VARIANT NxM…``.

``python bench/phases.py ours-key 32x15 128x2`` runs each N×M cell once (like the
contention rows of bench/run.py, same worker and launch) and prints per run the wall
time and the CPU the N processes spent while they ran: user and system (getrusage,
summed over the processes), and process_time of each process's first call (initial
load, lazy imports) against its later calls, and how much memory each process wrote
(Linux: the growth of its private dirty pages — copies of the launcher's pages it
wrote to after the fork, and new ones; each page is a fault). On a machine with few
cores a run whose wall time is about its CPU divided by the cores is CPU-bound: only
less CPU makes it faster.

Options:

* several variants, comma-separated (``ours-key,msal-memory``), run alternately;
  ``--rounds K`` repeats the whole set K times;
* ``--phases``: also time the steps of a write (``BENCH_PHASES=1``; wraps library
  functions, which costs CPU of its own), per step the total seconds, the calls and the
  cost per acquisition; ``*_locked`` steps ran while the process held the lock;
  ``--phases cpu`` counts the CPU seconds of each step instead of wall seconds,
  ``--phases faults`` its page faults (printed as seconds: read 1.000 s as 1000 faults);
* ``--profile DIR``: a cProfile (CPU time) of every process, ``DIR/child-<i>.prof``
  (call-heavy code looks ~3x slower under it);
* ``--apart``: every process keeps its own cache (same work, nothing shared): what
  persisting costs without sharing, against the shared run's cost of sharing;
* ``--faults``: page faults by the function that took them (its own, not its callees'),
  summed over the processes of a cell, the top ones printed; compare variants side by
  side (the counting hook faults too).

The timing wraps library functions in the benchmark's own processes (bench/worker.py);
the library has no timing code.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import run as bench_run  # noqa: E402
from secret_service import PrivateSecretService  # noqa: E402

from msal_keyring_cache.testing import LoopbackIdentityProvider  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", help="comma-separated, e.g. ours-key,msal-memory")
    parser.add_argument("shapes", nargs="+", help="N×M cells, e.g. 32x15")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--phases",
        nargs="?",
        const="wall",
        choices=("wall", "cpu", "faults"),
        help="time the steps of a write, in wall (default) or CPU seconds, or page faults",
    )
    parser.add_argument("--profile", metavar="DIR", help="a cProfile per process into DIR")
    parser.add_argument("--faults", action="store_true", help="page faults by function")
    parser.add_argument("--apart", action="store_true", help="a cache per process, not shared")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    shapes = [tuple(int(x) for x in s.lower().replace("×", "x").split("x")) for s in args.shapes]
    import compileall  # bytecode first, as bench/run.py does (it says why)

    for directory in (os.path.join(ROOT, "msal_keyring_cache"), HERE):
        compileall.compile_dir(directory, quiet=1)
    secret_service = PrivateSecretService()
    with LoopbackIdentityProvider() as idp:
        bench = bench_run.Bench(False, idp.port, secret_service.start())
        if args.phases:
            bench.env["BENCH_PHASES"] = args.phases
        if args.apart:
            bench.env["BENCH_APART"] = "1"
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
            bench.env["BENCH_PROFILE"] = os.path.abspath(args.profile)
        faults = tempfile.mkdtemp(prefix="faults-") if args.faults else None
        if faults:
            bench.env["BENCH_FAULTS"] = faults
        try:
            for _round in range(args.rounds):
                for processes, each in shapes:
                    for variant in variants:
                        if not _cell(bench, variant, processes, each):
                            return 1
                        if faults:
                            _print_faults(faults)
        finally:
            if faults:
                shutil.rmtree(faults, ignore_errors=True)
            bench.cleanup()
            secret_service.stop()
    return 0


def _cell(bench: bench_run.Bench, variant: str, processes: int, each: int) -> bool:
    directory = bench.new_dir(f"phases-{variant}-{processes}")
    _code, out, err = bench.contend(variant, directory, processes, each)
    if not out.strip():
        print(err[-3000:], file=sys.stderr)
        return False
    found = json.loads(out.strip().splitlines()[-1])
    user, system = found["cpu_user"], found["cpu_sys"]
    line = (
        f"== {variant} {processes}x{each}: wall {found['wall']:.2f} s, errors "
        f"{found['errors']}, CPU {user + system:.2f} s (user {user:.2f}, sys {system:.2f}; "
        f"first calls {found['cpu_first']:.2f}, later calls {found['cpu_rest']:.2f}; "
        f"{found.get('faults', 0)} page faults, {found.get('switches', 0)} waits; "
        f"each process wrote {found.get('private_kb', 0)} KB of its memory, median; "
        f"requests before the start {'/'.join(map(str, found.get('requests_before', [])))})"
    )
    held = sorted(found["held"])
    if held:
        line += (
            f", lock held {len(held)} times, p50 {held[len(held) // 2] * 1e3:.2f} ms, "
            f"total {sum(held):.2f} s"
        )
    print(line, flush=True)
    writes = processes * each
    for name, (seconds, calls) in sorted(found.get("phases", {}).items()):
        print(
            f"   {name:22s} {seconds:8.3f} s {calls:6d} calls "
            f"{seconds / writes * 1e3:8.3f} ms/acquisition "
            f"{seconds / max(calls, 1) * 1e3:8.3f} ms/call"
        )
    return True


def _print_faults(directory: str, top: int = 20) -> None:
    """The fault counts of a cell's processes (``--faults``), by package and by function."""
    counts: collections.Counter[str] = collections.Counter()
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as fh:
            counts.update(json.load(fh))
        os.remove(os.path.join(directory, name))
    by_package: collections.Counter[str] = collections.Counter()
    for where, n in counts.items():
        by_package[where.split("/")[0] if "/" in where else where.split(":")[0]] += n
    print(f"   page faults: {sum(counts.values())}; by package (directory of the file):")
    for package, n in by_package.most_common(8):
        print(f"   {n:8d}  {package}")
    print("   by function:")
    for where, n in counts.most_common(top):
        print(f"   {n:8d}  {where}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
