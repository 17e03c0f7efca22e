"""pytest plugin (registered through the ``pytest11`` entry point): the ``loopback_idp`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import LoopbackIdentityProvider


@pytest.fixture(scope="session")
def _loopback_idp_server() -> Iterator[LoopbackIdentityProvider]:
    with LoopbackIdentityProvider() as idp:
        yield idp


@pytest.fixture
def loopback_idp(_loopback_idp_server: LoopbackIdentityProvider) -> LoopbackIdentityProvider:
    """A started :class:`~msal_keyring_cache.testing.LoopbackIdentityProvider`, log cleared."""
    _loopback_idp_server.reset()
    return _loopback_idp_server
