"""Tests that replace weak ones (issue 17): each asserts the behaviour it names, at defined
steps instead of at random times, without sleeping, and sees the success case too.

Superseded (to delete at merge): test_file_store.py::test_header_parser_only_raises_cache_errors
and ::test_decrypt_of_any_header_only_raises_cache_errors; test_keyring_store.py::
test_a_reader_racing_a_writer_never_sees_a_mixed_generation; test_cache_behaviour.py::
test_no_token_text_in_debug_logs_over_sign_in_and_refresh; test_processes.py::
test_writers_killed_at_random_never_lose_a_returned_write; test_cli.py::
test_console_script_matches_module.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msal_keyring_cache import CacheError, build_cache, crypto, generate_key
from msal_keyring_cache.stores.credential import KeyringStore
from msal_keyring_cache.testing import LoopbackIdentityProvider
from tests.fakes import MemoryKeyring, SizeLimitedKeyring
from tests.helpers import PYTHON, ROOT, child_env, file_env, require

APP = "msal-keyring-cache-tests"
KEY = generate_key()
OTHER_KEY = generate_key()

# -- the file format: fuzzing that also sees every success --------------------------------

plaintexts = st.binary(max_size=300) | st.text(max_size=100).map(lambda t: t.encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plaintext=plaintexts,
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    cut=st.none() | st.integers(0, 10_000),
)
def test_a_file_decrypts_to_exactly_its_plaintext_or_raises_a_cache_error(
    plaintext: bytes, edits: list[tuple[int, int]], cut: Optional[int]
) -> None:
    source = crypto.FernetKeys((KEY,))
    blob = crypto.encrypt(plaintext, source)
    header, _ = crypto.parse_header(blob)
    assert header.fp == crypto.fingerprint(KEY)
    assert crypto.decrypt(blob, source)[0] == plaintext  # the round trip, every example
    damaged = bytearray(blob)
    for position, value in edits:
        damaged[position % len(damaged)] = value
    if cut is not None:
        damaged = damaged[: cut % (len(damaged) + 1)]
    try:
        result, _ = crypto.decrypt(bytes(damaged), source)
    except CacheError:
        return
    assert result == plaintext  # an edit may only touch what is not authenticated
    with pytest.raises(CacheError):  # and never decrypts under another key
        crypto.decrypt(bytes(damaged), crypto.FernetKeys((OTHER_KEY,)))


_HEADER_FIELDS = ["format", "version", "kdf", "fp", "gen", "salt", "n", "r", "p", "source"]
_PASSPHRASE = "fuzz passphrase"
_SALT = bytes(range(16))
_SMALL_N = 2**10  # valid and cheap: the fuzzer derives keys a few hundred times


def _passphrase_file(plaintext: bytes) -> tuple[dict[str, Any], bytes]:
    """A valid scrypt header doc and its snapshot token, made without the library's writer."""
    key = crypto.Passphrase(_PASSPHRASE).derive(_SALT, _SMALL_N, 8, 1)
    doc = {
        "format": "msal-keyring-cache", "version": crypto.VERSION, "kdf": "scrypt",
        "fp": crypto.fingerprint(key), "gen": "9f" * 16, "source": "passphrase",
        "salt": base64.b64encode(_SALT).decode(), "n": _SMALL_N, "r": 8, "p": 1,
    }  # fmt: skip
    header = crypto.Header(doc["fp"], doc["gen"], "scrypt", "passphrase", _SALT, _SMALL_N, 8, 1)
    return doc, crypto.seal(plaintext, key, header, 0)


field_values = (
    st.none()
    | st.booleans()
    | st.integers(-2, 2**12)  # in-range scrypt costs stay small: see _SMALL_N
    | st.sampled_from([2**10, 2**11, 8, 1, 2**21, 33, 17, 0])
    | st.text(max_size=30)
    | st.just(base64.b64encode(_SALT).decode())
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plaintext=plaintexts,
    changes=st.dictionaries(st.sampled_from(_HEADER_FIELDS), field_values, max_size=3),
    dropped=st.sets(st.sampled_from(_HEADER_FIELDS), max_size=2),
)
def test_any_header_decrypts_only_when_valid(
    plaintext: bytes, changes: dict[str, Any], dropped: set[str]
) -> None:
    doc, token = _passphrase_file(plaintext)
    source = crypto.Passphrase(_PASSPHRASE)
    valid = json.dumps(doc).encode() + b"\n" + token
    assert crypto.decrypt(valid, source)[0] == plaintext  # the unchanged file, every example
    edited = {k: v for k, v in {**doc, **changes}.items() if k not in dropped}
    blob = json.dumps(edited).encode() + b"\n" + token
    try:
        result, header = crypto.decrypt(blob, source)
    except CacheError:
        return
    assert result == plaintext
    # Only "source" (untrusted, for status) may differ in a header that still decrypts:
    # every field the key or the records' binding depends on must be the original.
    for name in set(changes) | dropped:
        if name != "source":
            assert edited.get(name) == doc[name], name
    assert header.fp == doc["fp"]


def test_an_edited_header_generation_is_detected(tmp_path: Path) -> None:
    source = crypto.FernetKeys((KEY,))
    blob = crypto.encrypt(b'{"AccessToken":{}}', source)
    line, rest = blob.split(b"\n", 1)
    doc = json.loads(line)
    doc["gen"] = "0" * len(doc["gen"])
    with pytest.raises(CacheError):
        crypto.decrypt(json.dumps(doc).encode() + b"\n" + rest, source)


# -- keyring chunks: a reader at every step of a writer, not at random ----------------------


def _big(version: int, size: int) -> bytes:
    tag = f"{version:06d}"
    return (tag * (size // len(tag))).encode()


class _Paused:
    """Wraps a backend's writes so the writer stops before each one until told to go on."""

    def __init__(self, backend: Any) -> None:
        self.arrived: queue.Queue[str] = queue.Queue()
        self.go: queue.Queue[None] = queue.Queue()
        for name in ("set_password", "delete_password"):
            setattr(backend, name, self._wrap(name, getattr(backend, name)))

    def _wrap(self, name: str, real: Any) -> Any:
        def paused(service: str, *args: Any) -> Any:
            self.arrived.put(f"{name} {service}")
            self.go.get(timeout=60)
            return real(service, *args)

        return paused


def test_a_reader_at_every_step_of_a_chunked_save_sees_one_whole_generation(
    tmp_path: Path,
) -> None:
    MemoryKeyring.reset()
    limit = 1280

    def store(backend: Any) -> KeyringStore:
        return KeyringStore(
            "svc", "cache", lock_path=str(tmp_path / "kr.lock"), keyring=backend,
            max_value_length=limit, lock_timeout=0.5, keyring_timeout=10,
        )  # fmt: skip

    writer_backend = SizeLimitedKeyring()
    writer, reader = store(writer_backend), store(SizeLimitedKeyring())
    old, new = _big(1, 20_000), _big(2, 26_000)
    with writer.lock():
        writer.save(old)
    pause = _Paused(writer_backend)
    failed: list[BaseException] = []

    def save() -> None:
        try:
            with writer.lock():
                writer.save(new)
        except BaseException as exc:  # surfaced below
            failed.append(exc)
        finally:
            pause.arrived.put("done")

    thread = threading.Thread(target=save, daemon=True)
    thread.start()
    seen, steps, manifest_written = [], [], False
    while True:
        step = pause.arrived.get(timeout=60)
        if step == "done":
            break
        # The writer is stopped just before `step`: a reader (another process) reads now.
        # A mix of generations would make it retry, then wait for the held lock: an error.
        data = reader.load()
        assert data in (old, new), f"before {step}: a mixed or missing generation"
        if manifest_written:
            assert data == new, f"before {step}: the manifest is written, the old data shown"
        else:
            assert data == old, f"before {step}: the new data before its manifest"
        seen.append(data == new)
        steps.append(step)
        manifest_written = manifest_written or step == "set_password svc"
        pause.go.put(None)
    thread.join(30)
    assert not failed
    chunk_writes = [s for s in steps if s.startswith("set_password svc|")]
    assert len(chunk_writes) == -(-len(new) // limit)  # every chunk was a step
    assert "set_password svc" in steps  # and so was the manifest
    assert any(s.startswith("delete_password") for s in steps)  # and the old chunks' removal
    assert reader.load() == new
    MemoryKeyring.reset()


# -- no token text in DEBUG logs, on the write and on the load path, without sleeping --------


def test_no_token_text_in_debug_logs_when_signing_in_refreshing_and_loading(
    cache_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, msal's, filelock's, urllib3's
    # msal refreshes an access token that expires within five minutes: no sleep needed
    with LoopbackIdentityProvider(access_token_lifetime=60) as idp:
        app = idp.public_app(
            token_cache=build_cache(APP, backend="file", path=str(cache_path), key=key)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            app.acquire_token_by_username_password("alice@example.com", "pw-secret", ["User.Read"])
        [account] = app.get_accounts()
        result = app.acquire_token_silent(["User.Read"], account=account)
        assert result is not None
        assert result["token_source"] == "identity_provider"  # a refresh happened
        writing = list(caplog.records)
        caplog.clear()
        # Loading: a new cache object (a new process) reads the existing file.
        loader = idp.public_app(
            token_cache=build_cache(APP, backend="file", path=str(cache_path), key=key)
        )
        assert [a["username"] for a in loader.get_accounts()] == ["alice@example.com"]
        loading = list(caplog.records)
        issued = list(idp.issued)
    ours = [r.getMessage() for r in writing + loading if r.name.startswith("msal_keyring")]
    assert any("Saved the token cache" in m for m in ours)
    assert any(r.getMessage().startswith("Loaded the token cache") for r in loading)
    text = "\n".join(r.getMessage() for r in writing + loading)
    assert len(issued) >= 4
    for token in issued:
        for part in token.split("."):
            if len(part) > 20:
                assert part not in text
    assert key not in text
    assert "pw-secret" not in "\n".join(ours)


# -- crashes at defined steps of a write -------------------------------------------------

_KILLABLE = r"""
import os, sys, time
import msal
from msal_keyring_cache import build_cache
from msal_keyring_cache.testing import loopback_http_client

port, hook, nth, start, count = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
name, phase = hook.split(":")
real = getattr(os, name)
calls = 0

def hooked(*args, **kwargs):
    global calls
    calls += 1
    if calls != nth:
        return real(*args, **kwargs)
    if phase == "half":
        real(args[0], bytes(args[1])[: len(args[1]) // 2])
    elif phase == "after":
        real(*args, **kwargs)
    sys.stdout.write("STEP\n")
    sys.stdout.flush()
    time.sleep(600)

setattr(os, name, hooked)
app = msal.ConfidentialClientApplication(
    "00000000-0000-0000-0000-00000000c11d", client_credential="s",
    authority="https://127.0.0.1/loopback-tenant", instance_discovery=False,
    http_client=loopback_http_client(int(port)),
    token_cache=build_cache("msal-keyring-cache-tests"),
)
for i in range(start, start + count):
    scope = f"api://t/s{i}/.default"
    assert "access_token" in app.acquire_token_for_client([scope])
    print(scope, flush=True)
print("END", flush=True)
"""

# (os function:phase, which call): before/after/half-way through a call of the write path.
# The first write creates the file (atomic_write); later ones append; the 65th compacts.
STEPS = [
    ("write:before", 1), ("write:half", 1), ("fsync:before", 1), ("replace:before", 1),
    ("replace:after", 1), ("write:before", 3), ("write:half", 3), ("write:after", 3),
    ("fsync:before", 3), ("write:half", 66), ("replace:before", 2), ("replace:after", 2),
]  # fmt: skip


def _stored(path: Path, key: str) -> set[str]:
    cache = build_cache(APP, backend="file", path=str(path), key=key)
    return {e["target"] for e in json.loads(cache.serialize()).get("AccessToken", {}).values()}


@pytest.mark.slow
@pytest.mark.parametrize(("hook", "nth"), STEPS, ids=[f"{h}-{n}" for h, n in STEPS])
def test_a_writer_killed_at_a_defined_step_loses_no_returned_write(
    idp: LoopbackIdentityProvider, cache_path: Path, key: str, hook: str, nth: int
) -> None:
    env = file_env(cache_path, key, None)
    child = subprocess.Popen(
        [PYTHON, "-c", _KILLABLE, str(idp.port), hook, str(nth), "0", "80"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    returned: set[str] = set()
    try:
        for line in iter(child.stdout.readline, ""):
            if line == "STEP\n":
                break
            assert line != "END\n", f"the child never reached {hook} #{nth}"
            returned.add(line.strip())
        else:
            pytest.fail(f"the child died before {hook} #{nth}: {child.stderr.read()}")  # type: ignore[union-attr]
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    if nth == 1:
        assert returned == set()  # killed inside the very first write: nothing returned yet
    else:  # the step is where the table says: after earlier writes (66: journal, 2: compaction)
        assert len(returned) >= {3: 1, 66: 60, 2: 10}[nth]
    stored = _stored(cache_path, key)  # loads, whatever the step
    assert returned <= stored, f"lost {sorted(returned - stored)[:3]}"
    # and the next writer goes on from there
    cache = build_cache(APP, backend="file", path=str(cache_path), key=key)
    idp.confidential_app(token_cache=cache).acquire_token_for_client(["api://t/after/.default"])
    assert _stored(cache_path, key) >= returned | {"api://t/after/.default"}
    leftovers = [p for p in os.listdir(cache_path.parent) if p.endswith(".tmp")]
    assert all(p.startswith(".token_cache.bin.") for p in leftovers)


# -- gates that used to skip under CI ------------------------------------------------------


def test_console_script_matches_module() -> None:
    exe = Path(PYTHON).with_name("msal-keyring-cache")
    require(exe.exists(), "the console script is not installed next to the interpreter")
    proc = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, check=False, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("msal-keyring-cache ")
