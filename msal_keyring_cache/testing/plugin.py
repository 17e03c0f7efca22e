"""pytest plugin (registered through the ``pytest11`` entry point): the ``loopback_idp`` fixture.

It imports the identity provider (and ``requests``) only when a test uses the fixture,
so installing this package adds nothing to other projects' test runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .idp import LoopbackIdentityProvider


@pytest.fixture(scope="session")
def _loopback_idp_server() -> Iterator[LoopbackIdentityProvider]:
    from .idp import LoopbackIdentityProvider

    with LoopbackIdentityProvider() as idp:
        yield idp


@pytest.fixture
def loopback_idp(_loopback_idp_server: LoopbackIdentityProvider) -> LoopbackIdentityProvider:
    """A started :class:`~msal_keyring_cache.testing.LoopbackIdentityProvider`, log cleared."""
    _loopback_idp_server.reset()
    return _loopback_idp_server
