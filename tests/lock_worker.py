"""Real processes for the lock and scale tests (run by tests/test_locking.py, test_processes.py).

usage: python -m tests.lock_worker MODE ARGS...
  hold PATH                 take the lock, print "held", release when a line arrives on stdin
  try PATH TIMEOUT          take the lock once; print {"ok", "waited", "error"}
  stress PATH N K COUNTER   fork N children released together; each takes the lock K times
                            and increments COUNTER inside it (a read-modify-write that loses
                            counts unless the lock excludes); prints a summary
  greedy PATH SECONDS       take and release the lock in a tight loop for SECONDS
  fork PATH                 fork while holding / after holding / with a timed-out wait;
                            prints {check: true/false}
  cc PORT N EACH            fork N children, each builds the cache from MSAL_KEYRING_CACHE_*
                            and makes EACH client-credential misses (api://t/pI/sJ/.default)

One launcher forks the children after importing once: every child is a real, separate
process (its own pid, descriptors and lock), without paying a fresh interpreter each.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

DEFAULT_TIMEOUT = float(os.environ.get("LOCK_WORKER_TIMEOUT", "60"))  # library default: 60


def _lock(path: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    from msal_keyring_cache.locking import CrossProcessLock

    return CrossProcessLock(path, timeout)


def hold(path: str) -> int:
    lock = _lock(path)
    with lock:
        print("held", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    return 0


def try_once(path: str, timeout: str) -> int:
    from msal_keyring_cache.errors import CacheError

    lock = _lock(path, float(timeout))
    start = time.monotonic()
    out: dict[str, Any] = {"ok": False, "error": None}
    try:
        with lock:
            out["ok"] = True
            out["waited"] = time.monotonic() - start
    except CacheError as exc:
        out["waited"] = time.monotonic() - start
        out["error"] = type(exc).__name__
    print(json.dumps(out), flush=True)
    return 0


def _fork_all(count: int, body: Callable[[int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Fork ``count`` children that start ``body(i)`` together; their JSON results."""
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pids = []
    for i in range(count):
        pid = os.fork()
        if pid == 0:  # the child
            os.close(go_w)
            os.close(out_r)
            os.close(ready_r)
            code = 0
            try:
                prepare = body(i)  # returns a ready-to-run closure via "run"
                os.write(ready_w, b"r")
                os.read(go_r, 1)  # blocks until the launcher closes the write end
                result = prepare["run"]()
            except BaseException as exc:
                result = {"crash": f"{type(exc).__name__}: {exc}"}
                code = 1
            line = (json.dumps(result) + "\n").encode()
            os.write(out_w, line)  # one write < PIPE_BUF: never interleaved
            os._exit(code)
        pids.append(pid)
    os.close(go_r)
    os.close(out_w)
    os.close(ready_w)
    seen = 0
    while seen < count:
        chunk = os.read(ready_r, count - seen)
        if not chunk:
            break
        seen += len(chunk)
    print(f"ready {seen}", file=sys.stderr, flush=True)
    os.close(go_w)  # every child's read returns at once: all start together
    data = b""
    while True:
        chunk = os.read(out_r, 65536)
        if not chunk:
            break
        data += chunk
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    results = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    missing = count - len(results)
    results += [{"crash": "no result"}] * missing
    for status in statuses:
        if status and os.WIFSIGNALED(status):
            results.append({"crash": f"signal {os.WTERMSIG(status)}"})
    return results


def stress(path: str, processes: str, each: str, counter: str) -> int:
    from msal_keyring_cache.errors import CacheError

    k = int(each)
    with open(counter, "w") as fh:
        fh.write("0")

    def body(_: int) -> dict[str, Any]:
        lock = _lock(path)

        def run() -> dict[str, Any]:
            done, errors, worst = 0, 0, 0.0
            for _ in range(k):
                start = time.monotonic()
                try:
                    with lock:
                        worst = max(worst, time.monotonic() - start)
                        with open(counter, "r+") as fh:
                            value = int(fh.read() or 0)
                            fh.seek(0)
                            fh.write(str(value + 1))
                            fh.truncate()
                        done += 1
                except CacheError:
                    errors += 1
            return {"done": done, "errors": errors, "worst_wait": worst}

        return {"run": run}

    start = time.monotonic()
    results = _fork_all(int(processes), body)
    wall = time.monotonic() - start
    with open(counter) as fh:
        final = int(fh.read())
    summary = {
        "done": sum(r.get("done", 0) for r in results),
        "errors": sum(r.get("errors", 0) for r in results),
        "crashes": [r["crash"] for r in results if "crash" in r],
        "min_done": min(r.get("done", 0) for r in results),
        "counter": final,
        "wall": wall,
        "worst_wait": max(r.get("worst_wait", 0.0) for r in results),
    }
    print(json.dumps(summary), flush=True)
    return 0


def greedy(path: str, seconds: str) -> int:
    lock = _lock(path)
    end = time.monotonic() + float(seconds)
    rounds = 0
    print("started", flush=True)
    while time.monotonic() < end:
        with lock:
            rounds += 1
    print(json.dumps({"rounds": rounds}), flush=True)
    return 0


def client_credentials(port: str, processes: str, each: str) -> int:
    import msal

    from msal_keyring_cache import build_cache
    from msal_keyring_cache.testing import loopback_http_client

    m = int(each)

    def body(index: int) -> dict[str, Any]:
        cache = build_cache("msal-keyring-cache-tests")
        app = msal.ConfidentialClientApplication(
            "00000000-0000-0000-0000-00000000c11d",
            client_credential="s",
            authority="https://127.0.0.1/loopback-tenant",
            http_client=loopback_http_client(int(port)),
            instance_discovery=False,
            token_cache=cache,
        )

        def run() -> dict[str, Any]:
            stored, errors, kinds = [], 0, []
            for j in range(m):
                scope = f"api://t/p{index}/s{j}/.default"
                try:
                    result = app.acquire_token_for_client([scope])
                except Exception as exc:  # counted, reported by kind
                    errors += 1
                    kinds.append(type(exc).__name__)
                    continue
                if "access_token" in result:
                    stored.append(scope)
                else:
                    errors += 1
                    kinds.append(str(result.get("error")))
            return {"stored": stored, "errors": errors, "kinds": kinds}

        return {"run": run}

    results = _fork_all(int(processes), body)
    summary = {
        "stored": sorted(s for r in results for s in r.get("stored", [])),
        "errors": sum(r.get("errors", 0) for r in results),
        "kinds": sorted({k for r in results for k in r.get("kinds", [])}),
        "crashes": [r["crash"] for r in results if "crash" in r],
    }
    print(json.dumps(summary), flush=True)
    return 0


def _in_child(check: Callable[[], bool]) -> bool:
    """Run ``check`` in a forked child; whether it returned True there."""
    pid = os.fork()
    if pid == 0:
        try:
            ok = check()
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    return os.waitpid(pid, 0)[1] == 0


def fork(path: str) -> int:
    from msal_keyring_cache.errors import LockTimeoutError

    def times_out(lock: Any, timeout: float) -> bool:
        lock.timeout = timeout
        try:
            with lock:
                return False
        except LockTimeoutError:
            return True

    def takes(lock: Any, timeout: float) -> bool:
        lock.timeout = timeout
        with lock:
            return bool(lock.held)

    checks: dict[str, bool] = {}
    holder, other = _lock(path), _lock(path)
    with holder:
        # A child forked inside the parent's critical section holds nothing, cannot take
        # the lock while the parent has it, and leaving the block frees nothing.
        def child_of_holder() -> bool:
            if holder.held or _open_on(path):
                return False
            holder.__exit__(None, None, None)  # the block the parent entered ends here too
            return times_out(holder, 0.3) and times_out(_lock(path), 0.3)

        checks["child forked while held: excluded, frees nothing"] = _in_child(child_of_holder)
        checks["parent still holds after the child left"] = times_out(other, 0.2)
        # `other` now has an abandoned helper thread blocked on the lock.
        go_r, go_w = os.pipe()

        def child_with_abandoned_wait() -> bool:
            inherited = _open_on(path)  # the parent's waiting descriptor must be closed too
            os.read(go_r, 1)  # until the parent released
            return not inherited and takes(other, 10) and takes(holder, 10)

        pid = os.fork()
        if pid == 0:
            os._exit(0 if _safe(child_with_abandoned_wait) else 1)
    os.write(go_w, b"g")  # released: the child may now take it
    checks["child of a parent with a timed-out wait takes the lock"] = os.waitpid(pid, 0)[1] == 0
    checks["parent's timed-out wait re-attaches and takes it"] = takes(other, 10)
    checks["child forked after the parent held it takes it"] = _in_child(lambda: takes(holder, 10))
    checks["child's descriptors are not inherited by exec"] = _in_child(
        lambda: _no_inheritable_fds(holder)
    )
    print(json.dumps(checks), flush=True)
    return 0


def _open_on(path: str) -> list[str]:
    """This process's descriptors open on ``path`` (from /proc: an outside observer)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == os.path.abspath(path):
                found.append(fd)
        except OSError:
            continue
    return found


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except BaseException:
        return False


def _no_inheritable_fds(lock: Any) -> bool:
    with lock:
        fd = lock._fd
        return fd is not None and not os.get_inheritable(fd)


def main(argv: list[str]) -> int:
    modes: dict[str, Callable[..., int]] = {
        "hold": hold,
        "try": try_once,
        "stress": stress,
        "greedy": greedy,
        "cc": client_credentials,
        "fork": fork,
    }
    return modes[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
