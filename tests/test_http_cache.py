"""msal's http_cache persisted beside the token cache: zero requests on a cold silent hit,
sealed (tampered, foreign, oversized, expired entries are refused or dropped), shared by
real processes, and never holding token text."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import msal
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msal_keyring_cache import Settings, build_cache, generate_key, manage
from msal_keyring_cache.crypto import FernetKeys
from msal_keyring_cache.errors import CorruptCacheError
from msal_keyring_cache.http_cache import (
    FORMAT,
    MAX_BYTES,
    MAX_ENTRIES,
    MAX_ENTRY_BYTES,
    MAX_LIFETIME,
    Entry,
    HttpCache,
    SealedFile,
    dump,
    parse,
)
from msal_keyring_cache.testing import LoopbackIdentityProvider
from tests.helpers import PYTHON, ROOT, child_env, require

CLIENT_ID = "00000000-0000-0000-0000-00000000c11d"
DISCOVERY = "/v2.0/.well-known/openid-configuration"
SERVICE = "http-cache-tests"  # the app name CHILD uses: its credential-store service

# A fresh process with a fresh msal app: a silent acquisition, counting every request its
# http client sends (the provider's log counts what arrives; both must be 0).
CHILD = """
import json, sys
import msal
from msal_keyring_cache import build_cache
from msal_keyring_cache.testing import loopback_http_client

port, authority, options, use = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
cache = build_cache("http-cache-tests", http_cache=use == "1", **options)
session = loopback_http_client(int(port))
sent = []
send = session.send
session.send = lambda request, **kw: sent.append(request.method) or send(request, **kw)
app = msal.PublicClientApplication(
    "00000000-0000-0000-0000-00000000c11d", authority=authority, http_client=session,
    instance_discovery=False, token_cache=cache,
    http_cache=cache.http_cache if use == "1" else None,
)
accounts = app.get_accounts()
result = app.acquire_token_silent(["User.Read"], account=accounts[0]) if accounts else None
if not accounts:
    result = app.acquire_token_by_username_password("alice@example.com", "pw", ["User.Read"])
print(json.dumps({"sent": len(sent), "source": (result or {}).get("token_source")}))
"""


def run_child(
    idp: LoopbackIdentityProvider,
    options: dict[str, Any],
    *,
    use: bool = True,
    authority: str = "",
) -> dict[str, Any]:
    """Run CHILD; returns its report plus ``served``: requests the provider received."""
    before = len(idp.requests)
    proc = subprocess.run(
        [
            PYTHON,
            "-c",
            CHILD,
            str(idp.port),
            authority or idp.authority,
            json.dumps(options),
            "1" if use else "0",
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    report["served"] = len(idp.requests) - before
    report["stderr"] = proc.stderr
    return report


def file_options(tmp_path: Path, key: str) -> dict[str, Any]:
    return {"backend": "file", "path": str(tmp_path / "c" / "token_cache.bin"), "key": key}


def sign_in(idp: LoopbackIdentityProvider, options: dict[str, Any]) -> Any:
    """Sign in in this process with an http cache; returns the cache."""
    cache = build_cache("http-cache-tests", http_cache=True, **options)
    app = idp.public_app(token_cache=cache, http_cache=cache.http_cache)
    result = app.acquire_token_by_username_password("alice@example.com", "pw", ["User.Read"])
    assert "access_token" in result
    return cache


def fresh(cache: Any) -> HttpCache:
    """A new HttpCache on the same store: what a new process would see."""
    return HttpCache.beside(cache.store)


def discovery_entry(idp: LoopbackIdentityProvider, *, token_endpoint: str = "") -> Entry:
    doc = {
        "token_endpoint": token_endpoint or idp.authority + "/oauth2/v2.0/token",
        "authorization_endpoint": idp.authority + "/oauth2/v2.0/authorize",
        "issuer": "https://127.0.0.1/x/v2.0",
    }
    now = int(time.time())
    key = f"GET {idp.authority}{DISCOVERY} hash=0 2xx"
    return Entry(key, now + 3600, now, 200, {"content-type": "application/json"}, json.dumps(doc))


# -- zero requests on a cold silent hit -----------------------------------------------------


def test_second_process_makes_no_request_of_any_kind(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str
) -> None:
    options = file_options(tmp_path, key)
    first = run_child(idp, options)  # signs in: discovery, user realm, token
    assert first["source"] == "identity_provider"
    assert first["sent"] == first["served"] == 3
    for _ in range(2):
        again = run_child(idp, options)
        assert again["source"] == "cache"
        assert again["sent"] == 0
        assert again["served"] == 0
    # Without the http cache the same silent hit costs one discovery request.
    plain = run_child(idp, options, use=False)
    assert plain["source"] == "cache"
    assert plain["sent"] == plain["served"] == 1
    assert idp.requests[-1].path.endswith(DISCOVERY)


@pytest.mark.secret_service
def test_second_process_makes_no_request_with_the_real_secret_service(
    idp: LoopbackIdentityProvider, tmp_path: Path, use_secret_service: Any
) -> None:
    options = {"backend": "keyring", "path": str(tmp_path / "kr" / "token_cache.bin")}
    first = run_child(idp, options)
    assert first["source"] == "identity_provider"
    again = run_child(idp, options)
    assert (again["source"], again["sent"], again["served"]) == ("cache", 0, 0)
    # A sibling entry in the credential store, naming the cache it belongs to; no file.
    import keyring

    names = [a["username"] for a, _ in use_secret_service.items() if a["service"] == SERVICE]
    assert sorted(names) == ["token-cache", "token-cache.http"]
    value = keyring.get_password(SERVICE, "token-cache.http")
    doc = json.loads(value)
    assert doc["cache"] == "keyring:http-cache-tests\0token-cache"
    assert any(DISCOVERY in e["key"] for e in doc["entries"])
    assert not any(t[:40] in value for t in idp.issued)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".http")]
    assert_no_token_text(idp, tmp_path)
    # A sign-out deletes both entries.
    manage.clear(Settings.resolve(environ={}, app_name=SERVICE, **options))
    names = [a["username"] for a, _ in use_secret_service.items() if a["service"] == SERVICE]
    assert names == []


def test_processes_share_and_merge_their_entries(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str
) -> None:
    options = file_options(tmp_path, key)
    run_child(idp, options)
    tenants = [f"https://127.0.0.1/tenant-{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", CHILD, str(idp.port), t, json.dumps(options), "1"],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for t in tenants
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    cache = build_cache("http-cache-tests", http_cache=True, **options)
    mapping = cache.http_cache
    assert isinstance(mapping, HttpCache)
    mapping["_index_"]
    keys = " ".join(mapping)
    for tenant in [idp.authority, *tenants]:
        assert f"GET {tenant}{DISCOVERY}" in keys  # no process lost another's entry
    # Every one of them is now served without a request.
    for tenant in tenants:
        report = run_child(idp, options, authority=tenant)
        assert report["sent"] == report["served"] == 0


# -- sealed: tampered, foreign, oversized, expired ------------------------------------------


def _tamper(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    end = blob.index(b"\n")
    blob[end + 40] ^= 0x01  # inside the encrypted record
    path.write_bytes(bytes(blob))


def test_a_tampered_file_is_refused_and_replaced(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = file_options(tmp_path, key)
    run_child(idp, options)
    sealed = tmp_path / "c" / "token_cache.bin.http"
    _tamper(sealed)
    report = run_child(idp, options)
    assert (report["source"], report["sent"], report["served"]) == ("cache", 1, 1)
    assert "was not used (CorruptCacheError" in report["stderr"]
    assert idp.requests[-1].path.endswith(DISCOVERY)  # fetched again, not the tampered one
    assert run_child(idp, options)["served"] == 0  # the refetch replaced the file


def test_a_file_under_another_key_is_refused(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = sign_in(idp, file_options(tmp_path, key))
    path = cache.http_cache.place.where
    evil = discovery_entry(idp, token_endpoint="https://127.0.0.1/evil/oauth2/v2.0/token")
    other = SealedFile(path, lambda: FernetKeys((generate_key(),)))
    with other.lock:
        other.write(dump({evil.key: evil}, f"file:{cache.store.path}"))
    mapping = fresh(cache)
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        index = mapping["_index_"]
    assert index == ([], {})
    assert mapping.stats["refused"] == 1
    assert "DecryptError" in caplog.text


def test_a_file_copied_from_another_cache_is_refused(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Same key (one key configured for two apps), but the file names the other cache.
    mine = sign_in(idp, file_options(tmp_path / "mine", key))
    theirs = sign_in(idp, file_options(tmp_path / "theirs", key))
    Path(mine.http_cache.place.where).write_bytes(Path(theirs.http_cache.place.where).read_bytes())
    mapping = fresh(mine)
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        assert mapping["_index_"] == ([], {})
    assert "belongs to another token cache" in caplog.text
    # msal then fetches the discovery document again and uses the real one.
    idp.reset()
    app = idp.public_app(token_cache=mine, http_cache=mapping)
    assert app.acquire_token_silent(["User.Read"], account=app.get_accounts()[0])
    assert [r.path for r in idp.requests] == [f"/{idp.tenant}{DISCOVERY}"]
    assert fresh(mine)["_index_"] != ([], {})  # and the file is ours again


def test_a_forged_discovery_document_is_never_used(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str
) -> None:
    """Written under the right key and binding but by hand: still only what msal stores."""
    cache = sign_in(idp, file_options(tmp_path, key))
    file = cache.http_cache.place
    binding = f"file:{cache.store.path}"
    evil = discovery_entry(idp, token_endpoint="https://127.0.0.1/evil/oauth2/v2.0/token")
    # Without the key, no forgery passes: a plaintext document in the file is refused.
    Path(file.path).write_bytes(dump({evil.key: evil}, binding))
    mapping = fresh(cache)
    assert mapping["_index_"] == ([], {})
    assert mapping.stats["refused"] == 1


def _write(cache: Any, entries: list[Entry]) -> None:
    """Write entries as a process holding the key would (bypassing the mapping's checks)."""
    file = SealedFile(cache.http_cache.place.where, lambda: cache.store.key_source)
    doc = json.loads(dump({}, f"file:{cache.store.path}"))
    doc["entries"] = [e.to_json() for e in entries]
    with file.lock:
        file.write(json.dumps(doc).encode())


def test_expired_oversized_and_unknown_entries_are_dropped(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = sign_in(idp, file_options(tmp_path, key))
    good = discovery_entry(idp)
    now = int(time.time())
    expired = Entry("GET https://127.0.0.1/old hash=0 2xx", now - 1, now - 100, 200, {}, "{}")
    future = Entry("GET https://127.0.0.1/future hash=0 2xx", now + 200, now + 100, 200, {}, "{}")
    too_long = Entry("GET https://127.0.0.1/long hash=0 2xx", now + 10**6, now, 200, {}, "{}")
    big = Entry(
        "GET https://127.0.0.1/big hash=0 2xx", now + 60, now, 200, {}, "x" * MAX_ENTRY_BYTES
    )
    token_reply = Entry("POST https://127.0.0.1/t hash=0 429", now + 60, now, 200, {}, "{}")
    throttled = Entry("POST https://127.0.0.1/t hash=1 429", now + 60, now, 429, {}, "{}")
    _write(cache, [good, expired, future, too_long, big, token_reply, throttled])
    mapping = fresh(cache)
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        _sequence, timestamps = mapping["_index_"]
    assert sorted(timestamps) == sorted([good.key, throttled.key])
    assert mapping.stats["dropped"] == 3  # too_long, big, token_reply (expiry is silent)
    assert "3 entries that are malformed, too large" in caplog.text
    value = mapping[good.key]
    assert isinstance(value, msal.throttled_http_client.NormalizedResponse)
    assert (value.status_code, json.loads(value.text)) == (200, json.loads(good.text))
    value.raise_for_status()  # msal's own object, rebuilt


def test_an_oversized_file_is_refused_unread(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str
) -> None:
    cache = sign_in(idp, file_options(tmp_path, key))
    Path(cache.http_cache.place.where).write_bytes(b"{" + b" " * (MAX_BYTES * 2) + b"\n")
    mapping = fresh(cache)
    assert mapping["_index_"] == ([], {})
    assert mapping.stats["refused"] == 1


def test_entries_are_bounded_by_count_and_size(tmp_path: Path, key: str) -> None:
    cache = build_cache("bounded", backend="file", path=str(tmp_path / "b.bin"), key=key)
    mapping = HttpCache.beside(cache.store)
    expiring = msal.throttled_http_client.ExpiringMapping(mapping=mapping, capacity=1024)
    for i in range(MAX_ENTRIES + 40):
        response = msal.throttled_http_client.NormalizedResponse(
            _Raw(200, "\x00" * 8000 if i % 2 else "{}")  # JSON: 48 KB
        )
        expiring.set(f"GET https://127.0.0.1/{i:04d} hash=0 2xx", response, 3600 + i)
    assert len(mapping) == MAX_ENTRIES + 40  # msal keeps them all in memory
    assert mapping.place is not None
    assert MAX_BYTES // 2 < len(mapping.place.read() or b"") <= MAX_BYTES  # the document
    again = HttpCache.beside(cache.store)
    _sequence, timestamps = again["_index_"]
    assert 0 < len(timestamps) <= MAX_ENTRIES
    kept_expiry = min(e for e, _c in timestamps.values())
    dropped = [i for i in range(MAX_ENTRIES + 40) if f"/{i:04d} " not in " ".join(timestamps)]
    assert all(3600 + i <= kept_expiry for i in dropped)  # the soonest-expiring went first


class _Raw:
    def __init__(self, status: int, text: str, headers: Any = None) -> None:
        self.status_code, self.text, self.headers = status, text, headers or {}


def test_expired_entries_are_refetched_and_dropped_from_the_file(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str
) -> None:
    options = file_options(tmp_path, key)
    cache = sign_in(idp, options)
    now = int(time.time())
    stale = discovery_entry(idp)
    stale = Entry(stale.key, now - 1, now - 3600, 200, stale.headers, stale.text)
    _write(cache, [stale])
    report = run_child(idp, options)
    assert (report["sent"], report["served"]) == (1, 1)
    assert idp.requests[-1].path.endswith(DISCOVERY)
    assert run_child(idp, options)["served"] == 0


def test_a_failed_write_is_logged_and_msal_carries_on(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = file_options(tmp_path, key)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "token_cache.bin.http").mkdir()  # cannot be read nor replaced
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        cache = sign_in(idp, options)
    assert "Could not save the http cache" in caplog.text
    assert len(cache.http_cache) >= 1  # still serves from memory


def test_throttling_is_shared_by_processes(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str
) -> None:
    """A 400 for a refresh is cached 60 s by msal; a second process reuses it, no request."""
    options = file_options(tmp_path, key)
    cache = sign_in(idp, options)
    app = idp.public_app(token_cache=cache, http_cache=cache.http_cache)
    account = app.get_accounts()[0]
    idp.fail_next("invalid_grant", status=400)
    first = app.acquire_token_silent_with_error(["Other.Scope"], account=account)
    assert first
    assert first.get("error") == "invalid_grant"
    stored = fresh(cache)
    assert any(k.startswith("POST ") and k.endswith(" 400") for k in stored["_index_"][1])
    idp.reset()
    other = idp.public_app(token_cache=fresh_cache(options), http_cache=fresh(cache))
    again = other.acquire_token_silent_with_error(["Other.Scope"], account=account)
    assert again
    assert again.get("error") == "invalid_grant"
    assert idp.requests == []


def fresh_cache(options: dict[str, Any]) -> Any:
    return build_cache("http-cache-tests", **options)


# -- no token text --------------------------------------------------------------------------


def assert_no_token_text(idp: LoopbackIdentityProvider, *roots: Path) -> None:
    issued = [t for t in idp.issued if len(t) >= 40]
    assert issued
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                assert not any(t[:40].encode() in blob for t in issued), path


def test_no_token_text_in_the_http_cache_or_the_logs(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = file_options(tmp_path, key)
    with caplog.at_level(logging.DEBUG, logger="msal_keyring_cache"):
        cache = sign_in(idp, options)
        app = idp.public_app(token_cache=cache, http_cache=cache.http_cache)
        account = app.get_accounts()[0]
        idp.throttle_next(retry_after=30)
        app.acquire_token_silent_with_error(["A.Scope"], account=account)
        app.acquire_token_silent(["User.Read"], account=account, force_refresh=True)
        # A token answer msal would cache (a 2xx POST with Retry-After) stays in memory.
        token_answer = msal.throttled_http_client.NormalizedResponse(
            _Raw(200, json.dumps({"access_token": idp.issued[-1]}), {"Retry-After": "30"})
        )
        expiring = msal.throttled_http_client.ExpiringMapping(mapping=cache.http_cache)
        answer_key = "POST https://127.0.0.1/token-answer hash=x 429/5xx/Retry-After"
        expiring.set(answer_key, token_answer, 30)
        index = fresh(cache)["_index_"]
    assert any(k.startswith("POST ") for k in index[1])  # the 429 was stored
    assert answer_key not in index[1]  # the token answer was not (msal's own keys carry a hex hash)
    plaintext = cache.http_cache.place.read()
    for token in idp.issued:
        assert token[:40] not in plaintext.decode()
        assert token[:40] not in caplog.text
    assert_no_token_text(idp, tmp_path)


# -- the parser, fuzzed ---------------------------------------------------------------------

BINDING = "file:/x/token_cache.bin"
NOW = 1_700_000_000
texts = st.text(max_size=20)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)
entry_like = st.fixed_dictionaries(
    {
        "key": st.sampled_from(["GET https://a/ hash=0 2xx", "POST https://a/ x 400", "_index_"])
        | texts,
        "expires_at": st.integers(NOW - 10, NOW + 2 * MAX_LIFETIME) | values,
        "created_at": st.integers(NOW - 10, NOW + 10) | values,
        "status": st.sampled_from([200, 204, 400, 429, 500, 302, 0, 999]) | values,
        "headers": st.dictionaries(texts, texts, max_size=3) | values,
        "text": texts | values,
    }
)
documents = st.fixed_dictionaries(
    {
        "format": st.just(FORMAT) | texts,
        "version": st.just(1) | values,
        "cache": st.just(BINDING) | texts,
        "entries": st.lists(entry_like | values, max_size=6) | values,
    }
)


def _check(data: bytes) -> None:
    try:
        entries, dropped = parse(data, BINDING, NOW)
    except CorruptCacheError:  # our refusal; anything else fails the test
        return
    assert dropped >= 0
    assert len(entries) <= MAX_ENTRIES
    for key, entry in entries.items():
        assert key == entry.key != "_index_"
        assert entry.fresh(NOW)
        assert entry.expires_at - entry.created_at <= MAX_LIFETIME
        assert entry.size <= MAX_ENTRY_BYTES
        assert entry.key.startswith(("GET ", "POST "))
        assert (200 <= entry.status < 300) if entry.key.startswith("GET ") else entry.status >= 400
    assert parse(dump(entries, BINDING), BINDING, NOW) == (entries, 0)  # round trip


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_parser_fuzz_documents(doc: dict[str, Any]) -> None:
    _check(json.dumps(doc).encode())


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200) | values.map(lambda v: json.dumps(v).encode()))
def test_parser_fuzz_bytes(data: bytes) -> None:
    _check(data)


# -- the demo -------------------------------------------------------------------------------


def test_the_demo_shows_a_second_process_making_no_request(tmp_path: Path) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "msal_keyring_cache", "demo", "--json"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True
    assert doc["child"]["token_source"] == "cache"
    assert doc["child"]["requests"] == 0
    assert doc["child"]["other_paths"] == []


# -- failures around the file: busy lock, unusable key ---------------------------------------

HOLD_LOCK = """
import sys
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_busy_lock_costs_at_most_its_timeout_and_the_write_follows_later(
    idp: LoopbackIdentityProvider, tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = {**file_options(tmp_path, key), "lock_timeout": 0.5}
    lock_path = str(tmp_path / "c" / "token_cache.bin.http.lock")
    (tmp_path / "c").mkdir()
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLD_LOCK, lock_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
            started = time.monotonic()
            cache = sign_in(idp, options)
            assert time.monotonic() - started < 30  # bounded by the lock timeouts
        assert "Could not save the http cache" in caplog.text
        assert "LockTimeoutError" in caplog.text
        assert not Path(cache.http_cache.place.where).exists()
    finally:
        holder.communicate("", timeout=30)
    # The entries stayed pending in memory; the next change writes them too.
    now = int(time.time())
    response = msal.throttled_http_client.NormalizedResponse(_Raw(200, "{}"))
    expiring = msal.throttled_http_client.ExpiringMapping(mapping=cache.http_cache)
    expiring.set("GET https://127.0.0.1/later hash=0 2xx", response, 3600)
    stored = fresh(cache)["_index_"][1]
    assert "GET https://127.0.0.1/later hash=0 2xx" in stored
    assert any(DISCOVERY in k for k in stored)
    assert all(c <= now + 1 for _e, c in stored.values())


def test_set_cookie_headers_are_not_written(tmp_path: Path, key: str) -> None:
    cache = build_cache("cookies", backend="file", path=str(tmp_path / "k.bin"), key=key)
    mapping = HttpCache.beside(cache.store)
    headers = {"Set-Cookie": "fpc=AsecretCookie; path=/", "Content-Type": "application/json"}
    response = msal.throttled_http_client.NormalizedResponse(_Raw(200, "{}", headers))
    expiring = msal.throttled_http_client.ExpiringMapping(mapping=mapping)
    expiring.set("GET https://127.0.0.1/d hash=0 2xx", response, 3600)
    assert mapping.place is not None
    plaintext = mapping.place.read() or b""
    assert b"AsecretCookie" not in plaintext
    assert fresh(cache)["GET https://127.0.0.1/d hash=0 2xx"].headers == {
        "content-type": "application/json"
    }


@pytest.mark.secret_service
def test_a_locked_credential_store_leaves_the_http_cache_in_memory(
    idp: LoopbackIdentityProvider,
    tmp_path: Path,
    use_secret_service: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = {"backend": "keyring", "path": str(tmp_path / "kl" / "token_cache.bin")}
    cache = build_cache("http-cache-locked", http_cache=True, keyring_timeout=20, **options)
    use_secret_service.lock()  # the http cache's entry cannot be read now
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        for _ in range(3):
            app = idp.public_app(token_cache=cache, http_cache=cache.http_cache)
            app.get_accounts()  # msal made its discovery request and went on
    assert "was not used (BackendUnavailableError" in caplog.text
    assert "Could not save the http cache" in caplog.text
    assert caplog.text.count("BackendUnavailableError") == 2  # asked once, then left alone
    assert len(cache.http_cache) == 1
    use_secret_service.unlock()
    names = [
        a["username"]
        for a, _ in use_secret_service.items()
        if a.get("service") == "http-cache-locked"
    ]
    assert "token-cache.http" not in names


# -- the reference: what a cold silent hit costs without this -------------------------------

REFERENCE = """
import json, os, sys
import msal
from msal_keyring_cache.testing import loopback_http_client

port, kind, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
session = loopback_http_client(port)
sent = []
send = session.send
session.send = lambda request, **kw: sent.append(request.method) or send(request, **kw)
path = os.path.join(root, kind)
if kind == "plain":  # msal's own SerializableTokenCache in a JSON file
    cache = msal.SerializableTokenCache()
    if os.path.exists(path):
        cache.deserialize(open(path).read())
else:  # msal-extensions
    from msal_extensions import FilePersistence, PersistedTokenCache
    cache = PersistedTokenCache(FilePersistence(path))
app = msal.PublicClientApplication(
    "00000000-0000-0000-0000-00000000c11d", authority="https://127.0.0.1/loopback-tenant",
    http_client=session, instance_discovery=False, token_cache=cache,
)
accounts = app.get_accounts()
result = app.acquire_token_silent(["User.Read"], account=accounts[0]) if accounts else None
if not accounts:
    result = app.acquire_token_by_username_password("alice@example.com", "pw", ["User.Read"])
if kind == "plain":
    open(path, "w").write(cache.serialize())
print(json.dumps({"sent": len(sent), "source": (result or {}).get("token_source")}))
"""


@pytest.mark.parametrize("kind", ["plain", "extensions"])
def test_reference_caches_make_one_request_on_a_cold_silent_hit(
    idp: LoopbackIdentityProvider, tmp_path: Path, kind: str
) -> None:
    if kind == "extensions":
        require(importlib.util.find_spec("msal_extensions") is not None, "no msal-extensions")
    argv = [PYTHON, "-c", REFERENCE, str(idp.port), kind, str(tmp_path)]
    for expected in ("identity_provider", "cache"):
        before = len(idp.requests)
        proc = subprocess.run(
            argv, cwd=ROOT, env=child_env(), capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["source"] == expected
    assert report["sent"] == len(idp.requests) - before == 1  # the discovery document
    assert idp.requests[-1].path.endswith(DISCOVERY)


def test_entries_taken_in_while_msal_updates_its_index_are_kept(tmp_path: Path, key: str) -> None:
    """msal peeks at its index, then sets it back; what another process wrote between stays."""
    cache = build_cache("interleave", backend="file", path=str(tmp_path / "i.bin"), key=key)
    mine, theirs = HttpCache.beside(cache.store), HttpCache.beside(cache.store)
    response = msal.throttled_http_client.NormalizedResponse(_Raw(200, "{}"))
    sequence, timestamps = mine["_index_"]  # msal's peek
    msal.throttled_http_client.ExpiringMapping(mapping=theirs).set(
        "GET https://o/ 2xx", response, 60
    )
    assert mine.get("GET https://o/ 2xx") is not None  # taken in (a read between peek and set)
    now = int(time.time())
    timestamps["GET https://m/ 2xx"] = [now + 60, now]
    mine["GET https://m/ 2xx"] = response
    mine["_index_"] = (sequence, timestamps)  # msal's set, from the older peek
    assert sorted(fresh(cache)["_index_"][1]) == ["GET https://m/ 2xx", "GET https://o/ 2xx"]
    assert sorted(mine) == ["GET https://m/ 2xx", "GET https://o/ 2xx"]


@pytest.mark.secret_service
def test_foreign_and_damaged_credential_store_entries_are_refused_and_replaced(
    idp: LoopbackIdentityProvider, tmp_path: Path, use_secret_service: Any
) -> None:
    import keyring

    options = {"backend": "keyring", "path": str(tmp_path / "kd" / "token_cache.bin")}
    sign_in(idp, options)
    evil = discovery_entry(idp, token_endpoint="https://127.0.0.1/evil/oauth2/v2.0/token")
    foreign = dump({evil.key: evil}, "keyring:another-app\0token-cache").decode()
    for value, why in [(foreign, "belongs to another token cache"), ("{not json", "not JSON")]:
        keyring.set_password("http-cache-tests", "token-cache.http", value)
        report = run_child(idp, options)
        assert (report["source"], report["served"]) == ("cache", 1), why
        assert why in report["stderr"]
        assert idp.requests[-1].path.endswith(DISCOVERY)
        assert run_child(idp, options)["served"] == 0  # the refetch replaced the entry


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.binary(max_size=300)
    | st.builds(
        lambda header, rest: header + b"\n" + rest,
        st.sampled_from(
            [
                b'{"format":"msal-keyring-cache","version":1,"kdf":"none","fp":"x","gen":"1"}',
                b'{"format":"msal-keyring-cache","version":1,"kdf":"scrypt","fp":"x","gen":"1"}',
                b"{}",
            ]
        ),
        st.binary(max_size=200),
    )
)
def test_hostile_files_are_refused_without_an_exception(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "hostile.bin"
    path.write_bytes(b"")
    mapping = HttpCache(
        SealedFile(str(path) + ".http", lambda: FernetKeys((KEY,))), binding=f"file:{path}"
    )
    Path(str(path) + ".http").write_bytes(blob)
    assert mapping["_index_"] == ([], {})
    assert mapping.stats["refused"] + mapping.stats["dropped"] >= (1 if blob else 0)


KEY = generate_key()


def _open_files_under(directory: Path) -> list[str]:
    """Paths under ``directory`` this process holds open (the kernel's view, /proc)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def test_closing_the_cache_closes_its_http_cache_too(
    idp: LoopbackIdentityProvider, tmp_path: Path
) -> None:
    require(Path("/proc/self/fd").is_dir(), "no /proc on this system")
    cache = sign_in(idp, file_options(tmp_path, generate_key()))
    assert cache.http_cache is not None
    assert len(cache.http_cache) > 0
    assert any(p.endswith(".http") for p in _open_files_under(tmp_path))  # kept open to watch
    cache.close()
    assert not any(p.endswith(".http") for p in _open_files_under(tmp_path))
