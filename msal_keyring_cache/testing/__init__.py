"""The test kit: a loopback identity provider, a pytest plugin, and store conformance tests.

* :class:`LoopbackIdentityProvider` (:mod:`.idp`): a local stand-in for Entra ID that
  real ``msal`` applications talk to (needs ``requests``, which msal brings).
* the ``loopback_idp`` pytest fixture (:mod:`.plugin`, registered through the
  ``pytest11`` entry point; it imports nothing heavy until a test asks for it).

Names are imported on first use, so ``import msal_keyring_cache.testing`` costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .idp import (
        DEFAULT_CLIENT_ID,
        LoopbackIdentityProvider,
        RecordedRequest,
        loopback_http_client,
    )

__all__ = [
    "DEFAULT_CLIENT_ID",
    "LoopbackIdentityProvider",
    "RecordedRequest",
    "loopback_http_client",
]

_HOMES = {
    "DEFAULT_CLIENT_ID": ".idp",
    "LoopbackIdentityProvider": ".idp",
    "RecordedRequest": ".idp",
    "loopback_http_client": ".idp",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
