"""Conformance tests for the :class:`~msal_keyring_cache.stores.base.Store` protocol.

Subclass :class:`StoreContract` in a test module, say how to make the store, and pytest
runs every check below against it (the pattern of requests-cache's storage tests and
keyring's backend tests)::

    from msal_keyring_cache.testing import StoreContract, WriteObserver

    class TestMyStore(StoreContract):
        def make_store(self, place):
            return MyStore(place)          # called twice per test: two processes' views

        def make_observer(self, place, store):
            return WriteObserver().file("data", place)   # physical writes, not store.stats

Two stores made on the same ``place`` stand for two processes sharing one cache. The
observer counts physical writes from outside the store (a file's identity and size, or
calls into the real backend), so a store cannot pass by counting itself.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import pytest

from ..stores.base import Store, apply_delta

if TYPE_CHECKING:
    from .idp import LoopbackIdentityProvider

__all__ = ["StoreContract", "WriteObserver"]

#: A token-like secret put into every cache the contract saves.
SECRET = "contract-secret-refresh-token-0123456789abcdef"


def cache_json(**tokens: str) -> bytes:
    """A small msal-shaped cache holding one refresh token per ``name=secret``."""
    state = {
        "RefreshToken": {
            name: {"credential_type": "RefreshToken", "secret": secret, "home_account_id": name}
            for name, secret in tokens.items()
        },
        "AppMetadata": {"appmetadata-x": {"client_id": "x", "environment": "ü.example"}},
    }
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()


def _delta(name: str, secret: Optional[str]) -> bytes:
    entry = None if secret is None else {"credential_type": "RefreshToken", "secret": secret}
    return json.dumps({"RefreshToken": {name: entry}}, separators=(",", ":")).encode()


class WriteObserver:
    """Counts physical writes per place, from outside the store.

    * :meth:`file`: a file counts one write whenever its identity (inode), size or
      modification time changed since the last look — :meth:`writes` looks, so the
      contract calls it after every operation.
    * :meth:`calls`: wraps a method of a backend object (``set_password`` …) and counts calls.
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[str, Optional[tuple[int, int, int]]]] = {}
        self._counts: dict[str, int] = {}

    def file(self, name: str, path: os.PathLike[str] | str) -> WriteObserver:
        """Watch ``path`` (it may not exist yet) as place ``name``."""
        self._files[name] = (os.fspath(path), _identity(os.fspath(path)))
        self._counts[name] = 0
        return self

    def calls(self, name: str, target: Any, method: str) -> WriteObserver:
        """Count calls of ``target.method`` (the object's own attribute is wrapped)."""
        original: Callable[..., Any] = getattr(target, method)
        self._counts[name] = 0

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._counts[name] += 1
            return original(*args, **kwargs)

        setattr(target, method, counted)
        return self

    def writes(self) -> dict[str, int]:
        """Writes per place so far."""
        for name, (path, last) in self._files.items():
            now = _identity(path)
            if now != last:
                self._counts[name] += 1
                self._files[name] = (path, now)
        return dict(self._counts)


def _identity(path: str) -> Optional[tuple[int, int, int]]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


class StoreContract:
    """Conformance tests every :class:`~msal_keyring_cache.stores.base.Store` must pass.

    Override :meth:`make_store` (required), and where they apply :meth:`make_observer`,
    :meth:`secrets` and :attr:`shared`. Add an autouse fixture in the subclass for any
    set-up the store needs (a keyring backend, a daemon …).
    """

    #: Whether two stores on the same place share their data (``False``: one process only,
    #: like :class:`~msal_keyring_cache.stores.memory.MemoryStore`; the cross-instance
    #: checks are then not collected).
    shared: ClassVar[bool] = True

    _CROSS_INSTANCE: ClassVar[tuple[str, ...]] = (
        "test_another_instance_sees_the_save",
        "test_changed_is_exact",
        "test_deltas_arrive_oldest_first",
        "test_lock_is_exclusive_across_instances",
        "test_clear_is_seen_by_another_instance",
    )
    _OBSERVED: ClassVar[tuple[str, ...]] = (
        "test_one_save_is_one_physical_write",
        "test_sign_in_writes_once_and_a_silent_hit_never",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Checks that cannot apply to a store are left out, not skipped: a skip in CI
        # should always mean a missing daemon.
        super().__init_subclass__(**kwargs)
        dropped = () if cls.shared else cls._CROSS_INSTANCE
        if cls.make_observer is StoreContract.make_observer:
            dropped += cls._OBSERVED
        for name in dropped:
            setattr(cls, name, None)

    def make_store(self, place: Path) -> Store:
        """A new store on ``place`` (a path in a fresh temporary directory)."""
        raise NotImplementedError

    def make_observer(self, place: Path, store: Store) -> Optional[WriteObserver]:
        """An independent counter of ``store``'s physical writes (``None``: nothing to count)."""
        return None

    def secrets(self) -> list[str]:
        """Key material the store was given; :meth:`~Store.describe` must not show it."""
        return []

    # -- fixtures -----------------------------------------------------------------

    @pytest.fixture
    def place(self, tmp_path: Path) -> Path:
        return tmp_path / "contract" / "cache.bin"

    @pytest.fixture
    def store(self, place: Path) -> Iterator[Store]:
        made = self.make_store(place)
        yield made
        made.close()

    @pytest.fixture
    def other(self, place: Path, store: Store) -> Iterator[Store]:
        if not self.shared:
            pytest.skip(f"{type(store).__name__} is not shared between instances (by design)")
        made = self.make_store(place)
        yield made
        made.close()

    def _observer(self, place: Path, store: Store) -> WriteObserver:
        observer = self.make_observer(place, store)
        if observer is None:
            pytest.skip(f"{type(store).__name__} makes no physical writes to count")
        return observer

    # -- the contract ---------------------------------------------------------------

    def test_empty_store_loads_none(self, store: Store) -> None:
        assert store.load() is None

    def test_save_then_load_round_trips(self, store: Store) -> None:
        data = cache_json(alice=SECRET)
        with store.lock():
            store.save(data)
        assert store.load() == data
        assert not store.changed()

    def test_another_instance_sees_the_save(self, store: Store, other: Store) -> None:
        data = cache_json(alice=SECRET)
        with store.lock():
            store.save(data)
        assert other.load() == data

    def test_changed_is_exact(self, store: Store, other: Store) -> None:
        with store.lock():
            store.save(cache_json(alice="one"))
        assert other.load() == cache_json(alice="one")
        assert not store.changed()
        assert not other.changed()  # nothing happened: no change
        assert not other.changed()  # and asking twice changes nothing
        with other.lock():
            other.save(cache_json(alice="two"))
        assert store.changed()  # another instance wrote
        assert not other.changed()  # its own write is not a change
        assert store.load() == cache_json(alice="two")
        assert not store.changed()

    def test_deltas_arrive_oldest_first(self, store: Store, other: Store) -> None:
        base = cache_json(alice="a0", bob="b0")
        with store.lock():
            store.save(base)
        assert other.load() == base
        deltas = [
            _delta("alice", "a1"),
            _delta("alice", "a2"),  # the same entry again: the later one must win
            _delta("bob", None),  # a removal
            _delta("carol", None),  # the removal of an entry that was never there
            b'{"AccessToken":{"at":{"secret":"x"}}}',  # a credential type new to the cache
        ]
        expected = json.loads(base)
        expected["RefreshToken"]["alice"] = {"credential_type": "RefreshToken", "secret": "a2"}
        del expected["RefreshToken"]["bob"]
        expected["AccessToken"] = {"at": {"secret": "x"}}
        full = json.dumps(expected, separators=(",", ":")).encode()
        with store.lock():
            for delta in deltas:
                store.append(delta, lambda: full)
        assert other.changed()
        changes = other.read_changes()
        loaded = other.load() if changes is None else base
        assert loaded is not None
        seen = json.loads(loaded)
        for change in changes or []:
            apply_delta(seen, json.loads(change))
        assert seen == expected
        assert not other.changed()
        assert other.read_changes() in ([], None)

    def test_own_append_is_not_a_change(self, store: Store) -> None:
        base = cache_json(alice="a0")
        with store.lock():
            store.save(base)
            store.append(_delta("bob", "b1"), lambda: cache_json(alice="a0", bob="b1"))
        assert not store.changed()
        assert store.read_changes() in ([], None)

    def test_lock_is_reentrant_for_its_holder(self, store: Store) -> None:
        with store.lock(), store.lock():
            store.save(cache_json(alice=SECRET))
        with store.lock():  # released by both exits
            pass

    def test_lock_is_exclusive_across_instances(self, store: Store, other: Store) -> None:
        entered = threading.Event()
        failed: list[BaseException] = []

        def take() -> None:
            try:
                with other.lock():
                    entered.set()
            except BaseException as exc:  # surfaced below
                failed.append(exc)
                entered.set()

        with store.lock():
            thread = threading.Thread(target=take, daemon=True)
            thread.start()
            assert not entered.wait(0.3), "the other instance entered a held lock"
        assert entered.wait(30), "the other instance never got the released lock"
        thread.join(30)
        assert not failed

    def test_clear_removes_the_data(self, store: Store) -> None:
        with store.lock():
            store.save(cache_json(alice=SECRET))
        store.clear()
        assert store.load() is None
        with store.lock():  # and the store is usable again
            store.save(cache_json(bob="b"))
        assert store.load() == cache_json(bob="b")

    def test_clear_of_an_empty_store_is_fine(self, store: Store) -> None:
        store.clear()
        assert store.load() is None

    def test_own_clear_is_not_a_change(self, store: Store) -> None:
        with store.lock():
            store.save(cache_json(alice=SECRET))
        store.clear()
        assert not store.changed()  # like its own save: the cache cleared its copy itself
        assert store.read_changes() in ([], None)
        assert store.load() is None

    def test_describe_tells_whether_something_is_stored(self, store: Store) -> None:
        # ``exists`` and ``size`` may be unknown (None) without a read, never wrong.
        empty = store.describe()
        assert empty.exists in (False, None)
        assert empty.size in (0, None)
        data = cache_json(alice=SECRET)
        with store.lock():
            store.save(data)
        full = store.describe()
        assert full.exists in (True, None)
        assert full.size is None or full.size >= len(data) // 2
        store.clear()
        cleared = store.describe()
        assert cleared.exists in (False, None)
        assert cleared.size in (0, None)

    def test_clear_is_seen_by_another_instance(self, store: Store, other: Store) -> None:
        with store.lock():
            store.save(cache_json(alice=SECRET))
        assert other.load() is not None
        store.clear()
        assert other.changed()
        assert other.load() is None
        assert not other.changed()

    def test_describe_holds_no_secret(self, store: Store) -> None:
        with store.lock():
            store.save(cache_json(alice=SECRET))
        store.load()
        description = store.describe()
        text = json.dumps(description.as_dict(), default=str) + repr(description) + repr(store)
        assert description.backend == store.backend
        assert description.location
        assert description.protection_text
        doc = description.as_dict()  # the flat form status --json prints
        assert doc["protection"] == description.protection_text
        assert doc["protection_level"] == description.protection.value
        for name in ("backend", "location", "lock_file", "key_file", "exists", "size"):
            assert doc[name] == getattr(description, name), name
        for name in ("last_write", "permissions"):
            assert doc[name] == getattr(description, name), name
        for name, value in description.extra.items():
            assert doc[name] == value, name
        for secret in [SECRET, *self.secrets()]:
            assert secret not in text

    def test_one_save_is_one_physical_write(self, place: Path, store: Store) -> None:
        observer = self._observer(place, store)
        start = observer.writes()
        assert store.load() is None
        assert _diff(start, observer.writes()) == dict.fromkeys(start, 0)  # reads write nothing
        for n in range(3):
            before = observer.writes()
            with store.lock():
                store.save(cache_json(alice=f"secret-{n}"))
            assert _diff(before, observer.writes()) == dict.fromkeys(before, 1), f"save {n}"
        before = observer.writes()
        store.changed()
        store.read_changes()
        store.load()
        assert _diff(before, observer.writes()) == dict.fromkeys(before, 0)
        before = observer.writes()
        with store.lock():
            store.append(_delta("bob", "b1"), lambda: cache_json(alice="secret-2", bob="b1"))
        assert _diff(before, observer.writes()) == dict.fromkeys(before, 1), "append"

    def test_sign_in_writes_once_and_a_silent_hit_never(
        self, place: Path, store: Store, loopback_idp: LoopbackIdentityProvider
    ) -> None:
        from ..cache import PersistentTokenCache

        observer = self._observer(place, store)
        cache = PersistentTokenCache(store)
        app = loopback_idp.public_app(token_cache=cache)
        for user in ("alice@example.com", "bob@example.com"):
            before = observer.writes()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                result = app.acquire_token_by_username_password(user, "pw", ["User.Read"])
            assert "access_token" in result, result.get("error")
            assert _diff(before, observer.writes()) == dict.fromkeys(before, 1), user
        before = observer.writes()
        for account in app.get_accounts():
            silent = app.acquire_token_silent(["User.Read"], account=account)
            assert silent is not None
            assert silent["token_source"] == "cache"
        assert _diff(before, observer.writes()) == dict.fromkeys(before, 0)
        assert loopback_idp.token_requests == 2
