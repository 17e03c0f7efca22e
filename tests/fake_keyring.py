"""A keyring backend kept in a JSON file, for CLI tests in real subprocesses.

Select it with ``PYTHON_KEYRING_BACKEND=tests.fake_keyring.FileKeyring`` and
``FAKE_KEYRING_FILE=<path>``. ``FAKE_KEYRING_REFUSE_DELETE=1`` makes every delete fail as
Windows' and macOS' stores do when access is denied (``PasswordDeleteError``): the faithful
stand-in for a store that refuses a sign-out, which no real store here can be made to do.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError


class FileKeyring(KeyringBackend):
    priority = 5  # type: ignore[assignment]

    def _path(self) -> str:
        return os.environ["FAKE_KEYRING_FILE"]

    def _load(self) -> dict[str, str]:
        try:
            with open(self._path(), encoding="utf-8") as fh:
                data: dict[str, str] = json.load(fh)
                return data
        except FileNotFoundError:
            return {}

    def _save(self, data: dict[str, str]) -> None:
        tmp = self._path() + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, self._path())

    def get_password(self, service: str, username: str) -> Optional[str]:
        return self._load().get(f"{service}\0{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}\0{username}"] = password
        self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        if os.environ.get("FAKE_KEYRING_REFUSE_DELETE") == "1":
            raise PasswordDeleteError("Access denied")
        data = self._load()
        if data.pop(f"{service}\0{username}", None) is None:
            raise PasswordDeleteError("not found")
        self._save(data)
