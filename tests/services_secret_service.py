"""A real Secret Service for tests: gnome-keyring-daemon on a private session D-Bus.

``secret_service`` (session scope) starts ``dbus-daemon --session`` and
``gnome-keyring-daemon --unlock --components=secrets`` (password on stdin) with their
own HOME and XDG directories under a temporary directory, yields the environment to
use them and stops both at the end. ``use_secret_service`` (function scope) applies
that environment with monkeypatch and makes keyring use its SecretService backend.
Under ``CI=true`` a missing daemon fails instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSWORD = "test-keyring-password"
SECRET_SERVICE_BACKEND = "keyring.backends.SecretService.Keyring"


@dataclass
class SecretService:
    """A running private Secret Service."""

    env: dict[str, str]
    root: Path
    pids: list[int]

    def collection(self) -> object:
        """The default collection, on a new D-Bus connection (close ``.connection`` after)."""
        import secretstorage
        from jeepney.io.blocking import open_dbus_connection

        connection = open_dbus_connection(bus=self.env["DBUS_SESSION_BUS_ADDRESS"])
        return secretstorage.get_default_collection(connection)

    def lock(self) -> None:
        """Lock the default collection through the Secret Service API."""
        collection = self.collection()
        try:
            collection.lock()  # type: ignore[attr-defined]
            assert collection.is_locked()  # type: ignore[attr-defined]
        finally:
            collection.connection.close()  # type: ignore[attr-defined]

    def collection_locked(self) -> bool:
        """Whether the default collection is locked."""
        collection = self.collection()
        try:
            return bool(collection.is_locked())  # type: ignore[attr-defined]
        finally:
            collection.connection.close()  # type: ignore[attr-defined]

    def unlock(self) -> None:
        """Unlock the default collection again (gnome-keyring's control: re-run --unlock).

        Returns once the old daemon has left and the one that replaced it answers,
        unlocked. The old one can answer "unlocked" itself just before it leaves, and a
        call that reaches it then fails ("disconnected without replying"); on a loaded
        machine all this takes longer than any fixed pause.
        """
        for _ in range(5):
            old = _keyring_pids(self.env)
            subprocess.run(
                ["gnome-keyring-daemon", "--replace", "--unlock", "--components=secrets"],
                input=PASSWORD.encode(),
                env=self.env,
                capture_output=True,
                timeout=20,
                check=False,
            )
            until = time.monotonic() + 5
            while time.monotonic() < until:
                try:
                    left = not set(old) & set(_keyring_pids(self.env))
                    if left and not self.collection_locked():
                        return
                except Exception:  # the new daemon not up yet
                    pass
                time.sleep(0.1)
        raise RuntimeError("the private gnome-keyring did not come back unlocked")

    def items(self) -> list[tuple[dict[str, str], str]]:
        """(attributes, label) of every item in the default collection."""
        collection = self.collection()
        try:
            return [(i.get_attributes(), i.get_label()) for i in collection.get_all_items()]  # type: ignore[attr-defined]
        finally:
            collection.connection.close()  # type: ignore[attr-defined]


#: A session bus without service files (no D-Bus activation); bench/secret_service.py uses it too.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def _have_tools() -> bool:
    return all(shutil.which(t) for t in ("dbus-daemon", "gnome-keyring-daemon"))


@pytest.fixture(scope="session")
def secret_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretService]:
    """A private session bus with an unlocked gnome-keyring Secret Service."""
    from tests.helpers import require, require_tool

    require_tool("dbus-daemon", "gnome-keyring-daemon")
    try:
        import secretstorage  # noqa: F401
    except ImportError:
        require(False, "the secretstorage package is not installed")
    root = tmp_path_factory.mktemp("secret-service")
    dirs = {name: root / name for name in ("home", "data", "config", "cache", "runtime")}
    for directory in dirs.values():
        directory.mkdir(mode=0o700)
    env = dict(os.environ)
    env.update(
        HOME=str(dirs["home"]),
        XDG_DATA_HOME=str(dirs["data"]),
        XDG_CONFIG_HOME=str(dirs["config"]),
        XDG_CACHE_HOME=str(dirs["cache"]),
        XDG_RUNTIME_DIR=str(dirs["runtime"]),
    )
    env.pop("GNOME_KEYRING_CONTROL", None)
    # A session bus without service files: the system's would start a second
    # gnome-keyring-daemon ("--start") whenever a call finds no owner, as while one
    # daemon replaces another (unlock()), and the two then take the name from each other.
    config = root / "bus.conf"
    config.write_text(BUS_CONFIG)
    started = subprocess.run(
        ["dbus-daemon", f"--config-file={config}", "--fork", "--print-address=1", "--print-pid=1"],
        env=env,
        capture_output=True,
        timeout=20,
        check=False,
    )
    lines = started.stdout.decode().split()
    require(started.returncode == 0 and len(lines) >= 2, "dbus-daemon did not start")
    address, bus_pid = lines[0], int(lines[1])
    env["DBUS_SESSION_BUS_ADDRESS"] = address
    pids = [bus_pid]
    try:
        keyring_run = subprocess.run(
            ["gnome-keyring-daemon", "--unlock", "--components=secrets"],
            input=PASSWORD.encode(),
            env=env,
            capture_output=True,
            timeout=20,
            check=False,
        )
        require(keyring_run.returncode == 0, "gnome-keyring-daemon did not start")
        for line in keyring_run.stdout.decode().splitlines():
            name, _, value = line.partition("=")
            if name == "GNOME_KEYRING_CONTROL":
                env[name] = value
        service = SecretService(env, root, pids)
        _wait_for_collection(service)
        yield service
    finally:
        for pid in _keyring_pids(env) + pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _wait_for_collection(service: SecretService) -> None:
    last: Exception = RuntimeError("no answer")
    for _ in range(50):
        try:
            service.items()
            return
        except Exception as exc:  # the daemon registers its name asynchronously
            last = exc
            time.sleep(0.1)
    from tests.helpers import require

    require(False, f"the Secret Service did not come up ({type(last).__name__})")


def _keyring_pids(env: dict[str, str]) -> list[int]:
    """The gnome-keyring-daemon(s) we started: the ones whose environment has our bus."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "gnome-keyring-d":
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        wanted = ("DBUS_SESSION_BUS_ADDRESS=" + env["DBUS_SESSION_BUS_ADDRESS"]).encode()
        if wanted in environ:
            found.append(int(entry.name))
    return found


@pytest.fixture
def use_secret_service(
    secret_service: SecretService, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SecretService]:
    """Point this test (and child processes) at the private Secret Service."""
    import keyring.core

    for name in ("DBUS_SESSION_BUS_ADDRESS", "GNOME_KEYRING_CONTROL"):
        if name in secret_service.env:
            monkeypatch.setenv(name, secret_service.env[name])
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", SECRET_SERVICE_BACKEND)
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    yield secret_service
    if secret_service.collection_locked():
        secret_service.unlock()
