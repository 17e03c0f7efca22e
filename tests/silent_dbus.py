"""A D-Bus session bus that accepts connections and never answers (a hung D-Bus service).

What a wedged ``dbus-daemon`` or a frozen session looks like to a client: ``connect()``
succeeds, then nothing comes back. Two modes, so each stage of a client can be caught:

* ``mute``: not even the authentication handshake is answered (hangs in connection setup).
* ``auth``: the SASL handshake completes as a real bus would (``OK <guid>``,
  ``AGREE_UNIX_FD``), then every message — ``Hello`` included — is read and never answered
  (hangs in the first method call).

It cannot be a real daemon: a real ``dbus-daemon`` always answers ``Hello``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Optional

__all__ = ["SilentBus"]


class SilentBus:
    """``with SilentBus(tmp_path, mode) as bus:`` — ``bus.address`` for DBUS_SESSION_BUS_ADDRESS."""

    def __init__(self, directory: Path, mode: str = "auth") -> None:
        if mode not in {"mute", "auth"}:
            raise ValueError(mode)
        self.mode = mode
        self.path = str(directory / f"silent-bus-{secrets.token_hex(4)}")
        self.address = f"unix:path={self.path}"
        self.connections = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._clients: list[socket.socket] = []
        self._stop = threading.Event()

    def __enter__(self) -> SilentBus:
        self._server.bind(self.path)
        self._server.listen(64)
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._stop.set()
        self._server.close()
        for client in self._clients:
            with contextlib.suppress(OSError):
                client.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            self._clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        buffer = b""
        authenticated = False
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                data = client.recv(65536)
                if not data:
                    return
                if self.mode == "mute" or authenticated:
                    continue  # read and never answer
                buffer += data.lstrip(b"\0") if not buffer else data
                while b"\r\n" in buffer and not authenticated:
                    line, buffer = buffer.split(b"\r\n", 1)
                    if line.startswith(b"AUTH"):
                        client.sendall(b"OK " + secrets.token_hex(16).encode() + b"\r\n")
                    elif line.startswith(b"NEGOTIATE_UNIX_FD"):
                        client.sendall(b"AGREE_UNIX_FD\r\n")
                    elif line.startswith(b"BEGIN"):
                        authenticated = True
                    else:
                        client.sendall(b"ERROR\r\n")
