"""The cache in the OS credential store, through ``keyring``; and the ``auto`` backend choice.

Layout in the credential store (service ``S``, account ``A``):

* One entry ``(S, A)`` holding the cache's JSON text — one write per save — on every
  backend without a size limit (macOS Keychain, Secret Service, KWallet …).
* Where a backend limits the size of an entry (Windows Credential Manager: 2,560 bytes,
  1,280 UTF-16 characters), a value too long is split into chunk entries
  ``(S|A|<gen>.<i>, A)`` and ``(S, A)`` holds a manifest (generation, chunk count,
  SHA-256). A save writes the new generation's chunks, then the manifest, then deletes
  the old generation's chunks; a reader checks the digest and reads again on a mismatch,
  so it never assembles a mix of two generations.

Change detection costs no credential-store round trip: every save replaces a small,
non-secret *stamp* file beside the lock file (under the lock), and
:class:`~msal_keyring_cache.locking.FileIdentity` tells whether it moved on. The stamp
also remembers which keyring backend holds the cache, so a later process loads that
backend directly instead of paying keyring's backend discovery.

``keyring`` is imported lazily; every call into it runs in a worker thread bounded by
``keyring_timeout`` (an unlock prompt or a hung D-Bus service never hangs the app).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import secrets
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ..errors import BackendUnavailableError, CacheError, ConfigError, StoreError
from ..files import atomic_write, read_file_keep_open
from ..locking import CrossProcessLock, FileIdentity
from .base import Store

if TYPE_CHECKING:
    from ..cache import BackendInfo
    from ..config import Settings
    from ..crypto import KeySource

__all__ = [
    "WINDOWS_MAX_VALUE_LENGTH",
    "KeyringStore",
    "choose",
    "classify_backend",
    "default_lock_path",
    "envelope_key",
    "resolve_backend",
]

logger = logging.getLogger("msal_keyring_cache")

#: Windows Credential Manager keeps at most 2,560 bytes per entry: 1,280 UTF-16 characters.
WINDOWS_MAX_VALUE_LENGTH = 1280
_KNOWN_LIMITS = {"keyring.backends.Windows.WinVaultKeyring": WINDOWS_MAX_VALUE_LENGTH}
_MANIFEST = "msal-keyring-cache-manifest:"
_STAMP_FORMAT = "msal-keyring-cache-stamp"
_UNUSABLE = {"keyring.backends.fail.Keyring", "keyring.backends.null.Keyring"}
# Only these may be imported by the name a stamp file remembers (it is a user file, but
# importing an arbitrary module named in it is more than it should be able to cause).
_REMEMBERABLE = ("keyring.backends.", "keyrings.")
_READ_ATTEMPTS = 4
_REMEMBERED = "remembered from the last write"
_PROTECTION = {
    "keyring.backends.SecretService.Keyring": "OS credential store (Secret Service: "
    "GNOME Keyring, KWallet or KeePassXC; encrypted at rest, unlocked with the login)",
    "keyring.backends.libsecret.Keyring": "OS credential store (Secret Service via libsecret)",
    "keyring.backends.kwallet.DBusKeyring": "OS credential store (KWallet)",
    "keyring.backends.macOS.Keyring": "OS credential store (macOS Keychain)",
    "keyring.backends.Windows.WinVaultKeyring": "OS credential store (Windows Credential "
    "Manager, DPAPI-encrypted per user)",
}
_logged: set[tuple[str, str, str]] = set()

T = TypeVar("T")


# -- bounded calls and error translation ------------------------------------------------


class KeyringTimeoutError(BackendUnavailableError):
    """A credential-store call did not answer within ``keyring_timeout``."""


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe_error(exc: BaseException) -> str:
    """Type and text of a third-party error, without ever echoing a value we passed in."""
    name = type(exc).__name__
    module = type(exc).__module__.split(".")[0]
    if isinstance(exc, OSError):
        detail = exc.strerror or " ".join(str(a) for a in exc.args[:3] if not isinstance(a, bytes))
        return f"{name}: {detail}"[:300]
    if module in {"keyring", "secretstorage", "jeepney", "dbus"} or isinstance(
        exc, (RuntimeError, ImportError, AttributeError)
    ):
        return f"{name}: {exc}"[:300]
    return name  # an unknown error's text could quote the value being written


def _bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` in a worker thread; give up after ``timeout`` seconds (0 = no limit)."""
    if timeout <= 0:
        return fn()
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="msal-keyring-cache-keyring", daemon=True).start()
    if not done.wait(timeout):
        raise KeyringTimeoutError(
            f"The OS credential store did not answer ({what}) within {timeout:g} s, so the "
            "call was abandoned. It may be waiting for an unlock prompt, or its D-Bus service "
            "may be hung. Unlock the keyring, raise the keyring timeout (…_KEYRING_TIMEOUT), "
            "or use the encrypted file (…_BACKEND=file)."
        )
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _translate(exc: BaseException, what: str, backend_name: str) -> CacheError:
    """Map a keyring/D-Bus/OS error to the library's own error with what to do."""
    if isinstance(exc, CacheError):
        return exc
    detail = _describe_error(exc)
    name = type(exc).__name__
    if name in {"KeyringLocked", "LockedException", "PromptDismissedException"}:
        return BackendUnavailableError(
            f"The OS credential store ({backend_name}) is locked ({what}: {detail}). Unlock it "
            "(log in to the desktop session, or unlock the login keyring) and try again; or "
            "use the encrypted file instead (…_BACKEND=file, or …_KEYRING_FALLBACK=1 to fall "
            "back when the store is locked)."
        )
    if what.startswith(("set", "delete")) or name in {"PasswordSetError", "PasswordDeleteError"}:
        return StoreError(
            f"The OS credential store ({backend_name}) refused to write the token cache "
            f"({what}: {detail}). If the entry is too large for it, set a maximum value "
            "length so it is split into chunks; otherwise use the encrypted file "
            "(…_BACKEND=file)."
        )
    return BackendUnavailableError(
        f"The OS credential store ({backend_name}) could not be used ({what}: {detail}). "
        "Check that its service is running and reachable (on Linux: a Secret Service such "
        "as gnome-keyring on the session D-Bus), or use the encrypted file (…_BACKEND=file)."
    )


# -- backend resolution and classification ----------------------------------------------


def resolve_backend(remembered: Optional[str], timeout: float) -> tuple[Any, str]:
    """The keyring backend to use and how it was found.

    Honours keyring's own order — ``PYTHON_KEYRING_BACKEND``, a backend the application
    set with ``keyring.set_keyring``, ``keyringrc.cfg`` — then the backend a stamp file
    remembers (skipping keyring's ~40 ms entry-point scan and priority probes), and
    only then keyring's discovery by priority.
    """
    import keyring.core

    def load(fn: Callable[[], Any], source: str) -> Any:
        try:
            return _bounded(fn, timeout, f"loading the backend named by {source}")
        except CacheError:
            raise
        except Exception as exc:
            raise BackendUnavailableError(
                f"The keyring backend named by {source} cannot be used here: "
                f"{_describe_error(exc)}. Fix or remove that setting."
            ) from None

    if os.environ.get("PYTHON_KEYRING_BACKEND"):
        return _unchain(load(keyring.core.load_env, "PYTHON_KEYRING_BACKEND")), (
            "PYTHON_KEYRING_BACKEND"
        )
    chosen = getattr(keyring.core, "_keyring_backend", None)  # set_keyring() by the app
    if chosen is not None:
        return _unchain(chosen), "keyring.set_keyring()"
    configured = load(keyring.core.load_config, "keyringrc.cfg")
    if configured is not None:
        return _unchain(configured), "keyringrc.cfg"
    if remembered and remembered.startswith(_REMEMBERABLE):
        cls = _import_backend_class(remembered)
        if cls is not None:
            try:
                return cls(), _REMEMBERED
            except Exception:  # noqa: S110 - fall through to discovery
                pass
    try:
        found = _bounded(keyring.core.get_keyring, timeout, "discovering backends")
    except CacheError:
        raise
    except Exception as exc:
        raise BackendUnavailableError(
            f"keyring could not choose a backend: {_describe_error(exc)}."
        ) from None
    return _unchain(found), "keyring's choice by priority"


def _import_backend_class(name: str) -> Optional[type]:
    from keyring.backend import KeyringBackend

    module_name, _, class_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, KeyringBackend) else None


def _unchain(backend: Any) -> Any:
    """keyring's chainer writes to its first backend: use that one directly."""
    from keyring.backends.chainer import ChainerBackend

    if isinstance(backend, ChainerBackend):
        chained = list(backend.backends)
        if chained:
            return chained[0]
        from keyring.backends import fail

        return fail.Keyring()  # type: ignore[no-untyped-call]
    return backend


def classify_backend(backend: Any) -> Optional[str]:
    """``None`` for a secure, usable backend, else why not (``auto`` falls back then)."""
    name = _qualname(backend)
    if name in _UNUSABLE:
        return f"keyring found no usable credential store (it resolved {name})"
    if "plaintext" in name.lower():
        return f"keyring resolved {name}, which keeps secrets unencrypted"
    try:
        priority = float(type(backend).priority)
    except Exception as exc:
        return f"keyring backend {name} is not viable here ({_describe_error(exc)})"
    if priority < 1:
        return f"keyring backend {name} has priority {priority:g} < 1 (not recommended/secure)"
    return None


# -- direct Secret Service reads --------------------------------------------------------

_SECRET_SERVICE = "keyring.backends.SecretService.Keyring"  # noqa: S105 - a class name
_SS_BUS = "org.freedesktop.secrets"


def _direct_reads_allowed() -> bool:
    """Whether keyring would resolve nothing but its SecretService backend, as last time.

    Checked without importing keyring (~12 ms with its dependencies): no other backend
    named in the environment or in keyringrc.cfg, none set by the application, no
    ``KEYRING_PROPERTY_*`` (scheme, preferred collection) that changes how it reads.
    """
    import sys

    if os.name != "posix" or sys.platform == "darwin":
        return False
    if os.environ.get("PYTHON_KEYRING_BACKEND", _SECRET_SERVICE) != _SECRET_SERVICE:
        return False
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return False
    if any(name.startswith("KEYRING_PROPERTY_") for name in os.environ):
        return False
    core = sys.modules.get("keyring.core")
    if core is not None and getattr(core, "_keyring_backend", None) is not None:
        return False
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return not os.path.exists(os.path.join(config_home, "python_keyring", "keyringrc.cfg"))


class _DirectSecretService:
    """Reads the entries keyring's SecretService backend writes, over one kept connection.

    keyring's backend opens a new D-Bus connection and a new Diffie-Hellman session per
    call (~10 ms) and pulls in ``cryptography`` through secretstorage. This reader uses
    jeepney (secretstorage's own D-Bus library) on one connection per process with a
    ``plain`` session — the transport the Secret Service spec allows on the user's private
    session bus. It handles only the plain case (default collection unlocked); anything
    else raises, and the store hands the read to keyring (prompts, errors and all).
    Writes always go through keyring.
    """

    def __init__(self) -> None:
        self._connection: Any = None
        self._session: Optional[str] = None

    def get(self, service: str, username: str) -> Optional[str]:
        from jeepney import DBusAddress, Properties, new_method_call
        from jeepney.wrappers import unwrap_msg

        if self._connection is None:
            from jeepney.io.blocking import open_dbus_connection

            self._connection = open_dbus_connection(bus="SESSION")

        def call(message: Any) -> Any:
            return unwrap_msg(self._connection.send_and_get_reply(message))

        collection = DBusAddress(
            "/org/freedesktop/secrets/aliases/default",
            bus_name=_SS_BUS,
            interface="org.freedesktop.Secret.Collection",
        )
        if call(Properties(collection).get("Locked"))[0][1]:
            raise RuntimeError("the default collection is locked")
        query = {"service": service, "username": username}
        paths = call(new_method_call(collection, "SearchItems", "a{ss}", (query,)))[0]
        if not paths:
            return None
        if self._session is None:
            secrets_service = DBusAddress(
                "/org/freedesktop/secrets",
                bus_name=_SS_BUS,
                interface="org.freedesktop.Secret.Service",
            )
            plain = ("plain", ("s", ""))
            opened = call(new_method_call(secrets_service, "OpenSession", "sv", plain))
            self._session = opened[1]
        item = DBusAddress(paths[0], bus_name=_SS_BUS, interface="org.freedesktop.Secret.Item")
        secret = call(new_method_call(item, "GetSecret", "o", (self._session,)))[0]
        return bytes(secret[2]).decode("utf-8")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            self._session = None


# -- the store ----------------------------------------------------------------------------

_NOTHING: Any = object()


class KeyringStore(Store):
    """The serialized cache as an entry ``(service, account)`` in the OS credential store.

    :param service: credential-store service name.
    :param account: credential-store account (user name) under the service.
    :param lock_path: the cross-process lock file; the stamp file lives beside it.
    :param keyring_timeout: seconds each credential-store call may take (0 = no limit).
    :param lock_timeout: seconds to wait for the lock.
    :param max_value_length: characters per entry; longer values are chunked. Default:
        the backend's known limit (Windows: 1,280), else no chunking.
    :param backend: a ``keyring.backend.KeyringBackend`` instance; default: the one keyring
        resolves (``PYTHON_KEYRING_BACKEND``, keyringrc, priorities).
    """

    kind = "keyring"

    def __init__(
        self,
        service: str,
        account: str,
        *,
        lock_path: str,
        keyring_timeout: float = 3.0,
        lock_timeout: float = 60.0,
        max_value_length: Optional[int] = None,
        backend: Any = None,
    ) -> None:
        super().__init__()
        if not service or not account:
            raise ConfigError("KeyringStore needs a non-empty service and account.")
        if max_value_length is not None and max_value_length < 200:
            raise ConfigError("max_value_length must be at least 200 characters.")
        self.service = service
        self.account = account
        self.keyring_timeout = keyring_timeout
        self.max_value_length = max_value_length
        lock_path = os.path.abspath(os.path.expanduser(lock_path))
        self._lock = CrossProcessLock(lock_path, lock_timeout)
        base = lock_path[: -len(".lock")] if lock_path.endswith(".lock") else lock_path
        self.stamp_path = base + ".stamp"
        self._identity = FileIdentity(self.stamp_path)
        self._backend = backend
        self._direct: Optional[_DirectSecretService] = None
        self._direct_ok = backend is None  # may reads bypass keyring (see resolve())?
        self.resolved_by = "given" if backend is not None else ""
        self._loaded = False
        self._primed: Any = _NOTHING
        self._chunks: tuple[str, int] = ("", 0)  # generation and count last seen
        #: Credential-store calls made by this store (tests and benchmarks read them).
        self.calls = {"get": 0, "set": 0, "delete": 0}

    # -- backend ---------------------------------------------------------------------

    def resolve(self) -> None:
        """Choose the backend without reading the cache.

        When the stamp file says the cache was last written by keyring's SecretService
        backend and nothing tells keyring otherwise, reads go straight to the Secret
        Service (see :class:`_DirectSecretService`) and keyring is imported only to write.
        """
        if self._backend is not None or self._direct is not None:
            return
        remembered = self._read_stamp_doc().get("backend")
        if self._direct_ok and remembered == _SECRET_SERVICE and _direct_reads_allowed():
            self._direct = _DirectSecretService()
            self.resolved_by = _REMEMBERED
            return
        self._backend, self.resolved_by = resolve_backend(remembered, self.keyring_timeout)

    @property
    def backend(self) -> Any:
        """The keyring backend in use (resolved on first use)."""
        if self._backend is None:
            self._backend, self.resolved_by = resolve_backend(
                self._read_stamp_doc().get("backend"), self.keyring_timeout
            )
        return self._backend

    @property
    def direct(self) -> bool:
        """Whether reads bypass keyring (straight to the Secret Service)."""
        return self._direct is not None

    def forget_backend(self) -> None:
        """Drop the resolved backend; resolve again (without the stamp's memory) next time."""
        self._drop_direct()
        self._direct_ok = False
        self._backend = None
        self._identity.forget()
        self._loaded = False
        self._primed = _NOTHING

    def rediscover(self) -> None:
        """Resolve the backend again by keyring's own rules, ignoring the stamp's memory."""
        self.forget_backend()
        self._backend, self.resolved_by = resolve_backend(None, self.keyring_timeout)

    def _drop_direct(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    @property
    def backend_name(self) -> str:
        if self._backend is None and self._direct is not None:
            return _SECRET_SERVICE
        return _qualname(self.backend)

    def _limit(self) -> Optional[int]:
        if self.max_value_length is not None:
            return self.max_value_length
        return _KNOWN_LIMITS.get(self.backend_name)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        self.calls[what.split()[0]] += 1
        try:
            return _bounded(fn, self.keyring_timeout, what)
        except KeyringTimeoutError:
            raise
        except Exception as exc:
            raise _translate(exc, what, self.backend_name) from None

    def _get(self, service: str) -> Optional[str]:
        direct = self._direct
        if direct is not None:
            try:
                value = _bounded(
                    lambda: direct.get(service, self.account), self.keyring_timeout, "get password"
                )
                self.calls["get"] += 1
                return value
            except KeyringTimeoutError:
                self._drop_direct()
                raise
            except Exception:
                # Not the plain case (locked, no default collection …): keyring's turn.
                self._drop_direct()
                self._direct_ok = False
        backend = self.backend
        value = self._call("get password", lambda: backend.get_password(service, self.account))
        if value is not None and not isinstance(value, str):
            raise StoreError(f"The credential store returned a {type(value).__name__}, not text.")
        return value

    def _set(self, service: str, value: str) -> None:
        backend = self.backend
        self._call("set password", lambda: backend.set_password(service, self.account, value))

    def _delete(self, service: str) -> None:
        backend = self.backend
        with contextlib.suppress(StoreError):  # already gone (PasswordDeleteError)
            self._call("delete password", lambda: backend.delete_password(service, self.account))

    def _chunk_service(self, gen: str, index: int) -> str:
        return f"{self.service}|{self.account}|{gen}.{index}"

    # -- stamp -------------------------------------------------------------------------

    def _read_stamp_doc(self) -> dict[str, Any]:
        found = read_file_keep_open(self.stamp_path)
        if found is None:
            return {}
        os.close(found[1])
        return _parse_stamp(found[0])

    def _write_stamp(self) -> None:
        blob = json.dumps(
            {"format": _STAMP_FORMAT, "write": secrets.token_hex(8), "backend": self.backend_name},
            separators=(",", ":"),
        ).encode()
        fd = atomic_write(self.stamp_path, blob)
        self._identity.remember(fd, blob)

    # -- Store protocol ----------------------------------------------------------------

    def lock(self) -> CrossProcessLock:
        return self._lock

    def changed(self) -> bool:
        self.stats.checks += 1
        if not self._loaded or self._primed is not _NOTHING:
            return True
        return self._identity.changed()

    def load(self) -> Optional[bytes]:
        self.stats.loads += 1
        if self._primed is not _NOTHING:
            data, self._primed = self._primed, _NOTHING
            if not self._identity.changed():
                return data  # type: ignore[no-any-return]
        for attempt in range(_READ_ATTEMPTS):
            if attempt == _READ_ATTEMPTS - 1:
                with self._lock:  # no writer can interfere now: a mismatch is real damage
                    result = self._read_once()
                if result is _NOTHING:
                    logger.warning(
                        "The token cache in the OS credential store (service %r, account %r) "
                        "is damaged (a chunk is missing or fails its digest); the cache starts "
                        "empty, so sign in again.",
                        self.service,
                        self.account,
                    )
                    return None
            else:
                result = self._read_once()
            if result is not _NOTHING:
                return result  # type: ignore[no-any-return]
        return None  # pragma: no cover - the last attempt always returns

    def _read_once(self) -> Any:
        """One read: stamp first (a later write then shows as a change), then the entries.

        Returns the bytes, ``None`` or ``_NOTHING`` when chunks did not add up.
        """
        found = read_file_keep_open(self.stamp_path)
        try:
            value = self._get(self.service)
            gen, count, data = "", 0, None
            if value is not None and value.startswith(_MANIFEST):
                try:
                    manifest = json.loads(value[len(_MANIFEST) :])
                    gen, count, digest = manifest["gen"], int(manifest["count"]), manifest["sha256"]
                except (ValueError, KeyError, TypeError):
                    return _NOTHING
                parts = []
                for index in range(count):
                    part = self._get(self._chunk_service(gen, index))
                    if part is None:
                        return _NOTHING  # the writer deleted this generation meanwhile
                    parts.append(part)
                data = "".join(parts).encode("utf-8")
                if hashlib.sha256(data).hexdigest() != digest:
                    return _NOTHING
            elif value is not None:
                data = value.encode("utf-8")
        except BaseException:
            if found is not None:
                os.close(found[1])
            raise
        self._identity.remember(found[1] if found else None, found[0] if found else None)
        self._chunks = (gen, count)
        self._loaded = True
        return data

    def save(self, data: bytes) -> None:
        self.stats.saves += 1
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise StoreError("The keyring store keeps text; the cache is not UTF-8.") from None
        old = self._chunks
        limit = self._limit()
        if limit is None or (len(text) <= limit and not text.startswith(_MANIFEST)):
            self._set(self.service, text)  # the one write of a save
            self._chunks = ("", 0)
        else:
            gen = secrets.token_hex(4)
            parts = [text[i : i + limit] for i in range(0, len(text), limit)]
            for index, part in enumerate(parts):
                self._set(self._chunk_service(gen, index), part)
            digest = hashlib.sha256(data).hexdigest()
            manifest = {"gen": gen, "count": len(parts), "sha256": digest}
            self._set(self.service, _MANIFEST + json.dumps(manifest, separators=(",", ":")))
            self._chunks = (gen, len(parts))
        self._delete_chunks(old)
        self._loaded = True
        self._primed = _NOTHING
        self._write_stamp()

    def _delete_chunks(self, chunks: tuple[str, int]) -> None:
        gen, count = chunks
        for index in range(count):
            self._delete(self._chunk_service(gen, index))

    def clear(self) -> None:
        with self._lock:
            value = self._get(self.service)
            if value is not None and value.startswith(_MANIFEST):
                try:
                    manifest = json.loads(value[len(_MANIFEST) :])
                    self._delete_chunks((str(manifest["gen"]), int(manifest["count"])))
                except (ValueError, KeyError, TypeError):
                    pass
            if value is not None:
                self._delete(self.service)
            self._chunks = ("", 0)
            self._primed = _NOTHING
            self._write_stamp()
            self._loaded = True

    def prime(self) -> Optional[bytes]:
        """Read the cache now (the ``auto`` probe); the first :meth:`load` reuses it."""
        data = self.load()
        self.stats.loads -= 1  # the probe is not a load of the cache object's
        self._primed = data
        return data

    def describe(self) -> dict[str, Any]:
        if self._backend is not None:
            name = _qualname(self._backend)
        else:
            name = _SECRET_SERVICE if self._direct is not None else "not resolved yet"
        limit = self.max_value_length or _KNOWN_LIMITS.get(name)
        return {
            "backend": self.kind,
            "location": f"service {self.service!r}, account {self.account!r}",
            "service": self.service,
            "account": self.account,
            "keyring_backend": name,
            "resolved_by": self.resolved_by,
            "protection": _PROTECTION.get(name, f"OS credential store ({name})"),
            "chunking": f"values over {limit} characters are split" if limit else "none",
            "direct_reads": self._direct is not None,
            "lock_file": self._lock.path,
            "stamp_file": self.stamp_path,
        }

    def close(self) -> None:
        self._identity.forget()
        self._drop_direct()


def _parse_stamp(blob: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(blob)
    except ValueError:
        return {}
    if not isinstance(doc, dict) or doc.get("format") != _STAMP_FORMAT:
        return {}
    return doc


# -- what factory.py calls ----------------------------------------------------------------


def default_lock_path(settings: Settings) -> str:
    """The lock file beside the cache file's default location (stamp file next to it)."""
    from ..factory import default_path

    directory = os.path.dirname(settings.path or default_path(settings.app_name))
    tag = hashlib.sha256(f"{settings.service}\0{settings.keyring_account}".encode()).hexdigest()
    return os.path.join(directory, f"keyring-{tag[:12]}.lock")


def _store_for(settings: Settings, account: str, lock_path: str) -> KeyringStore:
    return KeyringStore(
        settings.service,
        account,
        lock_path=lock_path,
        keyring_timeout=settings.keyring_timeout,
        lock_timeout=settings.lock_timeout,
    )


def _open(store: KeyringStore) -> tuple[Optional[str], Optional[CacheError]]:
    """Resolve, classify and probe (one read). Returns (why-not-secure, error)."""
    for attempt in range(2):
        try:
            if attempt == 0:
                store.resolve()
            else:
                store.rediscover()
        except CacheError as exc:
            return None, exc
        # A remembered backend that is insecure or fails may simply be gone (no D-Bus over
        # SSH, say): decide again from keyring's own discovery, as a first run would.
        retry = attempt == 0 and store.resolved_by == _REMEMBERED
        if not store.direct:
            insecure = classify_backend(store.backend)
            if insecure is not None:
                if retry:
                    continue
                return insecure, None
        try:
            store.prime()
        except CacheError as exc:
            if retry:
                continue
            return None, exc
        return None, None
    return None, None  # pragma: no cover - the second attempt always returns


def choose(settings: Settings, env_prefix: str) -> tuple[Store, BackendInfo]:
    """The store for ``backend="auto"`` or ``"keyring"``, and why (logged once at INFO)."""
    from ..cache import BackendInfo
    from ..factory import file_store

    forced = settings.backend == "keyring"
    store = _store_for(settings, settings.keyring_account, default_lock_path(settings))
    insecure, error = _open(store)
    backend_var = settings.env_var("backend", env_prefix)
    fallback_var = settings.env_var("keyring_fallback", env_prefix)
    if insecure is None and error is None:
        reason = (
            f"backend=keyring was configured ({store.resolved_by})"
            if forced
            else f"a secure OS credential store answered ({store.resolved_by})"
        )
        return store, _info(BackendInfo("keyring", reason, store.describe()))
    if forced:
        if error is not None:
            raise error
        raise BackendUnavailableError(
            f"backend=keyring was configured, but {insecure}. Install or start a secure "
            "credential store (on Linux: gnome-keyring, KWallet or KeePassXC with its Secret "
            f"Service), or set {backend_var}=file for the encrypted file."
        )
    if error is not None and not settings.keyring_fallback:
        raise BackendUnavailableError(
            f"{error} The token cache may be kept there, so no empty file cache was started "
            f"in its place. To use the encrypted file whenever this happens, set "
            f"{fallback_var}=1; to always use it, set {backend_var}=file."
        ) from None
    fallback = file_store(settings, env_prefix)
    if error is not None:
        logger.warning(
            "The OS credential store is not usable (%s); using the encrypted file %s "
            "because keyring_fallback is set.",
            type(error).__name__,
            fallback.describe().get("location"),
        )
        reason = f"the credential store was not usable and keyring_fallback is set: {error}"
    else:
        reason = f"no secure OS credential store: {insecure}"
    return fallback, _info(BackendInfo("file", reason, fallback.describe()))


def _info(info: BackendInfo) -> BackendInfo:
    key = (info.backend, str(info.details.get("location")), info.reason)
    if key not in _logged:
        _logged.add(key)
        logger.info("Token cache backend: %s (%s)", info.backend, info.reason)
    return info


def envelope_key(settings: Settings, env_prefix: str) -> KeySource:
    """The encrypted file's Fernet key, generated once and kept in the credential store."""
    from .. import crypto
    from ..factory import default_path

    path = settings.path or default_path(settings.app_name)
    account = f"{settings.keyring_account}.key"
    store = _store_for(settings, account, path + ".key.lock")
    var = settings.env_var("key_in_keyring", env_prefix)
    insecure, error = _open(store)
    if error is not None:
        raise BackendUnavailableError(
            f"{error} ({var} keeps the cache file's key there.) Alternatively configure the "
            "key another way (…_KEY, …_PASSPHRASE or …_KEY_FILE)."
        ) from None
    if insecure is not None:
        raise BackendUnavailableError(
            f"{var} is set, but {insecure}. Use a secure credential store, or configure the "
            "key another way (…_KEY, …_PASSPHRASE or …_KEY_FILE)."
        )
    data = store.load()
    if data is None:
        with store.lock():
            data = store.load() if store.changed() else None
            if data is None:  # first use: make the key, once, under the lock
                data = crypto.generate_key().encode()
                store.save(data)
    key = data.decode("ascii", "replace").strip()
    if not crypto.is_fernet_key(key):
        raise ConfigError(
            f"The credential-store entry (service {settings.service!r}, account {account!r}) "
            "does not hold a Fernet key. Delete that entry to have a new key made (the cache "
            "file then starts empty), or configure the key another way."
        )
    return crypto.FernetKeys(
        (key,),
        label=f"the key in the OS credential store (service {settings.service!r}, "
        f"account {account!r}, {store.backend_name})",
        tag="keyring",
        protection="key in the OS credential store",
    )
