"""One benchmark process: ``python bench/worker.py MODE VARIANT DIR PORT [ARGS…]``.

Run by bench/run.py, never by hand. Each variant is set up the way its own docs say:

* ``msal-memory``   plain msal, in-memory ``SerializableTokenCache`` (no persistence);
* ``msal-json``     plain msal, JSON file loaded at start and saved at exit if changed
                    (the msal docs recipe);
* ``msalx-file``    msal-extensions ``PersistedTokenCache`` + ``FilePersistence``;
* ``msalx-libsecret`` msal-extensions ``LibsecretPersistence`` (needs PyGObject);
* ``ours-key`` / ``ours-pass`` / ``ours-keyring`` / ``ours-envelope``: this project,
  encrypted file with a Fernet key / a passphrase, the Secret Service, envelope mode.

``contend`` and ``lockstress`` fork their N processes from this one (bench/forking.py);
``process`` is one of N whole processes the launcher starts itself (``Bench.processes``);
``forget`` deletes what a variant keeps in the Secret Service when its cell ends.
Every request msal makes goes through :class:`CountingClient`, an observer that does not
depend on any cache's own counters.

Imports are made per variant on purpose: the cold-start rows time whole processes, so a
variant must not pay for another's libraries. Secrets (keys, passphrases) arrive in the
environment and are never printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
CLIENT_ID = "00000000-0000-0000-0000-00000000c11d"
TENANT = "loopback-tenant"
AUTHORITY = f"https://127.0.0.1/{TENANT}"
USER = "alice@example.com"
SCOPES = ["api://bench/User.Read"]


def http_client(port: int) -> Any:
    """``testing.loopback_http_client`` loaded from its file, so the plain-msal rows do not
    import (and pay for) the msal_keyring_cache package. Wrapped to count requests."""
    import importlib.util

    name = "_bench_loopback"
    if name not in sys.modules:
        path = os.path.join(ROOT, "msal_keyring_cache", "testing", "idp.py")
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return CountingClient(sys.modules[name].loopback_http_client(port))


class CountingClient:
    """msal's ``http_client=``: counts every request (an observer independent of the caches)."""

    requests = 0

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def get(self, *args: Any, **kwargs: Any) -> Any:
        type(self).requests += 1
        return self._inner.get(*args, **kwargs)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        type(self).requests += 1
        return self._inner.post(*args, **kwargs)

    def close(self) -> None:
        self._inner.close()


class Variant:
    """A token cache of one variant plus a write counter and an end-of-process hook."""

    def __init__(self, cache: Any, writes: Callable[[], int], finish: Callable[[], None]) -> None:
        self.cache = cache
        self.writes = writes
        self.finish = finish


def open_variant(name: str, directory: str, *, http_cache: bool = True) -> Variant:
    """Variant ``name`` in ``directory``; ``http_cache=False``: this project's default,
    no persisted http cache (the N×M rows, see :func:`mode_contend`)."""
    if name == "msal-memory":
        import msal

        return Variant(msal.SerializableTokenCache(), lambda: 0, lambda: None)
    if name == "msal-json":
        return _json_recipe(os.path.join(directory, "cache.json"))
    if name.startswith("msalx-"):
        return _msal_extensions(name, directory)
    if name.startswith("ours-"):
        return _ours(name, directory, http_cache)
    raise SystemExit(f"unknown variant {name}")


def _json_recipe(path: str) -> Variant:
    import atexit

    import msal

    cache = msal.SerializableTokenCache()
    if os.path.exists(path):
        with open(path) as fh:
            cache.deserialize(fh.read())
    count = [0]

    def save() -> None:
        if cache.has_state_changed:
            with open(path, "w") as fh:
                fh.write(cache.serialize())
            count[0] += 1

    atexit.register(save)
    return Variant(cache, lambda: count[0], save)


def _msal_extensions(name: str, directory: str) -> Variant:
    import msal_extensions

    class Counting(_persistence_class(name)):  # type: ignore[misc]
        saves = 0

        def save(self, content: str) -> None:
            type(self).saves += 1
            super().save(content)

    persistence = Counting(*_persistence_args(name, directory))
    cache = msal_extensions.PersistedTokenCache(persistence)
    return Variant(cache, lambda: Counting.saves, lambda: None)


_APP = "msal-keyring-cache-bench"


def _options(name: str, directory: str) -> dict[str, Any]:
    """``build_cache``'s settings for this project's variant ``name`` in ``directory``."""
    service = "bench-" + os.path.basename(directory)
    options: dict[str, Any] = {"path": os.path.join(directory, "cache.bin")}
    if name == "ours-key":
        options.update(backend="file", key=os.environ["BENCH_KEY"])
    elif name == "ours-pass":
        options.update(backend="file", passphrase=os.environ["BENCH_PASSPHRASE"])
    elif name == "ours-keyring":
        options.update(backend="keyring", keyring_service=service)
    elif name == "ours-envelope":
        options.update(backend="file", key_in_keyring=True, keyring_service=service)
    return options


def _ours(name: str, directory: str, http_cache: bool = True) -> Variant:
    import msal_keyring_cache

    options = _options(name, directory)
    import inspect

    if http_cache and "http_cache" in inspect.signature(msal_keyring_cache.build_cache).parameters:
        options["http_cache"] = True  # msal's discovery answers kept beside the cache
    cache = msal_keyring_cache.build_cache(_APP, **options)
    return Variant(cache, lambda: int(cache.store.stats.saves), cache.close)


def _persistence_class(name: str) -> Any:
    import msal_extensions

    if name == "msalx-file":
        return msal_extensions.FilePersistence
    return msal_extensions.LibsecretPersistence


def _persistence_args(name: str, directory: str) -> tuple[Any, ...]:
    location = os.path.join(directory, "cache.json")
    if name == "msalx-file":
        return (location,)
    label = os.path.basename(directory)
    return (location, "msal.bench." + label, {"bench": label})


def mode_forget(name: str, directory: str) -> dict[str, Any]:
    """Delete what variant ``name`` keeps in the Secret Service for the cache in ``directory``.

    gnome-keyring re-encrypts and rewrites its whole keyring file on every write, so what
    one cell left there would slow every write of the cells after it (4×30 with this
    project's keyring store: 0.50 s, then 0.61, 0.75, 0.86, 1.04, 1.18 s as cells kept
    their caches; 0.52-0.56 s each when every cell deleted its own). Each cell deletes
    its own when it ends, so every cell starts from the same keyring.
    """
    if name == "msalx-libsecret":
        persistence = _persistence_class(name)(*_persistence_args(name, directory))
        persistence._agent.clear()  # msal-extensions has no public way to delete
    elif name in ("ours-keyring", "ours-envelope"):
        import keyring

        from msal_keyring_cache import manage
        from msal_keyring_cache.config import Settings
        from msal_keyring_cache.factory import envelope_account

        settings = Settings.resolve(app_name=_APP, **_options(name, directory))
        manage.clear(settings)  # what ``msal-keyring-cache clear`` does
        if settings.key_in_keyring:  # the envelope's key stays on a sign-out: not here
            keyring.delete_password(settings.service, envelope_account(settings))
    return {"ok": True}


def _http_cache(variant: Variant) -> dict[str, Any]:
    """``http_cache=`` for msal when the cache offers a persisted one (``cache.http_cache``)."""
    found = getattr(variant.cache, "http_cache", None)
    return {} if found is None else {"http_cache": found}


def public_app(variant: Variant, port: int) -> Any:
    import msal

    return msal.PublicClientApplication(
        CLIENT_ID,
        authority=AUTHORITY,
        http_client=http_client(port),
        instance_discovery=False,
        token_cache=variant.cache,
        **_http_cache(variant),
    )


def confidential_app(variant: Variant, port: int) -> Any:
    import msal

    return msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential="secret",
        authority=AUTHORITY,
        http_client=http_client(port),
        instance_discovery=False,
        token_cache=variant.cache,
        **_http_cache(variant),
    )


def sign_in(app: Any) -> None:
    result = app.acquire_token_by_username_password(USER, "pw", SCOPES)
    if "access_token" not in result:
        raise SystemExit(f"sign-in failed: {result.get('error')}")


def silent(app: Any, account: Any) -> None:
    result = app.acquire_token_silent(SCOPES, account)
    if not result or result.get("token_source") != "cache":
        raise SystemExit("silent hit missed the cache")


# -- modes ---------------------------------------------------------------------------


def mode_setup(variant: Variant, port: int) -> dict[str, Any]:
    sign_in(public_app(variant, port))
    variant.finish()
    return {"ok": True}


def mode_cold(variant: Variant, port: int) -> dict[str, Any]:
    app = public_app(variant, port)
    accounts = app.get_accounts()
    if not accounts:
        raise SystemExit("no account in the cache")
    silent(app, accounts[0])
    variant.finish()
    # Every request msal made, from building the app to the token: discovery included.
    return {"requests": CountingClient.requests}


def mode_warm(variant: Variant, port: int, calls: int) -> dict[str, Any]:
    app = public_app(variant, port)
    sign_in(app)
    account = app.get_accounts()[0]
    for _ in range(50):
        silent(app, account)
    batch = max(calls // 9, 1)
    means = []
    for _ in range(9):
        start = time.perf_counter()
        for _ in range(batch):
            silent(app, account)
        means.append((time.perf_counter() - start) / batch * 1e6)
    means.sort()
    return {"us": means[len(means) // 2], "us_min": means[0]}


def mode_counts(variant: Variant, port: int, other_dir: str, name: str) -> dict[str, Any]:
    app = public_app(variant, port)
    counts: dict[str, Any] = {}
    before = variant.writes()
    sign_in(app)
    variant.finish()  # the JSON recipe saves once per command
    counts["sign_in"] = variant.writes() - before
    account = app.get_accounts()[0]

    before = variant.writes()
    result = app.acquire_token_silent(SCOPES, account, force_refresh=True)
    assert result
    assert "access_token" in result
    variant.finish()
    counts["refresh"] = variant.writes() - before

    before = variant.writes()
    silent(app, account)
    variant.finish()
    counts["silent_hit"] = variant.writes() - before

    other = open_variant(name, other_dir)
    capp = confidential_app(other, port)
    capp.acquire_token_for_client(["api://bench/warmup/.default"])
    other.finish()
    before = other.writes()
    result = capp.acquire_token_for_client(["api://bench/miss/.default"])
    assert result.get("token_source") == "identity_provider"
    other.finish()
    counts["cc_miss"] = other.writes() - before
    return counts


#: ``BENCH_HTTP_CACHE=1``: the N×M rows give this project its http cache (the old start).
_HTTP_CACHE = bool(os.environ.get("BENCH_HTTP_CACHE"))


def mode_contend(name: str, directory: str, port: int, processes: int, count: int) -> None:
    """N forked processes x M client-credential misses into one cache, released together.

    Every process (here and in :func:`mode_process`) enters the timed region in the same
    state: its app built, msal's discovery fetched (one request, ``requests_before``), so
    its connection to the provider is open. This project runs with ``build_cache``'s
    defaults, without the persisted http cache: with it, a process makes no discovery
    request and its first token request would open that connection inside the timed
    region — on the loopback provider a new server thread per process, which the other
    variants paid before the start. The http cache is measured where it saves requests:
    the cold rows. ``BENCH_HTTP_CACHE=1`` gives this project's processes the http cache
    here too, to measure what that start costs them.
    """
    import resource

    from forking import run_children

    preload(name)

    held: list[float] = []  # this child's critical sections (ours only), seconds
    phases: dict[str, list[float]] = {}  # BENCH_PHASES=1: where the held time goes
    if name.startswith("ours-"):
        _time_critical_sections(held)
        if os.environ.get("BENCH_PHASES"):
            _time_phases(phases)

    def prepare(index: int) -> Callable[[], dict[str, Any]]:
        # BENCH_APART=1: every process its own cache (persistence without sharing)
        own = directory
        if os.environ.get("BENCH_APART"):
            own = os.path.join(directory, f"apart-{index}")
            os.makedirs(own, mode=0o700, exist_ok=True)
        variant = open_variant(name, own, http_cache=_HTTP_CACHE)
        app = confidential_app(variant, port)
        requests_before = CountingClient.requests

        def run() -> dict[str, Any]:
            faults = os.environ.get("BENCH_FAULTS")
            if faults:
                with _faults_by_function(os.path.join(faults, f"child-{index}.json")):
                    return timed_run()
            profile = os.environ.get("BENCH_PROFILE")
            if not profile:
                return timed_run()
            import cProfile

            profiler = cProfile.Profile(time.process_time)  # CPU time: waits do not count
            profiler.enable()
            try:
                return timed_run()
            finally:
                profiler.disable()
                profiler.dump_stats(os.path.join(profile, f"child-{index}.prof"))

        def timed_run() -> dict[str, Any]:
            owned = _private_kb()
            before = resource.getrusage(resource.RUSAGE_SELF)
            out = calls()
            after = resource.getrusage(resource.RUSAGE_SELF)
            out["private_kb"] = _private_kb() - owned
            out["cpu"] = [after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime]
            out["faults"] = after.ru_minflt - before.ru_minflt  # copy-on-write after fork, …
            out["switches"] = after.ru_nvcsw - before.ru_nvcsw  # waits (voluntary switches)
            return out

        def calls() -> dict[str, Any]:
            out = _acquisitions(app, variant, name, index, count)
            out.update(held=held, phases=phases, requests_before=requests_before)
            return out

        return run

    results, wall = run_children(processes, prepare)
    times = [t for r in results for t in r.get("times", [])]
    crashes = [r["crash"] for r in results if "crash" in r]
    summary = {
        "wall": wall,
        "errors": sum(r.get("errors", 0) for r in results) + count * len(crashes),
        "kinds": sorted({k for r in results for k in r.get("kinds", [])} | set(crashes))[:5],
        "times": times,
        "own_tokens": sum(r.get("own_tokens", 0) for r in results),
        "requests_before": sorted(
            {r["requests_before"] for r in results if "requests_before" in r}
        ),
        "stored": [s for r in results for s in r.get("stored", [])],
        "held": [h for r in results for h in r.get("held", [])],
        "phases": _sum_phases([r.get("phases", {}) for r in results]),
        # CPU of the children while they ran (getrusage), and of each one's first call
        # (initial load, lazy imports) against its later calls (process_time)
        "cpu_user": sum(r.get("cpu", [0.0, 0.0])[0] for r in results),
        "cpu_sys": sum(r.get("cpu", [0.0, 0.0])[1] for r in results),
        "faults": sum(r.get("faults", 0) for r in results),
        "private_kb": sorted(r.get("private_kb", 0) for r in results)[len(results) // 2],
        "switches": sum(r.get("switches", 0) for r in results),
        "cpu_first": sum(r["cpu_calls"][0] for r in results if r.get("cpu_calls")),
        "cpu_rest": sum(sum(r["cpu_calls"][1:]) for r in results if r.get("cpu_calls")),
    }
    sys.stdout.write(json.dumps(summary) + "\n")


def _acquisitions(app: Any, variant: Variant, name: str, index: int, count: int) -> dict[str, Any]:
    """``count`` client-credential misses (a scope of this process's own each): the
    errors, time and CPU of each call, and the scopes acquired."""
    errors, kinds, times, stored = 0, [], [], []
    cpu: list[float] = []  # CPU seconds (user + system) of each call
    for i in range(count):
        cpu_start = time.process_time()
        start = time.perf_counter()
        scope = f"api://bench/p{index}/s{i}/.default"
        try:
            result = app.acquire_token_for_client([scope])
            if "access_token" in result:
                stored.append(scope)
            else:
                errors += 1
                kinds.append(str(result.get("error")))
        except Exception as exc:  # the benchmark counts failures; it does not stop
            errors += 1
            kinds.append(type(exc).__name__)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    try:
        variant.finish()
    except Exception as exc:
        errors += 1
        kinds.append(type(exc).__name__)
    out: dict[str, Any] = {
        "errors": errors,
        "kinds": kinds[:5],
        "times": times,
        "stored": stored,
        "cpu_calls": cpu,
    }
    if name == "msal-memory":  # no shared cache: count what this process holds
        out["own_tokens"] = len(variant.cache._cache.get("AccessToken", {}))
    return out


def mode_process(name: str, directory: str, port: int, index: int, count: int) -> None:
    """One whole process of N started together: imports, opens the cache and the app, says
    ``ready``, waits for ``go`` on stdin, makes its ``count`` acquisitions and exits (the
    launcher times go → the last exit, as the issue's first measurement did)."""
    preload(name)
    variant = open_variant(name, directory, http_cache=_HTTP_CACHE)  # see mode_contend
    app = confidential_app(variant, port)
    requests_before = CountingClient.requests
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    out = _acquisitions(app, variant, name, index, count)
    out["requests_before"] = requests_before
    sys.stdout.write(json.dumps(out) + "\n")


#: What the launcher of a contention run imports before it forks, for each variant: its
#: library, and what that library imports lazily on its first write (or under contention
#: only). Every variant gets the same treatment: a long-running app has paid its imports
#: before its hundredth token, and the timed region is about the writes, not the imports.
PRELOAD: dict[str, tuple[str, ...]] = {
    "msal": ("msal",),
    "msalx": ("msal_extensions",),
    "ours": (
        "msal_keyring_cache",
        "msal_keyring_cache.factory",
        "msal_keyring_cache.stores.file",
        "msal_keyring_cache.batch",
        "fcntl",
        "cryptography.exceptions",
        "cryptography.hazmat.bindings._rust",  # crypto._aesgcm: the AES-GCM class
    ),
    "ours-keyring": ("msal_keyring_cache.stores.credential", "keyring", "jeepney"),
    "ours-http": ("msal_keyring_cache.http_cache",),  # only with BENCH_HTTP_CACHE=1
}


def preload(name: str) -> None:
    """Import ``PRELOAD``'s modules for variant ``name`` (msal for every variant).

    ``BENCH_PRELOAD=msal`` preloads msal only (what the launcher did before: to measure
    what preloading the rest changes).
    """
    import contextlib
    import importlib

    groups = ["msal", name.split("-")[0]]
    if name in ("ours-keyring", "ours-envelope"):
        groups.append("ours-keyring")
    if _HTTP_CACHE and name.startswith("ours-"):
        groups.append("ours-http")
    if os.environ.get("BENCH_PRELOAD") == "msal":
        groups = ["msal"]
    for group in groups:
        for module in PRELOAD.get(group, ()):
            with contextlib.suppress(ImportError):  # optional (jeepney off Linux): loaded when used
                importlib.import_module(module)


def _private_kb() -> int:
    """The memory this process has made its own (KB): pages it wrote since the fork (its
    copies of the launcher's pages, and new ones). Linux only; 0 elsewhere."""
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Private_Dirty:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def _faults_by_function(path: str) -> Iterator[None]:
    """``BENCH_FAULTS=DIR``: the page faults of this process, by the function that took them.

    A profile hook reads the process's fault count at every call and return, and charges
    the difference to the function running (its own faults, not its callees'); C
    functions are named ``C:<name>``. The hook's own allocations fault too, so read the
    counts side by side with another variant's, not as absolute figures.
    """
    import collections
    import resource

    counts: collections.Counter[str] = collections.Counter()
    stack: list[str] = []
    last = [resource.getrusage(resource.RUSAGE_SELF).ru_minflt]

    def hook(frame: Any, event: str, arg: Any) -> None:
        now = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        counts[stack[-1] if stack else "?"] += now - last[0]
        if event == "call":
            code = frame.f_code
            where = "/".join(code.co_filename.split(os.sep)[-2:])
            stack.append(f"{where}:{code.co_name}")
        elif event == "c_call":
            stack.append("C:" + str(getattr(arg, "__qualname__", arg)))
        elif stack:
            stack.pop()
        last[0] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    sys.setprofile(hook)
    try:
        yield
    finally:
        sys.setprofile(None)
        with open(path, "w") as fh:
            json.dump(counts, fh)


def _time_critical_sections(held: list[float]) -> None:
    """Record how long each outermost hold of this project's lock lasts (bench only).

    Every way of taking the lock counts: ``acquire`` (what ``with`` does) and the
    no-wait ``attempt``.
    """
    from msal_keyring_cache import locking

    cls = locking.CrossProcessLock
    leave = cls.__exit__
    started: dict[int, float] = {}

    def timing(take: Callable[..., Any]) -> Callable[..., Any]:
        def timed(self: Any, *args: Any) -> Any:
            result = take(self, *args)
            if self._depth == 1 and result:
                started[id(self)] = time.perf_counter()
            return result

        return timed

    def timed_exit(self: Any, *exc: Any) -> None:
        if self._depth == 1 and id(self) in started:
            held.append(time.perf_counter() - started.pop(id(self)))
        leave(self, *exc)

    for name in ("acquire", "attempt", "__enter__"):
        if hasattr(cls, name) and (name != "__enter__" or not hasattr(cls, "acquire")):
            setattr(cls, name, timing(getattr(cls, name)))
    cls.__exit__ = timed_exit  # type: ignore[method-assign]


_HOLDING = [0]  # > 0 while this process holds the cross-process lock (bench only)


def _time_phases(phases: dict[str, list[float]]) -> None:
    """``BENCH_PHASES=1``: time the steps of a write, inside and outside the lock.

    Each phase collects ``[seconds, calls]``; ``*_locked`` phases ran while this process
    held the lock. Wraps library functions in this benchmark process only.
    """
    import resource

    from msal_keyring_cache import batch, cache, crypto, locking, watch
    from msal_keyring_cache.stores import file

    # BENCH_PHASES=cpu: CPU seconds of the process (all its threads), not wall seconds;
    # =faults: page faults (copy-on-write after the fork, fresh memory), counted as "seconds"
    clock: Callable[[], float] = {
        "cpu": time.process_time,
        "faults": lambda: float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt),
    }.get(os.environ.get("BENCH_PHASES", ""), time.perf_counter)

    def timed(owner: Any, attr: str, label: str) -> None:
        inner = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                key = label + ("_locked" if _HOLDING[0] else "")
                slot = phases.setdefault(key, [0.0, 0])
                slot[0] += clock() - start
                slot[1] += 1

        setattr(owner, attr, wrapper)

    timed(cache.PersistentTokenCache, "_check", "check")
    timed(cache.PersistentTokenCache, "_sync", "sync")
    timed(cache.PersistentTokenCache, "_write_grouped", "write_grouped")
    timed(batch, "join", "batch_join")
    timed(cache.PersistentTokenCache, "_catch_up", "catch_up")
    timed(cache.PersistentTokenCache, "_reload", "reload")
    timed(cache.PersistentTokenCache, "_persist", "persist")
    timed(file.EncryptedFileStore, "read_changes", "read_changes")
    timed(file.EncryptedFileStore, "load", "load")
    timed(file.EncryptedFileStore, "save", "save")
    timed(file.EncryptedFileStore, "_write_at", "write_at")
    timed(crypto, "seal", "seal")
    timed(crypto, "unseal", "unseal")
    timed(os, "fsync", "fsync")
    timed(watch.Generation, "begin", "gen_begin")
    timed(watch.Generation, "end", "gen_end")
    cls = locking.CrossProcessLock
    leave = cls.__exit__
    acquire, attempt = cls.acquire, getattr(cls, "attempt", None)
    mine: set[int] = set()

    def holding_acquire(self: Any, *args: Any) -> Any:
        start = clock()
        result = acquire(self, *args)
        if self._depth == 1:
            slot = phases.setdefault("lock_wait", [0.0, 0])
            slot[0] += clock() - start
            slot[1] += 1
            _HOLDING[0] += 1
            mine.add(id(self))
        return result

    def holding_attempt(self: Any) -> bool:
        taken = bool(attempt(self))  # type: ignore[misc]
        if taken and self._depth == 1:
            _HOLDING[0] += 1
            mine.add(id(self))
            slot = phases.setdefault("lock_attempted", [0.0, 0])
            slot[1] += 1
        return taken

    def holding_exit(self: Any, *exc: Any) -> None:
        if self._depth == 1 and id(self) in mine:
            mine.discard(id(self))
            _HOLDING[0] -= 1
        leave(self, *exc)

    cls.acquire = holding_acquire  # type: ignore[method-assign]
    if attempt is not None:
        cls.attempt = holding_attempt  # type: ignore[method-assign]
    cls.__exit__ = holding_exit  # type: ignore[method-assign]
    timed(cache.PersistentTokenCache, "_follow", "follow")
    timed(cache.PersistentTokenCache, "_lead", "lead")


def _sum_phases(parts: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    total: dict[str, list[float]] = {}
    for part in parts:
        for key, (seconds, calls) in part.items():
            slot = total.setdefault(key, [0.0, 0])
            slot[0] += seconds
            slot[1] += calls
    return total


def mode_lockstress(name: str, directory: str, processes: int, count: int) -> None:
    """N forked processes each take the lock ``count`` times with an empty critical section.

    Inside the lock each increments a counter file (read, write back): a lock that lets
    two holders in at once loses increments, and the final count shows it.
    """
    from forking import run_children

    path = os.path.join(directory, "stress.lock")
    counter = os.path.join(directory, "counter")
    with open(counter, "w") as fh:
        fh.write("0")
    if name == "ours":
        from msal_keyring_cache.locking import CrossProcessLock

        def make() -> Any:
            return CrossProcessLock(path, 60.0)
    else:
        from msal_extensions import CrossPlatLock  # whichever the installed one uses

        def make() -> Any:
            return CrossPlatLock(path)

    def prepare(_: int) -> Callable[[], dict[str, Any]]:
        lock = make()

        def run() -> dict[str, Any]:
            errors, times = 0, []
            for _ in range(count):
                start = time.perf_counter()
                try:
                    with lock:
                        times.append(time.perf_counter() - start)
                        with open(counter, "r+") as fh:
                            value = int(fh.read() or 0)
                            fh.seek(0)
                            fh.write(str(value + 1))
                            fh.truncate()
                except Exception:
                    errors += 1
            return {"errors": errors, "times": times}

        return run

    results, wall = run_children(processes, prepare, wait_for_go=False)
    with open(counter) as fh:
        final = int(fh.read() or 0)
    done = sum(len(r.get("times", [])) for r in results)
    summary = {
        "wall": wall,
        "errors": sum(r.get("errors", 0) for r in results),
        "crashes": sum(1 for r in results if "crash" in r),
        "acquired": done,
        # acquisitions whose increment vanished: two holders were inside at once
        "overlaps": done - final,
        "times": [t for r in results for t in r.get("times", [])],
    }
    sys.stdout.write(json.dumps(summary) + "\n")


def mode_tally(variant: Variant) -> dict[str, Any]:
    """How many access tokens the shared cache holds now (after a contention run)."""
    cache = variant.cache
    entries = list(cache.search("AccessToken"))
    targets = [e.get("target", "") for e in entries]
    return {"targets": [t for t in targets if t.startswith("api://bench/p")]}


def mode_seed(variant: Variant, seed_file: str) -> dict[str, Any]:
    with open(seed_file) as fh:
        state = fh.read()
    cache = variant.cache
    if hasattr(cache, "store"):  # ours: one transaction, one write
        cache.deserialize(state)
    elif hasattr(cache, "_persistence"):  # msal-extensions: save the persistence directly
        cache._persistence.save(state)
    else:  # the JSON recipe
        cache.deserialize(state)
        cache.has_state_changed = True
        variant.finish()
    return {"ok": True}


def mode_scale(name: str, directory: str, port: int) -> dict[str, Any]:
    import resource

    # Importing the libraries is measured on its own (cold rows); lazy imports a first
    # load triggers (cryptography, keyring) do count here. This package loads its modules
    # on first use of a name: build_cache is looked up here, as msal_extensions is imported
    # whole, so both rows time the load and not the library's own import.
    import msal  # noqa: F401

    if name.startswith("msalx-"):
        import msal_extensions  # noqa: F401
    elif name.startswith("ours-"):
        import msal_keyring_cache

        assert msal_keyring_cache.build_cache
    http_client(port)
    start = time.perf_counter()
    variant = open_variant(name, directory)  # the JSON recipe loads here, the others lazily
    first = time.perf_counter() - start
    app = confidential_app(variant, port)
    hit = ["api://scale/0/.default"]
    start = time.perf_counter()
    result = app.acquire_token_for_client(hit)
    first += time.perf_counter() - start
    assert result.get("token_source") == "cache", result.get("error")
    start = time.perf_counter()
    for _ in range(20):
        app.acquire_token_for_client(hit)
    warm = (time.perf_counter() - start) / 20
    start = time.perf_counter()
    # a scope no earlier round wrote: every round measures a real miss
    result = app.acquire_token_for_client(
        [f"api://scale/new-{os.getpid()}-{time.time_ns()}/.default"]
    )
    miss = time.perf_counter() - start
    assert result.get("token_source") == "identity_provider"
    start = time.perf_counter()
    variant.finish()  # the JSON recipe saves here: part of its write cost
    miss += time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"first_ms": first * 1e3, "warm_us": warm * 1e6, "miss_ms": miss * 1e3, "rss_mb": rss}


def main(argv: list[str]) -> None:
    mode, name, directory, port_text, *rest = argv
    port = int(port_text)
    if mode == "scale":  # times the opening itself
        sys.stdout.write(json.dumps(mode_scale(name, directory, port)) + "\n")
        return
    if mode == "contend":  # forks its processes; each opens the cache itself
        mode_contend(name, directory, port, int(rest[0]), int(rest[1]))
        return
    if mode == "process":  # one of N whole processes, released together
        mode_process(name, directory, port, int(rest[0]), int(rest[1]))
        return
    if mode == "tally" and os.environ.get("BENCH_APART"):  # the caches of an apart run
        targets: list[str] = []
        for sub in sorted(os.listdir(directory)):
            if sub.startswith("apart-"):
                targets += mode_tally(open_variant(name, os.path.join(directory, sub)))["targets"]
        sys.stdout.write(json.dumps({"targets": targets}) + "\n")
        return
    if mode == "forget":
        sys.stdout.write(json.dumps(mode_forget(name, directory)) + "\n")
        return
    if mode == "lockstress":
        mode_lockstress(name, directory, int(rest[0]), int(rest[1]))
        return
    variant = open_variant(name, directory)
    out: Optional[dict[str, Any]]
    if mode == "setup":
        out = mode_setup(variant, port)
    elif mode == "cold":
        out = mode_cold(variant, port)
    elif mode == "warm":
        out = mode_warm(variant, port, int(rest[0]))
    elif mode == "counts":
        out = mode_counts(variant, port, rest[0], name)
    elif mode == "tally":
        out = mode_tally(variant)
    elif mode == "seed":
        out = mode_seed(variant, rest[0])
    else:
        raise SystemExit(f"unknown mode {mode}")
    if out:
        sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
