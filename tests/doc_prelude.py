"""Runs one python block of the docs (``python -m tests.doc_prelude SCRIPT``), as test_docs says.

Markers in the block (comment lines, stripped from the rendered site by docs/conf.py):

* ``# doc: loopback`` — every msal application the block makes talks to a loopback
  identity provider started here, whatever authority it names; the placeholders the
  prose uses (``CLIENT_ID``, ``SECRET``, ``AUTHORITY``, ``SCOPES``, ``KEY``,
  ``FERNET_KEY``) are defined.
* ``# doc: redis`` / ``# doc: redis-cluster`` — every Redis URL the block names is the
  private server (or cluster) the test started (``DOC_REDIS_URL``).
* ``# doc: then CODE`` — run after the block, in its namespace (e.g. call the function
  it defines).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def _route_msal(idp: Any) -> None:
    import msal

    original = msal.ClientApplication.__init__

    def routed(self: Any, client_id: str, *args: Any, **kwargs: Any) -> None:
        kwargs.update(authority=idp.authority, http_client=idp.http_client)
        kwargs["instance_discovery"] = False
        original(self, client_id, *args, **kwargs)

    msal.ClientApplication.__init__ = routed


def _route_redis(url: str) -> None:
    import redis
    from redis.cluster import RedisCluster

    netloc = urlsplit(url).netloc

    def wrap(cls: Any) -> None:
        original = cls.from_url.__func__

        def from_url(klass: Any, given: str, **kwargs: Any) -> Any:
            parts = urlsplit(given)
            return original(klass, urlunsplit(parts._replace(netloc=netloc)), **kwargs)

        cls.from_url = classmethod(from_url)

    wrap(redis.Redis)
    wrap(RedisCluster)


def main(script: str) -> int:
    options = json.loads(os.environ.get("DOC_OPTIONS", "{}"))
    names: dict[str, Any] = {}
    idp = None
    if options.get("loopback"):
        from msal_keyring_cache import generate_key
        from msal_keyring_cache.testing import DEFAULT_CLIENT_ID, LoopbackIdentityProvider

        idp = LoopbackIdentityProvider().start()
        _route_msal(idp)
        key = generate_key()
        names.update(
            CLIENT_ID=DEFAULT_CLIENT_ID,
            SECRET="secret",  # the loopback provider's client secret
            AUTHORITY=idp.authority,
            SCOPES=["User.Read"],
            KEY=key,
            FERNET_KEY=key,
        )
    if os.environ.get("DOC_REDIS_URL"):
        _route_redis(os.environ["DOC_REDIS_URL"])
    try:
        namespace = runpy.run_path(script, init_globals=names, run_name="__main__")
        for code in options.get("then", []):
            exec(code, namespace)  # noqa: S102 - the docs' own marker line
    finally:
        if idp is not None:
            idp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
