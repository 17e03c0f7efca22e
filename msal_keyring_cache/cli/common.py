"""What every subcommand shares: the :class:`_Context` (arguments, settings, output)."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any, Optional, TextIO

from ..cache import PersistentTokenCache
from ..config import DEFAULT_ENV_PREFIX, Settings, describe_settings
from ..errors import CacheError
from ..errors import CommandError as CommandError
from ..errors import UsageError as UsageError

PROG = "msal-keyring-cache"


class _Context:
    """What a subcommand needs: its arguments, settings, cache, and output."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.json = bool(getattr(args, "json", False))
        self.env_prefix = (getattr(args, "env_prefix", None) or DEFAULT_ENV_PREFIX).upper()
        #: Whether a JSON document was printed (``main`` prints one on error otherwise).
        self.dumped = False

    def overrides(self) -> dict[str, Any]:
        names = [r["name"] for r in describe_settings() if r["cli"] and not r["secret"]]
        return {n: getattr(self.args, n) for n in names if getattr(self.args, n, None) is not None}

    def settings(self, **extra: Any) -> Settings:
        return Settings.resolve(self.env_prefix, **{**self.overrides(), **extra})

    def cache(
        self, settings: Optional[Settings] = None, *, read_only: bool = False
    ) -> PersistentTokenCache:
        from ..manage import open_cache

        return open_cache(settings or self.settings(), read_only=read_only)

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def dump(self, doc: Any) -> None:
        json.dump(doc, self.out, indent=2, sort_keys=False)
        self.out.write("\n")
        self.dumped = True


def _explained(exc: CacheError, settings: Settings) -> CommandError:
    """A problem met while reading, with what to do about it, as one error to raise."""
    from ..manage import advice

    return CommandError(f"{_one_line(str(exc))} {advice(exc, settings)}")


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()
