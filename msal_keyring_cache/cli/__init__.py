"""The ``msal-keyring-cache`` command: see, fix and move a token cache; a demo.

Every subcommand takes the library's settings as flags (generated from
:func:`~msal_keyring_cache.config.describe_settings`), which win over
``MSAL_KEYRING_CACHE_*`` variables, which win over defaults. Keys and passphrases come
only from the environment, never from flags (flags show up in ``ps`` and shell history).

Nothing here prints a token, secret or key, except the two commands whose job it is
(``export --plaintext`` and ``generate-key``). ``status`` and ``accounts`` read only
the non-secret fields of the cache JSON, by name.

Exit codes: 0 ok, 1 a problem was found (or a :class:`~msal_keyring_cache.CacheError`),
2 usage or configuration error.
"""

from __future__ import annotations

from ..errors import CommandError
from .parser import build_parser, main
from .transfer import CRASH_HOOK_VAR as CRASH_HOOK_VAR  # test hook, at its old path

__all__ = ["CommandError", "build_parser", "main"]
