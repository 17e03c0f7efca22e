"""The Secret Service over one kept D-Bus connection, bypassing keyring (plain case only).

Used when keyring would resolve its SecretService backend anyway: same items, same
attributes, one connection per process instead of one per call.
"""

from __future__ import annotations

import os
from typing import Any, Optional

SECRET_SERVICE = "keyring.backends.SecretService.Keyring"  # noqa: S105 - a class name
_SS_BUS = "org.freedesktop.secrets"


def direct_reads_allowed() -> bool:
    """Whether keyring would resolve nothing but its SecretService backend, as last time.

    Checked without importing keyring (~12 ms with its dependencies): no other backend
    named in the environment or in keyringrc.cfg, none set by the application, no
    ``KEYRING_PROPERTY_*`` (scheme, preferred collection) that changes how it reads.
    """
    import sys

    if os.name != "posix" or sys.platform == "darwin":
        return False
    if os.environ.get("PYTHON_KEYRING_BACKEND", SECRET_SERVICE) != SECRET_SERVICE:
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


#: What keyring's SecretService backend writes, so keyring (and seahorse, secret-tool …)
#: read our entries and we read theirs.
_APPLICATION = "Python keyring library"


def _label(service: str, username: str) -> str:
    return f"Password for '{username}' on '{service}'"


class DirectSecretService:
    """Reads and writes the entries keyring's SecretService backend keeps, on one connection.

    keyring's backend opens a new D-Bus connection and a new Diffie-Hellman session per
    call (~10 ms) and pulls in ``cryptography`` through secretstorage. This channel uses
    jeepney (secretstorage's own D-Bus library) on one connection per process with a
    ``plain`` session — the transport the Secret Service spec allows on the user's private
    session bus. Items carry exactly keyring's attributes (``service``, ``username``,
    ``application``) and label, so keyring reads what this writes and the other way round.
    It handles only the plain case (default collection unlocked, no prompt); anything
    else raises, and the store hands the call to keyring (prompts, errors and all).
    Callers bound every call in time (:func:`~.keyring_backend.bounded`).
    """

    def __init__(self) -> None:
        self._connection: Any = None
        self._pid = 0
        self._session: Optional[str] = None

    def _call(self, message: Any) -> Any:
        from jeepney.wrappers import unwrap_msg

        if self._connection is None or self._pid != os.getpid():  # not across a fork
            from jeepney.io.blocking import open_dbus_connection

            self._connection = open_dbus_connection(bus="SESSION")
            self._pid = os.getpid()
            self._session = None
        return unwrap_msg(self._connection.send_and_get_reply(message))

    def _collection(self) -> Any:
        from jeepney import DBusAddress

        return DBusAddress(
            "/org/freedesktop/secrets/aliases/default",
            bus_name=_SS_BUS,
            interface="org.freedesktop.Secret.Collection",
        )

    def _find(self, service: str, username: str) -> list[str]:
        from jeepney import new_method_call

        # No "Locked" round trip first: on a locked collection GetSecret, CreateItem and
        # Delete fail (IsLocked), and the store hands the call to keyring, which prompts;
        # an empty search asks (a locked collection may hide what it holds).
        collection = self._collection()
        query = {"service": service, "username": username}
        return list(self._call(new_method_call(collection, "SearchItems", "a{ss}", (query,)))[0])

    def _open_session(self) -> str:
        from jeepney import DBusAddress, new_method_call

        if self._session is None:
            secrets_service = DBusAddress(
                "/org/freedesktop/secrets",
                bus_name=_SS_BUS,
                interface="org.freedesktop.Secret.Service",
            )
            plain = ("plain", ("s", ""))
            opened = self._call(new_method_call(secrets_service, "OpenSession", "sv", plain))
            self._session = str(opened[1])
        return self._session

    def get(self, service: str, username: str) -> Optional[str]:
        """The secret of the first item for ``(service, username)``, or ``None``."""
        from jeepney import DBusAddress, Properties, new_method_call

        paths = self._find(service, username)
        if not paths:
            # A locked collection may hide items: "not found" only from an unlocked one.
            if self._call(Properties(self._collection()).get("Locked"))[0][1]:
                raise RuntimeError("the default collection is locked")
            return None
        session = self._open_session()
        item = DBusAddress(paths[0], bus_name=_SS_BUS, interface="org.freedesktop.Secret.Item")
        secret = self._call(new_method_call(item, "GetSecret", "o", (session,)))[0]
        return bytes(secret[2]).decode("utf-8")

    def set(self, service: str, username: str, value: str) -> None:
        """Create or replace the item for ``(service, username)`` (keyring's attributes)."""
        from jeepney import new_method_call

        session = self._open_session()
        attributes = {"username": username, "service": service, "application": _APPLICATION}
        properties = {
            "org.freedesktop.Secret.Item.Label": ("s", _label(service, username)),
            "org.freedesktop.Secret.Item.Attributes": ("a{ss}", attributes),
        }
        secret = (session, b"", value.encode("utf-8"), "text/plain")
        message = new_method_call(
            self._collection(), "CreateItem", "a{sv}(oayays)b", (properties, secret, True)
        )
        _, prompt = self._call(message)
        if prompt != "/":
            raise RuntimeError("the Secret Service wants a prompt to create the item")

    def delete(self, service: str, username: str) -> bool:
        """Delete every item for ``(service, username)``; whether there was one."""
        from jeepney import DBusAddress, Properties, new_method_call

        paths = self._find(service, username)
        if not paths and self._call(Properties(self._collection()).get("Locked"))[0][1]:
            raise RuntimeError("the default collection is locked")
        for path in paths:
            item = DBusAddress(path, bus_name=_SS_BUS, interface="org.freedesktop.Secret.Item")
            (prompt,) = self._call(new_method_call(item, "Delete"))
            if prompt != "/":
                raise RuntimeError("the Secret Service wants a prompt to delete the item")
        return bool(paths)

    def close(self) -> None:
        """Close the connection (only in the process that opened it)."""
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None
        self._session = None
