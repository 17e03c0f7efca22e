"""Which sessions may hold a token cache: server-side ones, never signed cookies.

A signed-cookie session sends its whole content to the browser on every response: a
token cache there leaves the server (even encrypted, it is then out of the app's
control) and overflows the 4 KB cookie limit. Those are recognised by class, without
importing the web framework.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Optional

from ..errors import ConfigError
from .base import Backend, Record

__all__ = ["NoStore", "check_server_side"]

#: (module, class) of the session classes that live in a signed cookie.
COOKIE_SESSIONS = {
    ("flask.sessions", "SecureCookieSession"),  # Flask's default (NullSession derives from it)
    ("django.contrib.sessions.backends.signed_cookies", "SessionStore"),
    ("werkzeug.contrib.securecookie", "SecureCookie"),
}


def check_server_side(session: Any) -> None:
    """Raise :class:`~msal_keyring_cache.ConfigError` unless ``session`` can hold a cache."""
    if type(session).__name__ == "LocalProxy":  # flask.session: check what it stands for
        session = session._get_current_object()
    for cls in type(session).__mro__:
        if (cls.__module__, cls.__qualname__) in COOKIE_SESSIONS:
            raise ConfigError(
                f"for_session() refuses {cls.__module__}.{cls.__qualname__}: it is a "
                "signed-cookie session, so the token cache would travel to the browser and "
                "overflow the cookie. Use a server-side session (Flask-Session, Django's db, "
                "cache or file session engine, a store-backed Starlette session) or "
                "for_user() with a store."
            )
    if not isinstance(session, MutableMapping) and not all(
        hasattr(session, name) for name in ("get", "__getitem__", "__setitem__")
    ):
        raise ConfigError(f"for_session() needs a dict-like session, not {type(session).__name__}")


class NoStore(Backend):
    """The "store" of caches kept only in sessions: every use is a clear error."""

    kind = "session"

    def __repr__(self) -> str:
        return "NoStore()"

    def _refuse(self) -> ConfigError:
        return ConfigError(
            "These caches live in server-side sessions only (UserCaches.in_sessions): use "
            "for_session(session, user_id); for for_user() build them with from_url()."
        )

    def load(self, name: str) -> Optional[Record]:
        raise self._refuse()

    def save(self, name: str, seen: str, value: bytes, ttl: int) -> bool:
        raise self._refuse()

    def delete(self, name: str) -> bool:
        raise self._refuse()

    def close(self) -> None:
        pass
