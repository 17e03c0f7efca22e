"""A process that forks while a lock is held or awaited (tests/test_core_mutants.py).

usage: python -m tests.fork_child MODE LOCK_PATH
  held      take the lock, fork; the child tries the lock once ("child got it" or
            "child refused") and lives until its stdin closes; the parent says
            "forked" and waits on stdin (the test SIGKILLs it)
  awaited   (the test holds the lock) try it for 0.2 s, so that a helper thread still
            waits for it; fork; the child says "child" and lives until its stdin
            closes; the parent waits for the lock again (through the same helper: it
            says "attaching" then), says "held" once it has it and waits on stdin
  handover  a thread is inside the lock's hand-over (holds its condition) when the
            process forks; it finishes a step 0.5 s after the fork began; the child
            says "steps N": how many steps it inherited (1: the fork waited for it)
  cache     (MSAL_KEYRING_CACHE_* settings) a thread holds the cache's in-process lock
            while the process forks; the child writes one entry ("child") and exits; the
            parent prints the child's exit code, or "hung"
"""

from __future__ import annotations

import os
import sys
import threading
import time

from msal_keyring_cache import LockTimeoutError, build_cache, locking
from msal_keyring_cache.locking import CrossProcessLock


def _say(*words: object) -> None:
    """One line in one write: a parent and its forked child share the pipe."""
    os.write(1, (" ".join(map(str, words)) + "\n").encode())


def _live_until_stdin_closes() -> None:
    sys.stdin.read()
    os._exit(0)


def main(mode: str, path: str) -> int:
    if mode == "held":
        lock = CrossProcessLock(path, 5)
        lock.acquire()
        if os.fork() == 0:
            try:
                lock.acquire(0)
                _say("child got it")
            except LockTimeoutError:
                _say("child refused")
            _live_until_stdin_closes()
        _say("forked")
        sys.stdin.readline()
        return 0
    if mode == "awaited":
        lock = CrossProcessLock(path, 30)
        try:
            lock.acquire(0.2)
            return 3  # the test holds it: not reached
        except LockTimeoutError:
            pass
        if os.fork() == 0:
            _say("child")
            _live_until_stdin_closes()
        # Wait again in a thread; say "attaching" once it waits through the same helper.
        thread = threading.Thread(target=lock.acquire)
        thread.start()
        while lock._waiter is None or lock._waiter.state != locking._WAITING:
            time.sleep(0.005)
        _say("attaching")
        thread.join()
        _say("held")
        sys.stdin.readline()
        return 0
    if mode == "handover":
        lock = CrossProcessLock(path, 5)
        inside, forking, steps = threading.Event(), threading.Event(), []
        os.register_at_fork(before=forking.set)  # runs before the library's own hook

        def hand_over() -> None:
            with lock._cond:
                inside.set()
                forking.wait()
                time.sleep(0.5)
                steps.append(1)

        thread = threading.Thread(target=hand_over)
        thread.start()
        inside.wait()
        pid = os.fork()
        if pid == 0:
            _say("steps", len(steps))
            os._exit(0)
        thread.join()
        os.waitpid(pid, 0)
        return 0
    if mode == "cache":
        from tests.core_child import entry

        cache = build_cache("msal-keyring-cache-tests")
        cache.merge(entry("parent"))
        holding, done = threading.Event(), threading.Event()

        def hold() -> None:
            with cache._lock:
                holding.set()
                done.wait()

        thread = threading.Thread(target=hold)
        thread.start()
        holding.wait()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                cache.merge(entry("child"))
            except BaseException:
                code = 1
            os._exit(code)
        done.set()
        thread.join()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                _say(os.waitstatus_to_exitcode(status))
                return 0
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        _say("hung")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
