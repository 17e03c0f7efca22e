"""A separate process for the core tests (tests/test_core_mutants.py).

usage: python -m tests.core_child OP [OP...]
  merge:K          merge one access token under key K (see :func:`entry`)
  rt:K             merge one refresh token under key rt-K
  delete:K         remove K the msal way (``modify`` with no new values)
  replace:K,K...   deserialize a cache holding just these keys (a whole rewrite)
  wait             print "waiting", then read one line from stdin
Each OP prints "ok OP SECONDS" or "error OP EXCEPTION-CLASS SECONDS" (the time the call
took, measured here, after the interpreter started). Writes that wait for a busy lock
print their group-commit role first: "role leader|follower|alone IDENT".
Settings come from MSAL_KEYRING_CACHE_* in the environment. Faults, by environment:
  CORE_FSYNC_FAILS=1    the first fsync fails with EIO (after the cache is built)
  CORE_APPEND_FAILS=1   the first journal append fails (StoreError)
  CORE_GRACE=SECONDS    a follower waits this long for its leader before trying the lock
Compaction is off (the tests count journal records).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from typing import Any

from msal_keyring_cache import StoreError, batch, build_cache
from msal_keyring_cache import cache as cache_module
from msal_keyring_cache.stores import file

ACCESS_TOKEN = "AccessToken"


def fields(name: str) -> dict[str, Any]:
    """The access token named ``name`` (its target), as msal stores it."""
    return {
        "credential_type": ACCESS_TOKEN,
        "secret": "secret-" + name,
        "expires_on": "4102444800",
        "home_account_id": "",
        "environment": "127.0.0.1",
        "client_id": "c",
        "target": name,
        "realm": "t",
    }


def refresh(name: str) -> dict[str, Any]:
    """The refresh token named ``name``."""
    return {
        "credential_type": "RefreshToken",
        "secret": "rt-" + name,
        "home_account_id": "",
        "environment": "127.0.0.1",
        "client_id": "c",
    }


def key(name: str) -> str:
    """msal's cache key of :func:`fields` (what ``modify`` and ``remove_at`` look up)."""
    return "-127.0.0.1-accesstoken-c-t-" + name


def entry(*names: str) -> str:
    """A cache document holding the access tokens ``names``."""
    return json.dumps({ACCESS_TOKEN: {key(n): fields(n) for n in names}})


def main(argv: list[str]) -> int:
    if os.environ.get("CORE_GRACE"):
        cache_module._GRACE = float(os.environ["CORE_GRACE"])
    file.MAX_RECORDS = 10**9
    file.MIN_JOURNAL_BYTES = 1 << 40
    cache = build_cache("msal-keyring-cache-tests")
    join = batch.join

    def announcing(meet: str, ident: str, change: bytes) -> Any:
        role = join(meet, ident, change)
        name = {batch.Leader: "leader", batch.Ticket: "follower"}.get(type(role), "alone")
        print("role", name, ident, flush=True)
        return role

    batch.join = announcing  # type: ignore[assignment]
    if os.environ.get("CORE_FSYNC_FAILS"):
        fsync, fsync_failed = os.fsync, []

        def fsync_once(fd: int) -> None:
            if not fsync_failed:
                fsync_failed.append(1)
                raise OSError(errno.EIO, "Input/output error")
            fsync(fd)

        os.fsync = fsync_once
    if os.environ.get("CORE_APPEND_FAILS"):
        store: Any = cache.store
        append, append_failed = store.append, []

        def append_once(*args: Any) -> None:
            if not append_failed:
                append_failed.append(1)
                raise StoreError("injected: the disk is gone")
            append(*args)

        store.append = append_once
    for op in argv:
        verb, _, arg = op.partition(":")
        started = time.monotonic()
        try:
            if verb == "merge":
                cache.merge(entry(arg))
            elif verb == "rt":
                cache.merge(json.dumps({"RefreshToken": {"rt-" + arg: refresh(arg)}}))
            elif verb == "delete":
                cache.modify(ACCESS_TOKEN, fields(arg), None)
            elif verb == "replace":
                cache.deserialize(entry(*arg.split(",")))
            elif verb == "wait":
                print("waiting", flush=True)
                sys.stdin.readline()
            else:
                print("unknown op", op, file=sys.stderr)
                return 2
        except Exception as exc:  # reported to the test, which decides
            print("error", op, type(exc).__name__, time.monotonic() - started, flush=True)
        else:
            print("ok", op, time.monotonic() - started, flush=True)
    cache.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
