"""``python -m msal_keyring_cache``: the ``msal-keyring-cache`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
