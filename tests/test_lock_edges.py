"""The cross-process lock at its edges: what a user reads when the lock path is unusable.

Written for mutants of locking.py that no test killed. Errors that need a dropped
capability or a mount namespace run in a child (tests/test_locking.py); these run in
this process, so the mutation run sees them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from msal_keyring_cache.errors import ConfigError, StoreError
from msal_keyring_cache.locking import CrossProcessLock


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the socket file stays


def _enter(path: Path) -> None:
    CrossProcessLock(str(path), 1).__enter__()


def test_a_lock_path_under_a_plain_file_says_to_check_the_path(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"")
    path = tmp_path / "plain" / "cache.lock"
    with pytest.raises(StoreError) as info:
        _enter(path)
    assert str(info.value) == (
        f"Cannot open the token-cache lock {path}: Not a directory; "
        "check free space, permissions and the path."
    )


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: p.symlink_to(p.parent / "elsewhere"), "is a symbolic link"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: os.mkfifo(p), "is not a regular file"),
        (_socket, "is not a regular file"),  # open() of a socket: ENXIO
    ],
)
def test_an_unusable_lock_path_is_named_with_what_is_there(
    tmp_path: Path, make: object, what: str
) -> None:
    path = tmp_path / "cache.lock"
    make(path)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        _enter(path)
    assert str(info.value) == (
        f"The token-cache lock path {path} {what}; refusing to use it (a lock must be a "
        "plain file the library creates). Remove it, or point the cache at another path."
    )
