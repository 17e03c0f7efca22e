"""A separate process that uses the cache like a real app (run by the tests).

usage: python -m tests.child PORT MODE [ARGS...]
  cc  START COUNT   client-credential acquisitions of api://t/sSTART..; prints each stored scope
  silent USERNAME   prints the token source of a silent acquisition for the signed-in user
Settings come from MSAL_KEYRING_CACHE_* in the environment.
"""

from __future__ import annotations

import json
import sys

from msal_keyring_cache import build_cache
from msal_keyring_cache.testing import loopback_http_client

CLIENT_ID = "00000000-0000-0000-0000-00000000c11d"


def main(argv: list[str]) -> int:
    port, mode = int(argv[0]), argv[1]
    import msal

    cache = build_cache("msal-keyring-cache-tests")
    common = {
        "authority": "https://127.0.0.1/loopback-tenant",
        "http_client": loopback_http_client(port),
        "instance_discovery": False,
        "token_cache": cache,
    }
    if mode == "cc":
        app = msal.ConfidentialClientApplication(CLIENT_ID, client_credential="s", **common)
        start, count = int(argv[2]), int(argv[3])
        for i in range(start, start + count):
            scope = f"api://t/s{i}/.default"
            result = app.acquire_token_for_client([scope])
            if "access_token" not in result:
                print("ERROR", json.dumps(result.get("error")), flush=True)
                return 1
            print(scope, flush=True)
        return 0
    if mode == "silent":
        app = msal.PublicClientApplication(CLIENT_ID, **common)
        accounts = app.get_accounts(username=argv[2])
        result = app.acquire_token_silent(["User.Read"], account=accounts[0]) if accounts else None
        print(
            json.dumps(
                {
                    "source": (result or {}).get("token_source"),
                    "backend": cache.backend_info.backend,
                }
            )
        )
        return 0
    print("unknown mode", mode, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
