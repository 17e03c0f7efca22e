"""A private Secret Service for the benchmark: its own D-Bus session bus and gnome-keyring.

Nothing here touches the user's real keyring: the bus and the keyring files live in a
temporary directory that is removed on exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional


class PrivateSecretService:
    """``with PrivateSecretService() as env:`` gives the environment variables to reach it."""

    def __init__(self) -> None:
        self.why_not: Optional[str] = None
        self.env: dict[str, str] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._home = ""

    def start(self) -> dict[str, str]:
        """Start the bus and the daemon; ``{}`` (and :attr:`why_not`) when that is impossible."""
        for tool in ("dbus-daemon", "gnome-keyring-daemon"):
            if shutil.which(tool) is None:
                self.why_not = f"{tool} is not installed"
                return {}
        self._home = tempfile.mkdtemp(prefix="bench-secret-service-")
        env = dict(os.environ)
        env.update(
            HOME=self._home,
            XDG_DATA_HOME=os.path.join(self._home, "data"),
            XDG_RUNTIME_DIR=self._home,
        )
        # No service files on the bus: a probe that came before the daemon's name would
        # otherwise make D-Bus start a second daemon, which stop() does not know about.
        from tests.services_secret_service import BUS_CONFIG

        config = os.path.join(self._home, "bus.conf")
        with open(config, "w") as fh:
            fh.write(BUS_CONFIG)
        bus = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._procs.append(bus)
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        if not address:
            self.why_not = "dbus-daemon did not start"
            self.stop()
            return {}
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        keyring = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._procs.append(keyring)
        assert keyring.stdin is not None
        keyring.stdin.write(b"bench-unlock\n")  # the private keyring's password
        keyring.stdin.close()
        if not _wait_for_service(env):
            self.why_not = "gnome-keyring-daemon did not answer on the private bus"
            self.stop()
            return {}
        self.env = {k: env[k] for k in ("DBUS_SESSION_BUS_ADDRESS",)}
        return self.env

    def items(self) -> Optional[int]:
        """How many items the private keyring holds now (``None``: not running, or no answer)."""
        if not self.env:
            return None
        count = (
            "import secretstorage; c = secretstorage.dbus_init(); print(sum(len(list("
            "k.get_all_items())) for k in secretstorage.get_all_collections(c)))"
        )
        done = subprocess.run(
            [sys.executable, "-c", count],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return int(done.stdout) if done.returncode == 0 else None

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self._home:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = ""

    def __enter__(self) -> dict[str, str]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_for_service(env: dict[str, str], timeout: float = 10.0) -> bool:
    """Whether org.freedesktop.secrets answers (a real call through secretstorage)."""
    probe = (
        "import secretstorage; c = secretstorage.dbus_init(); "
        "secretstorage.get_default_collection(c).is_locked()"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env=env,
            capture_output=True,
            check=False,
        )
        if done.returncode == 0:
            return True
        time.sleep(0.2)
    return False
