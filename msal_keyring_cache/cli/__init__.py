"""The ``msal-keyring-cache`` command: see, fix and move a token cache; a demo.

Every command is a call into the library (:mod:`msal_keyring_cache.manage`,
:mod:`msal_keyring_cache.doctor`) plus printing. Settings are flags of every command
(generated from :func:`~msal_keyring_cache.config.describe_settings`; listed by
``msal-keyring-cache settings``), which win over ``MSAL_KEYRING_CACHE_*`` variables, which
win over defaults. Keys and passphrases come only from the environment, never from flags
(flags show up in ``ps`` and shell history).

Nothing here prints a token, secret or key, except the two commands whose job it is
(``export --plaintext`` and ``generate-key``). The looking commands (``status``,
``accounts``, ``doctor``, ``export``) never change anything. With ``--json`` every command
prints exactly one JSON document, also on error.

Exit codes: 0 ok, 1 a problem was found (or a :class:`~msal_keyring_cache.CacheError`),
2 usage or configuration error.
"""

from __future__ import annotations

from ..errors import CommandError
from .parser import build_parser, main

__all__ = ["CommandError", "build_parser", "main"]
