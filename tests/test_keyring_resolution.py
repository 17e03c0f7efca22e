"""Which keyring backend a KeyringStore uses, and what its errors say.

The order is keyring's own (``PYTHON_KEYRING_BACKEND``, ``keyring.set_keyring()``,
``keyringrc.cfg``), then the backend the stamp file remembers (only one under
``keyring.backends.`` or ``keyrings.``, as a third-party backend package is), then keyring's
choice by priority; ``status`` shows which rule chose it (``resolved_by``). A backend's
error reaches the user as the library's own, naming the error without quoting values.
"""

from __future__ import annotations

import errno
import json
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Optional

import keyring.core
import pytest
from keyring import errors as keyring_errors
from keyring.backends.chainer import ChainerBackend
from keyring.compat import properties

from msal_keyring_cache import (
    BackendUnavailableError,
    ConfigError,
    KeyringTimeoutError,
    StoreError,
    build_cache,
)
from msal_keyring_cache.stores.credential import KeyringStore
from tests.fakes import ScopedKeyring
from tests.test_keyring_store import memory_keyring  # noqa: F401 - the fixture, shared

HERE = "tests.test_keyring_resolution"
SECRET = "resolution-secret-value-77aa"
DATA = json.dumps({"RefreshToken": {"k": {"secret": SECRET}}}).encode()
BIG = json.dumps({"RefreshToken": {f"k{n}": {"secret": SECRET} for n in range(200)}}).encode()
LIMIT = 1280  # what a Windows-like backend takes in one entry


# The backends below are viable only when given (test_priority None): keyring's own
# discovery, which sees every backend class, never picks one in another test.


class SecondKeyring(ScopedKeyring):
    """Another in-memory backend with its own entries."""

    test_priority = None
    entries: ClassVar[dict[tuple[str, str], str]] = {}


class RefusingKeyring(ScopedKeyring):
    """Raises ``errors[method]`` from that method (a test sets them)."""

    test_priority = None
    errors: ClassVar[dict[str, BaseException]] = {}

    def get_password(self, service: str, username: str) -> Optional[str]:
        if "get" in self.errors:
            raise self.errors["get"]
        return super().get_password(service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        if "set" in self.errors and len(password) > LIMIT:
            raise self.errors["set"]
        super().set_password(service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        if "delete" in self.errors:
            raise self.errors["delete"]
        super().delete_password(service, username)


class SilentKeyring(ScopedKeyring):
    """Answers nothing until the test ends (an unlock prompt nobody sees)."""

    test_priority = None
    release = threading.Event()

    def get_password(self, service: str, username: str) -> Optional[str]:
        self.release.wait(30)
        return None


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, memory_keyring: Any) -> Iterator[None]:  # noqa: F811
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    monkeypatch.setattr(SecondKeyring, "entries", {})
    monkeypatch.setattr(RefusingKeyring, "errors", {})
    SilentKeyring.release.clear()
    yield
    SilentKeyring.release.set()


def store(tmp_path: Path, backend: Any = None, **kwargs: Any) -> KeyringStore:
    kwargs.setdefault("keyring_timeout", 5.0)
    return KeyringStore(
        "resolution", "cache", lock_path=str(tmp_path / "kr.lock"), keyring=backend, **kwargs
    )


def save(target: KeyringStore, data: bytes = DATA) -> None:
    with target.lock():
        target.save(data)


# -- which backend ---------------------------------------------------------------------


def test_the_environment_variable_chooses_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "tests.fakes.ScopedKeyring")
    monkeypatch.setattr(keyring.core, "_keyring_backend", SecondKeyring())
    target = store(tmp_path)
    save(target)
    assert target.describe().extra["resolved_by"] == "PYTHON_KEYRING_BACKEND"
    assert ScopedKeyring.entries
    assert not SecondKeyring.entries


def test_an_unloadable_environment_backend_is_named_in_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "no_such_module.Keyring")
    with pytest.raises(BackendUnavailableError, match="named by PYTHON_KEYRING_BACKEND"):
        store(tmp_path).load()


def test_the_applications_set_keyring_comes_before_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _keyringrc(tmp_path, monkeypatch, "tests.fakes.ScopedKeyring")
    monkeypatch.setattr(keyring.core, "_keyring_backend", SecondKeyring())
    target = store(tmp_path)
    save(target)
    assert target.describe().extra["resolved_by"] == "keyring.set_keyring()"
    assert SecondKeyring.entries
    assert not ScopedKeyring.entries


def test_the_config_file_chooses_when_nothing_else_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _keyringrc(tmp_path, monkeypatch, "tests.fakes.ScopedKeyring")
    target = store(tmp_path)
    save(target)
    assert target.describe().extra["resolved_by"] == "keyringrc.cfg"
    assert ScopedKeyring.entries


def test_an_unloadable_config_file_backend_is_named_in_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _keyringrc(tmp_path, monkeypatch, "no_such_module.Keyring")
    with pytest.raises(BackendUnavailableError, match=r"named by keyringrc\.cfg"):
        store(tmp_path).load()


def test_an_applications_chainer_writes_to_its_first_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ChainerBackend, "backends", [SecondKeyring(), ScopedKeyring()])
    target = store(tmp_path, ChainerBackend())
    save(target)
    assert store(tmp_path, SecondKeyring()).load() == DATA
    assert not ScopedKeyring.entries


def test_the_remembered_third_party_backend_is_used_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _third_party_backend(tmp_path, monkeypatch)
    from keyrings.mutatest import Shared  # type: ignore[import-not-found]

    save(store(tmp_path, Shared()))
    again = store(tmp_path)
    assert again.load() == DATA
    assert again.describe().extra["resolved_by"] == "remembered from the last write"
    assert again.keyring_name == f"{package}.Shared"


@pytest.mark.parametrize(
    "remembered",
    [
        "keyrings.mutatest.NotABackend",  # a class, but not a keyring backend
        "keyrings.mutatest.missing",  # no such attribute
        "keyrings.no_such_package.Keyring",  # no such module
        "tests.fakes.ScopedKeyring",  # a backend, outside the names a stamp may name
    ],
)
def test_a_remembered_name_that_is_no_usable_backend_falls_back_to_keyrings_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remembered: str
) -> None:
    _third_party_backend(tmp_path, monkeypatch)
    save(store(tmp_path, ScopedKeyring()))
    stamp = Path(store(tmp_path).stamp_path)
    doc = json.loads(stamp.read_text())
    doc["backend"] = remembered
    stamp.write_text(json.dumps(doc))
    again = store(tmp_path)
    again.resolve()
    assert again.describe().extra["resolved_by"] == "keyring's choice by priority"


def test_a_backend_that_never_answers_is_abandoned_within_the_timeout(tmp_path: Path) -> None:
    with pytest.raises(KeyringTimeoutError, match=r"\(get password\) within 0.3 s"):
        store(tmp_path, SilentKeyring(), keyring_timeout=0.3).load()


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_a_keyring_timeout_that_is_no_bound_is_refused(tmp_path: Path, timeout: float) -> None:
    with pytest.raises(ConfigError, match="must be a positive number of seconds"):
        store(tmp_path, ScopedKeyring(), keyring_timeout=timeout).load()
    assert ScopedKeyring.calls["get"] == 0


def test_a_keyring_timeout_below_one_second_is_allowed(tmp_path: Path) -> None:
    # Accepted and applied as given (not refused, not rounded): the call is abandoned at
    # 0.5 s. A backend that never answers, so no assertion needs a call done in 0.5 s on
    # a loaded machine.
    target = store(tmp_path, SilentKeyring(), keyring_timeout=0.5)
    assert target.keyring_timeout == 0.5
    with pytest.raises(KeyringTimeoutError, match=r"\(get password\) within 0.5 s"):
        target.load()


# -- what its errors say ---------------------------------------------------------------


def _with_winerror(exc: OSError, code: int) -> OSError:
    exc.winerror = code  # type: ignore[attr-defined]  # as Windows sets it
    return exc


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (OSError(errno.EIO, SECRET), "OSError: [errno 5] Input/output error"),
        (OSError(None, SECRET), "(get password: OSError)"),
        (_with_winerror(OSError(SECRET), 1312), "OSError (error 1312)"),
        (keyring_errors.InitError("The keyring is broken"), "InitError: The keyring is broken"),
        (keyring_errors.InitError("x" * 400), "(get password: InitError)"),
        (RuntimeError(5, SECRET), "RuntimeError (error 5)"),
        (RuntimeError(SECRET), "(get password: RuntimeError)"),
    ],
)
def test_a_read_error_names_the_error_and_never_quotes_a_value(
    tmp_path: Path, error: BaseException, shown: str
) -> None:
    RefusingKeyring.errors["get"] = error
    with pytest.raises(BackendUnavailableError, match="could not be used") as caught:
        store(tmp_path, RefusingKeyring()).load()
    assert shown in str(caught.value)
    assert SECRET not in str(caught.value)


class WinError(Exception):
    """pywintypes.error: the number is in ``winerror`` (args are function and text)."""

    def __init__(self, code: int, function: str, text: str) -> None:
        super().__init__(function, text)
        self.winerror = code


def test_a_windows_error_number_is_shown(tmp_path: Path) -> None:
    RefusingKeyring.errors["get"] = WinError(1168, "CredRead", SECRET)
    with pytest.raises(BackendUnavailableError, match=r"WinError \(error 1168\)") as caught:
        store(tmp_path, RefusingKeyring()).load()
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "refusal",
    [
        keyring_errors.PasswordSetError("Value too large for the credential"),
        keyring_errors.PasswordSetError("the secret is TOO LONG"),
        WinError(1783, "CredWrite", "The stub received bad data."),
        WinError(87, "CredWrite", "The parameter is incorrect."),
    ],
)
def test_a_too_large_refusal_from_the_backend_splits_the_value(
    tmp_path: Path, refusal: BaseException
) -> None:
    RefusingKeyring.errors["set"] = refusal
    save(store(tmp_path, RefusingKeyring()), BIG)
    assert store(tmp_path, RefusingKeyring()).load() == BIG
    assert len(ScopedKeyring.entries) > 1


@pytest.mark.parametrize(
    "refusal",
    [
        RuntimeError("value too large"),  # a foreign text may quote anything: not trusted
        keyring_errors.PasswordSetError("not allowed"),
        WinError(5, "CredWrite", "Access is denied."),
    ],
)
def test_any_other_write_refusal_is_a_store_error(tmp_path: Path, refusal: BaseException) -> None:
    RefusingKeyring.errors["set"] = refusal
    with pytest.raises(StoreError, match="refused to write the token cache"):
        save(store(tmp_path, RefusingKeyring()), BIG)
    assert not ScopedKeyring.entries


def test_a_refused_delete_is_a_store_error(tmp_path: Path) -> None:
    save(store(tmp_path, RefusingKeyring()))
    RefusingKeyring.errors["delete"] = RuntimeError("denied")
    with pytest.raises(StoreError, match=r"refused to write .*\(delete password"):
        store(tmp_path, RefusingKeyring()).clear()
    assert store(tmp_path, RefusingKeyring()).load() == DATA


# -- which backends auto accepts -------------------------------------------------------


class PriorityOne(ScopedKeyring):
    """keyring's lowest "recommended" priority (inside its test)."""

    test_priority = None


def test_auto_accepts_a_backend_of_priority_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setattr(PriorityOne, "test_priority", 1.0)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", f"{HERE}.PriorityOne")
    cache = build_cache(app_name="prio", path=str(tmp_path / "c.bin"), key=key)
    assert cache.backend_info.backend == "keyring"


def test_auto_says_why_a_backend_whose_probe_fails_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    # Set by the application; its priority probe raises RuntimeError.
    monkeypatch.setattr(keyring.core, "_keyring_backend", SecondKeyring())
    cache = build_cache(app_name="prio", path=str(tmp_path / "c.bin"), key=key)
    assert cache.backend_info.backend == "file"
    assert f"{HERE}.SecondKeyring is not viable here (RuntimeError)" in (cache.backend_info.reason)


# -- helpers ---------------------------------------------------------------------------


def _keyringrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    config = tmp_path / "config"
    (config / "python_keyring").mkdir(parents=True)
    (config / "python_keyring" / "keyringrc.cfg").write_text(
        f"[backend]\ndefault-keyring = {name}\n"
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))


def _third_party_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A backend package installed under the ``keyrings`` namespace, as keyrings.alt is."""
    root = tmp_path / "site"
    (root / "keyrings").mkdir(parents=True)
    (root / "keyrings" / "mutatest.py").write_text(
        textwrap.dedent(
            """
            from tests.fakes import ScopedKeyring

            class Shared(ScopedKeyring):
                test_priority = None

            class NotABackend:
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(root))
    return "keyrings.mutatest"


class ProbeRefusing(ScopedKeyring):
    """Refuses the doctor's probe entry with keyring's own write or delete error."""

    test_priority = None
    refusal: ClassVar[dict[str, BaseException]] = {}

    def set_password(self, service: str, username: str, password: str) -> None:
        if "set" in self.refusal:
            raise self.refusal["set"]
        super().set_password(service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        if "delete" in self.refusal:
            raise self.refusal["delete"]
        super().delete_password(service, username)


@pytest.mark.parametrize(
    ("method", "refusal"),
    [
        ("set", keyring_errors.PasswordSetError("refused")),
        ("delete", keyring_errors.PasswordDeleteError("refused")),
    ],
)
def test_doctor_reports_a_refused_probe_write_as_a_refused_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, refusal: BaseException
) -> None:
    from msal_keyring_cache.config import Settings
    from msal_keyring_cache.doctor import doctor

    monkeypatch.setattr(ProbeRefusing, "test_priority", 5.0)
    monkeypatch.setattr(ProbeRefusing, "refusal", {method: refusal})
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", f"{HERE}.ProbeRefusing")
    settings = Settings.resolve(app_name="probe", path=str(tmp_path / "c.bin"))
    [probe] = [c for c in doctor(settings) if c.name == "probe round trip"]
    assert probe.status.value == "warn"
    assert "refused to write" in probe.detail


class SlowProbe(ScopedKeyring):
    """Its priority probe never answers while armed (a hung D-Bus service)."""

    armed = False
    release = threading.Event()

    @properties.classproperty
    def priority(cls) -> float:
        if not cls.armed:
            raise RuntimeError("viable only inside its tests")
        cls.release.wait(30)
        return 5.0


@pytest.mark.parametrize("how", ["environment", "set_keyring"])
def test_a_hung_backend_probe_is_abandoned_and_says_what_it_was_doing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(SlowProbe, "armed", True)
    SlowProbe.release.clear()
    if how == "environment":  # keyring probes it while choosing
        monkeypatch.setenv("PYTHON_KEYRING_BACKEND", f"{HERE}.SlowProbe")
        doing = "choosing the keyring backend"
    else:  # chosen by the application; auto probes whether it is secure
        monkeypatch.setattr(keyring.core, "_keyring_backend", SlowProbe())
        doing = "probing the backend"
    monkeypatch.setenv("MSAL_KEYRING_CACHE_KEYRING_TIMEOUT", "0.3")
    try:
        with pytest.raises(BackendUnavailableError, match=f"did not answer \\({doing}\\)"):
            build_cache(app_name="hung", path=str(tmp_path / "c.bin"))
    finally:
        SlowProbe.release.set()
