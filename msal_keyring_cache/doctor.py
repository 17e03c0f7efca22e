"""``doctor``: check everything a cache depends on, and say how to fix what is wrong.

:func:`doctor` runs every check and returns each result, also when earlier ones failed
(it is what people run when things are broken). It never writes, moves or creates the
cache, its key or its lock; the credential-store probe writes one entry and deletes it
at once.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import secrets
import stat
import sys
import time
from collections.abc import Iterator
from typing import Callable, Optional

from .cache import PersistentTokenCache
from .config import Settings
from .errors import CacheError
from .files import loose_permissions
from .stores.base import Description

__all__ = ["Check", "Level", "doctor"]


class Level(str, enum.Enum):
    """How a check came out."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclasses.dataclass(frozen=True)
class Check:
    """One doctor check: its outcome, what was found, and the fix (empty when ok)."""

    name: str
    status: Level
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready fields (``status`` as ``ok``/``warn``/``fail``)."""
        return {
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
        }


def _line(text: str) -> str:
    return " ".join(str(text).split())


def doctor(settings: Settings) -> list[Check]:
    """Run every check for ``settings``; one :class:`Check` each, none skipped for a failure."""
    checks = [Check("settings", Level.OK, f"app {settings.app_name!r}, backend {settings.backend}")]
    for section in (_path_checks, _keyring_checks, _store_checks):
        checks.extend(_guarded(section, settings))
    # Messages from below name variables as "…_BACKEND": name the ones actually read.
    real = f"{settings.env_prefix}_"
    return [
        dataclasses.replace(c, detail=c.detail.replace("…_", real), fix=c.fix.replace("…_", real))
        for c in checks
    ]


def _guarded(section: Callable[[Settings], Iterator[Check]], settings: Settings) -> Iterator[Check]:
    """A section's checks; an unexpected error becomes a failed check, and the rest go on."""
    name = section.__name__.strip("_").replace("_checks", "")
    try:
        yield from section(settings)
    except CacheError as exc:
        yield Check(name, Level.FAIL, _line(str(exc)), "See the message.")
    except OSError as exc:
        yield Check(name, Level.FAIL, f"{exc.strerror or type(exc).__name__}", "See the message.")


# -- the file and its directory -----------------------------------------------------------


def _path_checks(settings: Settings) -> Iterator[Check]:
    from .factory import default_path

    path = settings.path or default_path(settings.app_name)
    uses_file = settings.backend != "keyring" or settings.key_in_keyring
    name = f"cache file {path}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        yield Check(name, Level.OK, "does not exist yet (created at the first sign-in)")
    except OSError as exc:
        yield Check(name, Level.FAIL, f"cannot be examined: {exc.strerror}", "Check its directory.")
    else:
        if stat.S_ISDIR(st.st_mode):
            yield Check(
                name,
                Level.FAIL if uses_file else Level.WARN,
                "is a directory",
                f"Point {settings.env_var('path')} at a file, e.g. {path}/token_cache.bin",
            )
        elif stat.S_ISLNK(st.st_mode):
            yield Check(name, Level.FAIL, "is a symbolic link (refused)", "Point it at a file.")
        elif not stat.S_ISREG(st.st_mode):
            yield Check(name, Level.FAIL, "is not a regular file", "Point it at a regular file.")
        else:
            yield Check(name, Level.OK, f"a regular file of {st.st_size} bytes")
    directory = os.path.dirname(path)
    existing = directory
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if _read_only_fs(existing):
        yield Check(
            f"directory {directory}",
            Level.WARN if uses_file else Level.OK,
            "is on a read-only file system: reading works, but no sign-in can be saved",
            "Choose a path on a writable file system.",
        )
    elif existing and not os.access(existing, os.W_OK):
        yield Check(
            f"directory {directory}",
            Level.FAIL if uses_file else Level.WARN,
            f"{existing} is not writable by this user",
            f"Fix the permissions of {existing}, or choose another path.",
        )
    else:
        yield Check(f"directory {directory}", Level.OK, "writable")


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# -- the credential store ------------------------------------------------------------------


def _keyring_checks(settings: Settings) -> Iterator[Check]:
    """D-Bus, which keyring backend, and a bounded probe round trip."""
    wants_keyring = settings.backend != "file" or settings.key_in_keyring
    if not wants_keyring:
        yield Check("credential store", Level.OK, "not used (backend file)")
        return
    if sys.platform.startswith("linux"):
        if os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            yield Check("D-Bus", Level.OK, "session bus address set")
        else:
            yield Check(
                "D-Bus",
                Level.WARN,
                "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS unset)",
                "Run inside a desktop session or start one with dbus-run-session; "
                "without it the encrypted file is used.",
            )
    yield from _keyring_probe(settings)


def _keyring_probe(settings: Settings) -> Iterator[Check]:
    from .factory import default_lock_path
    from .stores.credential import KeyringStore
    from .stores.keyring_backend import bounded, classify_backend, translate

    # Must the credential store work (fail), or may the file take over (warn)?
    must = settings.backend == "keyring" or settings.key_in_keyring
    soft = Level.FAIL if must else Level.WARN
    fix = (
        "Start or unlock a secure credential store (Linux: gnome-keyring, KWallet or "
        "KeePassXC on the session D-Bus), or use --backend file."
    )
    store = KeyringStore(
        settings.service,
        settings.keyring_account,
        lock_path=default_lock_path(settings),
        keyring_timeout=settings.keyring_timeout,
        lock_timeout=settings.lock_timeout,
    )
    try:
        backend = store.keyring
    except CacheError as exc:
        # auto without keyring_fallback refuses to start an empty file then: a failure.
        level = Level.FAIL if must or not settings.keyring_fallback else Level.WARN
        yield Check("credential store", level, _line(str(exc)), fix)
        return
    name = store.keyring_name
    try:
        insecure = classify_backend(backend, settings.keyring_timeout)  # bounded: D-Bus
    except CacheError as exc:
        yield Check("credential store", soft, _line(str(exc)), fix)
        return
    if insecure is not None:
        yield Check("credential store", soft, f"{insecure}; the encrypted file is used", fix)
        return
    yield Check("credential store", Level.OK, f"{name} ({store.resolved_by})")
    account = f"{settings.keyring_account}.doctor-probe"
    value = secrets.token_urlsafe(16)
    started = time.perf_counter()
    try:
        bounded(
            lambda: backend.set_password(settings.service, account, value),
            settings.keyring_timeout,
            "writing a probe entry",
        )
        read = bounded(
            lambda: backend.get_password(settings.service, account),
            settings.keyring_timeout,
            "reading the probe entry",
        )
        bounded(
            lambda: backend.delete_password(settings.service, account),
            settings.keyring_timeout,
            "deleting the probe entry",
        )
    except Exception as exc:
        error = translate(exc, "probe round trip", name)
        yield Check("probe round trip", soft, _line(str(error)), fix)
        return
    took = (time.perf_counter() - started) * 1000
    if read != value:
        yield Check("probe round trip", soft, "the probe entry read back differently", fix)
    else:
        yield Check(
            "probe round trip",
            Level.OK,
            f"write, read and delete in {took:.0f} ms "
            f"(limit {settings.keyring_timeout:g} s per call)",
        )


# -- the store: choice, protection, permissions, lock, contents ----------------------------


def _store_checks(settings: Settings) -> Iterator[Check]:
    from . import manage
    from .factory import build_store

    try:
        store, info = build_store(settings, read_only=True)
    except CacheError as exc:
        yield Check(
            "backend", Level.FAIL, _line(str(exc)), "See the message; or use --backend file."
        )
        return
    yield Check("backend", Level.OK, f"{info.backend}: {info.reason}")
    described = store.describe()
    yield _protection_check(settings, described)
    for path in _private_paths(described):
        yield _one(f"permissions of {path}", functools.partial(_permission_check, path))
    yield _one("lock", lambda: _lock_check(settings, described))
    name = "decrypt" if info.backend == "file" else "read"
    odd = manage.not_regular(described)
    if odd:  # reading would block (a FIFO) or fail: say so without trying
        yield Check(name, Level.FAIL, odd, f"Point {settings.env_var('path')} at a file.")
        store.close()
        return
    cache = PersistentTokenCache(store, backend_info=info)
    try:
        doc = manage.parse_cache(cache.serialize(), "the stored cache")
    except CacheError as exc:
        yield Check(name, Level.FAIL, _line(str(exc)), manage.advice(exc, settings, described))
    except ValueError:
        yield Check(name, Level.FAIL, "the stored cache decrypts, but is not JSON", "")
    else:
        if not doc and not described.exists:
            yield Check(name, Level.OK, f"nothing stored yet in the {info.backend} store")
        else:
            how = f" with {described.extra.get('key_source')}" if info.backend == "file" else ""
            yield Check(
                name,
                Level.OK,
                f"read {manage.count_entries(doc)} entries from the {info.backend} store{how}",
            )
    finally:
        cache.close()


def _one(name: str, check: Callable[[], Check]) -> Check:
    """One check; an error it meets is its own failure, and the next check still runs."""
    try:
        return check()
    except CacheError as exc:
        return Check(name, Level.FAIL, _line(str(exc)), "See the message.")
    except OSError as exc:
        return Check(name, Level.FAIL, exc.strerror or type(exc).__name__, "See the message.")


def _protection_check(settings: Settings, described: Description) -> Check:
    if not described.protection.weak:
        return Check("protection", Level.OK, described.protection_text)
    return Check(
        "protection",
        Level.WARN,
        described.protection_text,
        f"Set {settings.env_var('key')} or {settings.env_var('passphrase')}, keep a key file "
        f"outside the data directory ({settings.env_var('key_file')}), or set "
        f"{settings.env_var('key_in_keyring')}=1 to keep the key in the credential store.",
    )


def _private_paths(described: Description) -> list[str]:
    paths = []
    if described.backend == "file":
        paths += [os.path.dirname(described.location), described.location]
    if described.key_file:
        paths.append(described.key_file)
    return paths


def _permission_check(path: str) -> Check:
    name = f"permissions of {path}"
    if not os.path.exists(path):
        return Check(name, Level.OK, "does not exist yet (will be created private)")
    loose = loose_permissions(path)
    if loose:
        mode = "700" if os.path.isdir(path) else "600"
        return Check(name, Level.FAIL, f"others may read it (mode {loose})", f"chmod {mode} {path}")
    if os.name == "posix" and os.stat(path).st_uid != os.getuid():
        return Check(name, Level.WARN, "owned by another user", f"chown $USER {path}")
    return Check(name, Level.OK, "private")


def _lock_check(settings: Settings, described: Description) -> Check:
    from .locking import CrossProcessLock

    path: Optional[str] = described.lock_file
    if not path:
        return Check("lock", Level.OK, f"the {described.backend} store needs no lock file")
    if not os.path.exists(path):
        return Check("lock", Level.OK, f"no lock file yet ({path} is made at the first write)")
    if not os.path.isfile(path) or os.path.islink(path):
        return Check("lock", Level.FAIL, f"{path} is not a regular file", f"Remove {path}.")
    if _read_only_fs(os.path.dirname(path)):
        return Check(
            "lock",
            Level.WARN,
            f"{path} is on a read-only file system: readers need no lock, writers fail",
            "Choose a path on a writable file system.",
        )
    lock = CrossProcessLock(path, min(settings.lock_timeout, 5.0))
    started = time.perf_counter()
    try:
        with lock:
            pass
    except CacheError as exc:
        return Check(
            "lock", Level.FAIL, _line(str(exc)), "End the process holding it, or fix permissions."
        )
    took = (time.perf_counter() - started) * 1000
    return Check("lock", Level.OK, f"obtained {path} in {took:.0f} ms")
