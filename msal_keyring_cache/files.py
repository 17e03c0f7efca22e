"""Private files, written atomically.

Every file the library writes is created 0600 in a directory it creates 0700, by
writing a temporary file in the same directory, fsyncing it, renaming it over the
target with :func:`os.replace` and fsyncing the directory: a reader sees the old
file or the new one, never a torn one, and a crash loses at most the write that had
not returned.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from typing import Optional

from .errors import ConfigError, StoreError

__all__ = [
    "atomic_write",
    "check_not_symlink",
    "check_regular",
    "ensure_private_dir",
    "leftovers",
    "move_aside",
    "open_regular",
    "read_file",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def check_not_symlink(path: str) -> None:
    """Refuse a path that is a symbolic link (it could point the cache anywhere)."""
    if os.path.islink(path):
        raise ConfigError(
            f"{path} is a symbolic link; refusing to follow it (a link could redirect the "
            "cache or its key elsewhere). Point the setting at a regular file."
        )


def check_regular(path: str) -> None:
    """Refuse a path that exists but is not a regular file (a link, FIFO, device, directory).

    Uses ``lstat``, so it never opens (and never blocks on) what it checks.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot use {path!r}: {_reason(exc)}.") from None
    if stat.S_ISLNK(mode):
        check_not_symlink(path)
    if not stat.S_ISREG(mode):
        raise _not_regular(path)


def _not_regular(path: str) -> StoreError:
    return StoreError(
        f"{path} is not a regular file (a directory, FIFO, socket or device); refusing to "
        "use it. Remove it or point the setting at another path."
    )


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


def ensure_private_dir(directory: str) -> None:
    """Create ``directory`` and every missing parent with mode 0700, whatever the umask.

    ``os.makedirs`` applies its mode to the last directory only, and through the umask:
    each directory is made here one by one and set to 0700 explicitly.
    """
    if os.path.isdir(directory):
        return
    missing = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise
                continue  # another process made it meanwhile: theirs is just as good
            os.chmod(path, 0o700)
    except OSError as exc:
        raise StoreError(
            f"Cannot create directory {directory}: {_reason(exc)}. Check its parent's "
            "permissions or choose another path."
        ) from None


def read_file(path: str) -> Optional[bytes]:
    """Read a whole file without following a symlink; ``None`` if it does not exist."""
    found = read_file_keep_open(path)
    if found is None:
        return None
    os.close(found[1])
    return found[0]


def read_file_keep_open(path: str) -> Optional[tuple[bytes, int]]:
    """Like :func:`read_file`, also returning the still-open descriptor (caller closes)."""
    fd = open_regular(path, os.O_RDONLY)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        chunks = []
        while True:
            chunk = os.read(fd, max(size, 65536))
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"Cannot read {path}: {exc.strerror}.") from None
    return b"".join(chunks), fd


def open_regular(path: str, flags: int) -> Optional[int]:
    """Open an existing regular file without following a link and without blocking.

    ``None`` if it does not exist. A FIFO, device or directory is refused with
    :class:`StoreError` before anything is read: ``O_NONBLOCK`` keeps the open of a FIFO
    from waiting for a writer, and ``fstat`` tells what was opened.
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _BINARY | _NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            check_not_symlink(path)
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO with no reader, a directory
            raise _not_regular(path) from None
        raise StoreError(f"Cannot open {path}: {exc.strerror}.") from None
    except ValueError:  # a NUL in the path
        raise ConfigError(f"Cannot use {path!r}: the path contains a NUL character.") from None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    if not regular:
        os.close(fd)
        raise _not_regular(path)
    return fd


def atomic_write(path: str, data: bytes) -> int:
    """Replace ``path`` with ``data`` atomically (0600).

    Returns a descriptor still open on the new file (the caller closes it): it lets
    :class:`~msal_keyring_cache.watch.FileIdentity` recognise this version later.
    """
    directory = os.path.dirname(path) or "."
    ensure_private_dir(directory)
    check_not_symlink(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if os.name == "posix":
                # Keep a read-only descriptor: a file held open for writing would stop
                # the file system from being remounted read-only.
                written, fd = fd, os.open(tmp, os.O_RDONLY | _NOFOLLOW)
                os.close(written)
            else:  # Windows cannot rename a file that is open
                os.close(fd)
                fd = -1
            os.replace(tmp, path)
            if fd < 0:
                fd = os.open(path, os.O_RDONLY | _BINARY)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
    except OSError as exc:
        _unlink_quietly(tmp)
        raise StoreError(
            f"Cannot write {path}: {exc.strerror}. Check free disk space and the "
            "directory's permissions."
        ) from None
    _fsync_dir(directory)
    return fd


def move_aside(path: str, reason: str) -> Optional[str]:
    """Rename a damaged file to ``<path>.corrupt-<time>-<rand>`` (kept, never deleted)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = f"{path}.corrupt-{stamp}-{secrets.token_hex(3)}"
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(
            f"The cache file {path} is damaged ({reason}) and could not be moved aside: "
            f"{exc.strerror}. Move or delete it by hand."
        ) from None
    _fsync_dir(os.path.dirname(path) or ".")
    return target


def leftovers(path: str) -> list[str]:
    """Files the library left beside ``path``: ``.corrupt-*`` copies and ``.tmp`` files."""
    directory = os.path.dirname(path) or "."
    base = os.path.basename(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        corrupt = name.startswith(base + ".corrupt-")
        if corrupt or (name.startswith(f".{base}.") and name.endswith(".tmp")):
            found.append(os.path.join(directory, name))
    return sorted(found)


def loose_permissions(path: str) -> Optional[str]:
    """Describe permissions that let others read ``path`` (POSIX), else ``None``."""
    if os.name != "posix":
        return None
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return oct(mode) if mode & 0o077 else None


def _fsync_dir(directory: str) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename still happened
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
