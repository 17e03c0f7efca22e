"""Where the lock-held time of a write goes: one contention cell with ``BENCH_PHASES=1``.

``python bench/phases.py ours-key 32x15 128x2`` runs each N×M cell once (like the
contention rows of bench/run.py, same worker) and prints, per step of a write, the
total seconds, the calls and the cost per acquisition; ``*_locked`` steps ran while the
process held the cross-process lock. The timing wraps library functions in the
benchmark's own processes (bench/worker.py); the library has no timing code.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import run as bench_run  # noqa: E402
from secret_service import PrivateSecretService  # noqa: E402

from msal_keyring_cache.testing import LoopbackIdentityProvider  # noqa: E402


def main(argv: list[str]) -> int:
    variant, shapes = argv[0], [tuple(int(x) for x in s.split("x")) for s in argv[1:]]
    secret_service = PrivateSecretService()
    with LoopbackIdentityProvider() as idp:
        bench = bench_run.Bench(False, idp.port, secret_service.start())
        bench.env["BENCH_PHASES"] = "1"
        try:
            for processes, each in shapes:
                directory = bench.new_dir(f"phases-{processes}")
                _code, out, err = bench.contend(variant, directory, processes, each)
                if not out.strip():
                    print(err[-3000:], file=sys.stderr)
                    return 1
                found = json.loads(out.strip().splitlines()[-1])
                held = sorted(found["held"]) or [0.0]
                writes = processes * each
                print(
                    f"== {variant} {processes}x{each}: wall {found['wall']:.2f} s, errors "
                    f"{found['errors']}, lock held {len(held)} times, p50 "
                    f"{held[len(held) // 2] * 1e3:.2f} ms, total {sum(held):.2f} s"
                )
                for name, (seconds, calls) in sorted(found["phases"].items()):
                    print(
                        f"   {name:22s} {seconds:8.3f} s {calls:6d} calls "
                        f"{seconds / writes * 1e3:8.3f} ms/acquisition "
                        f"{seconds / max(calls, 1) * 1e3:8.3f} ms/call"
                    )
        finally:
            bench.cleanup()
            secret_service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
