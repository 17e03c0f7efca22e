"""A separate process writing to a shared cache, for the group-commit tests.

usage: python -m tests.batch_child MODE [ARGS...]
  write START COUNT     COUNT merges of one access token each (keys kSTART..), one msal-style
                        write per merge; prints "role ROLE" for each write that met a busy
                        lock, then "done" (and "sets N" for a keyring store)
  lead WHEN KEY         one merge of KEY; prints its group role; it SIGKILLs itself
                        "before" its store write, or "after" it (before answering its
                        followers)
  follow KEY            one merge of KEY; prints its group role, then "done"
  unsynced KEY          one merge of KEY, uncontended; SIGKILLs itself between releasing
                        the lock and the fsync
  fork CHILDREN COUNT   forks CHILDREN processes after one write; each writes COUNT entries
Settings come from MSAL_KEYRING_CACHE_* in the environment. Compaction is turned off
(BATCH_NO_COMPACT=1) so that the test can count the journal records in the file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from msal_keyring_cache import batch, build_cache
from msal_keyring_cache.stores import file


def entry(key: str) -> str:
    """A cache document with one access token under ``key`` (its secret names the key)."""
    doc = {
        "AccessToken": {
            key: {
                "credential_type": "AccessToken",
                "secret": "secret-" + key,
                "expires_on": "4102444800",
                "home_account_id": "",
                "environment": "127.0.0.1",
                "client_id": "c",
                "target": key,
                "realm": "t",
            }
        }
    }
    return json.dumps(doc)


def main(argv: list[str]) -> int:
    if os.environ.get("BATCH_NO_COMPACT"):
        file.MAX_RECORDS = 10**9
        file.MIN_JOURNAL_BYTES = 1 << 40
    mode = argv[0]
    cache = build_cache("msal-keyring-cache-tests")
    join = batch.join

    def announcing(*args: Any) -> Any:
        role = join(*args)
        name = {batch.Leader: "leader", batch.Ticket: "follower"}.get(type(role), "alone")
        print("role", name, flush=True)
        return role

    batch.join = announcing  # type: ignore[assignment]
    if mode == "write":
        start, count = int(argv[1]), int(argv[2])
        for i in range(start, start + count):
            cache.merge(entry(f"k{i}"))
        print("done", flush=True)
        calls = getattr(cache.store, "calls", None)  # a keyring store counts its set calls
        if calls is not None:
            print("sets", calls["set"], flush=True)
        return 0
    if mode in ("lead", "follow"):
        when, key = (argv[1], argv[2]) if mode == "lead" else ("", argv[1])
        store: Any = cache.store
        if when == "before":
            store.append = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        elif when == "after":  # written and the lock released, not yet fsynced or answered
            cache._sync = lambda wrote: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
        cache.merge(entry(key))
        print("done", flush=True)
        return 0
    if mode == "unsynced":  # one write alone, SIGKILLed after the lock, before its fsync
        cache._sync = lambda wrote: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
        cache.merge(entry(argv[1]))
        return 1
    if mode == "fork":
        children, count = int(argv[1]), int(argv[2])
        cache.merge(entry("parent"))
        pids = []
        for c in range(children):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    for i in range(count):
                        cache.merge(entry(f"f{c}-{i}"))
                except BaseException:
                    code = 1
                os._exit(code)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        print(json.dumps(codes), flush=True)
        return 0
    print("unknown mode", mode, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
