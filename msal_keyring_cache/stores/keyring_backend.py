"""Which keyring backend holds the cache and whether it is secure; bounded calls into it.

Every call into ``keyring`` runs in a worker thread bounded by ``keyring_timeout`` (an unlock
prompt or a hung D-Bus service never hangs the app); its errors become the library's own.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Optional, TypeVar

from ..errors import (
    BackendUnavailableError,
    CacheError,
    ConfigError,
    KeyringTimeoutError,
    StoreError,
)
from ..waits import abandon_after

__all__ = [
    "REMEMBERED",
    "bounded",
    "classify_backend",
    "qualname",
    "resolve_backend",
    "too_large",
    "translate",
]

_UNUSABLE = {"keyring.backends.fail.Keyring", "keyring.backends.null.Keyring"}
# Only these may be imported by the name a stamp file remembers (it is a user file, but
# importing an arbitrary module named in it is more than it should be able to cause).
_REMEMBERABLE = ("keyring.backends.", "keyrings.")
REMEMBERED = "remembered from the last write"

T = TypeVar("T")


# -- bounded calls and error translation ------------------------------------------------


def qualname(obj: Any) -> str:
    """The qualified class name of a backend object, e.g. ``keyring.backends.fail.Keyring``."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# Errors whose text is the backend's own wording, never the arguments it was called with.
_QUIET_MODULES = {"keyring", "secretstorage", "jeepney", "dbus"}


def _describe_error(exc: BaseException) -> str:
    """Type of a third-party error, plus its text only when that text cannot echo a value.

    A backend's ``RuntimeError``/``OSError``/``ValueError`` text may quote whatever it was
    given (the whole cache). Only ``OSError``'s ``strerror`` (the OS's own words for an
    error number) and the errors keyring and the D-Bus libraries define themselves are
    known to carry no argument; everything else is named by type alone.
    """
    name = type(exc).__name__
    module = type(exc).__module__.split(".")[0]
    if isinstance(exc, OSError):
        if isinstance(exc.errno, int) and isinstance(exc.strerror, str):
            return f"{name}: [errno {exc.errno}] {os.strerror(exc.errno)}"[:300]
        winerror = getattr(exc, "winerror", None)
        return f"{name} (error {winerror})" if isinstance(winerror, int) else name
    code = _error_code(exc)
    if module in _QUIET_MODULES:
        text = str(exc)
        if len(text) <= 200:  # keyring's own messages are short sentences
            return f"{name}: {text}"
        return name
    return f"{name} (error {code})" if code is not None else name


def _error_code(exc: BaseException) -> Optional[int]:
    """A Windows-style error number (``winerror`` or the first argument), if any."""
    code = getattr(exc, "winerror", None)
    if isinstance(code, int):
        return code
    args = exc.args
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    return None


#: Windows error numbers for "this value is too large for one credential":
#: ERROR_INVALID_PARAMETER (87), RPC_X_BAD_STUB_DATA (1783), ERROR_BAD_LENGTH (24),
#: ERROR_INSUFFICIENT_BUFFER (122).
_TOO_LARGE_CODES = {87, 1783, 24, 122}


def too_large(exc: BaseException) -> bool:
    """Whether a write error means "value too large for one entry" (Windows and kin)."""
    code = _error_code(exc)
    if code in _TOO_LARGE_CODES:
        return True
    text = str(exc).lower() if type(exc).__module__.split(".")[0] in _QUIET_MODULES else ""
    return "too large" in text or "too long" in text


def bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` in a worker thread; give up after ``timeout`` seconds.

    The timeout must be a positive, finite number: there is no "wait forever".
    """
    if not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
        raise ConfigError(
            f"The keyring timeout must be a positive number of seconds, not {timeout!r} "
            "(…_KEYRING_TIMEOUT): every credential-store call is bounded."
        )
    return abandon_after(
        timeout,
        fn,
        lambda: KeyringTimeoutError(
            f"The OS credential store did not answer ({what}) within {timeout:g} s, so the "
            "call was abandoned. It may be waiting for an unlock prompt, or its D-Bus service "
            "may be hung. Unlock the keyring, raise the keyring timeout (…_KEYRING_TIMEOUT), "
            "or use the encrypted file (…_BACKEND=file)."
        ),
        "msal-keyring-cache-keyring",
    )


def translate(exc: BaseException, what: str, keyring_name: str) -> CacheError:
    """Map a keyring/D-Bus/OS error to the library's own error with what to do."""
    if isinstance(exc, CacheError):
        return exc
    detail = _describe_error(exc)
    name = type(exc).__name__
    if name in {"KeyringLocked", "LockedException", "PromptDismissedException"}:
        return BackendUnavailableError(
            f"The OS credential store ({keyring_name}) is locked ({what}: {detail}). Unlock it "
            "(log in to the desktop session, or unlock the login keyring) and try again; or "
            "use the encrypted file instead (…_BACKEND=file, or …_KEYRING_FALLBACK=1 to fall "
            "back when the store is locked)."
        )
    if what.startswith(("set", "delete")) or name in {"PasswordSetError", "PasswordDeleteError"}:
        return StoreError(
            f"The OS credential store ({keyring_name}) refused to write the token cache "
            f"({what}: {detail}). If the entry is too large for it, set a smaller maximum "
            "value length (…_MAX_VALUE_LENGTH) so it is split into chunks; otherwise use "
            "the encrypted file (…_BACKEND=file)."
        )
    return BackendUnavailableError(
        f"The OS credential store ({keyring_name}) could not be used ({what}: {detail}). "
        "Check that its service is running and reachable (on Linux: a Secret Service such "
        "as gnome-keyring on the session D-Bus), or use the encrypted file (…_BACKEND=file)."
    )


# -- backend resolution and classification ----------------------------------------------


def resolve_backend(remembered: Optional[str], timeout: float) -> tuple[Any, str]:
    """The keyring backend to use and how it was found, within ``timeout`` seconds.

    Honours keyring's own order — ``PYTHON_KEYRING_BACKEND``, a backend the application
    set with ``keyring.set_keyring``, ``keyringrc.cfg`` — then the backend a stamp file
    remembers (skipping keyring's ~40 ms entry-point scan and priority probes), and
    only then keyring's discovery by priority. All of it (imports, priority probes,
    construction, ``KEYRING_PROPERTY_*`` attributes) runs in one bounded call.
    """
    return bounded(lambda: _resolve(remembered), timeout, "choosing the keyring backend")


def _resolve(remembered: Optional[str]) -> tuple[Any, str]:
    import keyring.core

    def load(fn: Callable[[], Any], source: str) -> Any:
        try:
            return fn()
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
                return cls(), REMEMBERED
            except Exception:  # noqa: S110 - fall through to discovery
                pass
    try:
        found = keyring.core.get_keyring()
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


def classify_backend(backend: Any, timeout: float) -> Optional[str]:
    """``None`` for a secure, usable backend, else why not (``auto`` falls back then).

    Reading ``priority`` may talk to D-Bus (keyring's SecretService backend checks the
    service is there): bounded by ``timeout`` like every other call.
    """
    name = qualname(backend)
    if name in _UNUSABLE:
        return f"keyring found no usable credential store (it resolved {name})"
    if "plaintext" in name.lower():
        return f"keyring resolved {name}, which keeps secrets unencrypted"
    try:
        priority = bounded(lambda: float(type(backend).priority), timeout, "probing the backend")
    except CacheError:
        raise
    except Exception as exc:
        return f"keyring backend {name} is not viable here ({_describe_error(exc)})"
    if priority < 1:
        return f"keyring backend {name} has priority {priority:g} < 1 (not recommended/secure)"
    return None
