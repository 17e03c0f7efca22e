"""The parser (one flag per setting), ``main()``: dispatch, logging and error handling."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, Optional, TextIO

from .. import __version__
from ..config import BACKENDS, describe_settings
from ..errors import CacheError, ConfigError
from .common import PROG, _Context, _one_line
from .demo import cmd_demo
from .migrate import add_import_arguments, add_migrate_arguments, cmd_import, cmd_migrate
from .show import cmd_accounts, cmd_clear, cmd_doctor, cmd_status
from .transfer import cmd_export, cmd_generate_key, cmd_move, cmd_rotate_key

SETTINGS_HINT = (
    "Settings (backend, path, key file, timeouts …) are flags of every command and "
    "MSAL_KEYRING_CACHE_* variables; list them with: msal-keyring-cache settings"
)

logger = logging.getLogger("msal_keyring_cache")


# -- the parser ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (one JSON document on stdout
    with ``--json``), exit status 2."""

    #: Set by :func:`main` when the command line asks for JSON.
    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            print(json.dumps({"ok": False, "problem": message, "exit": 2}, indent=2))
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _rst_to_plain(text: str) -> str:
    return str(text).replace("``", "").replace("%", "%%")


def _metavar(row: dict[str, Any]) -> str:
    if row["name"] == "backend":
        return "{" + ",".join(BACKENDS) + "}"
    kind = row["type"]
    if "path" in kind:
        return "PATH"
    if "seconds" in kind:
        return "SECONDS"
    return str(row["name"]).upper()


def _settings_flags(
    parser: argparse.ArgumentParser, *, defaults: bool, shown: bool = False
) -> None:
    """Add one flag per CLI setting (``--app-name``, ``--backend`` …) and ``--env-prefix``.

    ``defaults=False`` (the copies on each subcommand) leaves unset flags out of the
    namespace, so a flag given before the subcommand is not reset by the subcommand.
    ``shown=False`` keeps them out of ``--help`` (``msal-keyring-cache settings`` lists them).
    """
    group: Any = parser  # hidden flags need no group heading in --help
    if shown:
        group = parser.add_argument_group(
            "settings",
            "Each flag wins over its MSAL_KEYRING_CACHE_* variable, which wins over the "
            "default. Keys and passphrases are read only from the environment "
            "(MSAL_KEYRING_CACHE_KEY, MSAL_KEYRING_CACHE_PASSPHRASE), never from flags.",
        )
    unset: Any = None if defaults else argparse.SUPPRESS

    def text(words: str) -> str:
        return words if shown else argparse.SUPPRESS

    for row in describe_settings():
        if not row["cli"] or row["secret"]:
            continue
        flag = "--" + row["name"].replace("_", "-")
        words = _rst_to_plain(row["help"]) + f" Environment: {row['env']}."
        if row["type"].startswith("boolean"):
            group.add_argument(
                flag,
                dest=row["name"],
                action=argparse.BooleanOptionalAction,
                default=unset,
                help=text(words),
            )
        else:
            if row["default"] is not None:
                words += f" Default: {row['default']}."
            group.add_argument(
                flag, dest=row["name"], metavar=_metavar(row), default=unset, help=text(words)
            )
    group.add_argument(
        "--env-prefix",
        metavar="PREFIX",
        default=unset,
        help=text(
            "Read settings from PREFIX_* variables instead of MSAL_KEYRING_CACHE_* "
            "(for tools that embed the library under their own prefix)."
        ),
    )


def _add(
    subparsers: Any,
    name: str,
    handler: Callable[[_Context], int],
    summary: str,
    description: str,
    *,
    json_output: bool = True,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=summary, description=description, epilog=SETTINGS_HINT
    )
    parser.set_defaults(handler=handler)
    if json_output:
        parser.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="Print one JSON document instead of text.",
        )
    _settings_flags(parser, defaults=False)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The command's :class:`argparse.ArgumentParser` (the docs' CLI reference comes from it)."""
    parser = _Parser(
        prog=PROG,
        description="Inspect, repair and move the persistent MSAL token cache of "
        "msal-keyring-cache, without ever printing a token. Try: msal-keyring-cache demo",
        epilog=f"{SETTINGS_HINT}. Exit status: 0 ok, 1 a problem was found, 2 usage or "
        "configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Show what the cache does on stderr: backend choice and why, loads, writes, "
        "lock waits (never token text).",
    )
    _settings_flags(parser, defaults=True)
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    sub.required = True

    _add(
        sub,
        "status",
        cmd_status,
        "Show where the cache lives, how it is protected, what it holds.",
        "Show the backend in use and why, where it lives (credential-store service/account or "
        "file path), its protection in plain words, size, entry counts by credential type, "
        "last write and lock file. It changes nothing: a damaged cache, a file that is not "
        "ours or a wrong key is reported as a problem (with what to do), exit status 1.",
    )

    _add(
        sub,
        "accounts",
        cmd_accounts,
        "List the signed-in accounts (never a token).",
        "One row per account: username, home account id, environment, realm, the token "
        "types held, access-token expiries and whether a refresh token exists. It changes "
        "nothing; exit status 1 if the cache cannot be read.",
    )

    clear = _add(
        sub,
        "clear",
        cmd_clear,
        "Delete the cache, or one account's tokens.",
        "Delete every token and account in the cache, or with --account only the "
        "entries of that user. Asks for confirmation unless --yes.",
    )
    clear.add_argument(
        "--account",
        metavar="USERNAME",
        help="Only remove this user's account and tokens (case-insensitive).",
    )
    clear.add_argument("-y", "--yes", action="store_true", help="Do not ask for confirmation.")

    _add(
        sub,
        "doctor",
        cmd_doctor,
        "Check everything the cache depends on; suggest fixes.",
        "Run every check (settings, backend choice, credential store reachable and secure, "
        "D-Bus, probe round trip, file and directory permissions, lock, decryption with the "
        "configured key) and print each as ok/warn/fail with the fix, also when some fail. "
        "It changes nothing (the probe entry is deleted at once). Exit status 1 if any "
        "check fails.",
    )

    _add_adoption(sub)

    export = _add(
        sub,
        "export",
        cmd_export,
        "Print the cache as plaintext JSON (needs --plaintext).",
        "Print the whole cache as msal's plaintext JSON on stdout, or with --output into a "
        "new private file. It contains refresh tokens: only with --plaintext, and keep the "
        "output safe. It changes nothing in the cache.",
        json_output=False,
    )
    export.add_argument(
        "--plaintext",
        action="store_true",
        help="Confirm that you want tokens printed in plaintext.",
    )
    export.add_argument(
        "--output",
        metavar="FILE",
        help="Write to FILE (created with mode 0600, atomically) instead of standard output.",
    )

    rotate = _add(
        sub,
        "rotate-key",
        cmd_rotate_key,
        "Re-encrypt the cache file under a new key.",
        "Re-encrypt the encrypted file under a new key. The new key comes from "
        "MSAL_KEYRING_CACHE_NEW_KEY (or NEW_PASSPHRASE for passphrase files), from "
        "--new-key-file, or is generated into the configured key file. Each step "
        "replaces one file atomically and the key file keeps the old key until the "
        "cache is re-encrypted, so an interruption loses nothing: run it again. The old "
        "keys stay in the key file after the new one (other caches may use the same key "
        "file) unless --drop-old.",
    )
    rotate.add_argument(
        "--new-key-file",
        metavar="PATH",
        help="Read the new Fernet key from this file (its first key).",
    )
    rotate.add_argument(
        "--drop-old",
        action="store_true",
        help="Remove the old keys from the key file once the cache is re-encrypted. Only "
        "when no other cache uses this key file: it could not be decrypted any more.",
    )
    rotate.add_argument("--keep-old", action="store_true", help=argparse.SUPPRESS)  # the default

    move = _add(
        sub,
        "move",
        cmd_move,
        "Move the cache to the credential store or the file.",
        "Copy every entry into the other store, verify it, then delete the source. "
        "Interrupted, both stores hold the tokens: nothing is lost; run it again.",
    )
    move.add_argument(
        "--to", choices=["keyring", "file"], required=True, help="The store to move the cache into."
    )

    _add(
        sub,
        "generate-key",
        cmd_generate_key,
        "Print a new random Fernet key.",
        "Print a new random Fernet key, e.g. for MSAL_KEYRING_CACHE_KEY or a key file: "
        "msal-keyring-cache generate-key > key && chmod 600 key",
        json_output=False,
    )

    demo = _add(
        sub,
        "demo",
        cmd_demo,
        "See it work: sign in, then a second process signs in silently.",
        "Offline, touching none of your caches: start a loopback identity provider, "
        "sign a user in with a real msal.PublicClientApplication, then run a second "
        "process that gets the token from the secure store with no token request. "
        "Uses a temporary app name and directory, backend auto (the credential store "
        "if one answers, else the encrypted file) and ignores MSAL_KEYRING_CACHE_*; "
        "flags still apply.",
    )
    demo.add_argument("--child-port", type=int, help=argparse.SUPPRESS)

    _add(
        sub,
        "settings",
        cmd_settings,
        "List every setting: its flag, variable, default and meaning.",
        "Every setting of the library, as a flag of each command and as an environment "
        "variable (flag > variable > default). Keys and passphrases only come from the "
        "environment.",
    )
    return parser


def _add_adoption(sub: Any) -> None:
    """``migrate`` and ``import``: their arguments and handlers live in :mod:`.migrate`."""
    migrate = _add(
        sub,
        "migrate",
        cmd_migrate,
        "Bring existing MSAL caches (Azure CLI, azure-identity, msal-extensions) in securely.",
        "Merge an existing MSAL token cache into the configured store, keeping the newer "
        "of two equal entries: Azure CLI's msal_token_cache.json or its encrypted Secret "
        "Service entry, azure-identity's ~/.IdentityService caches, any msal-extensions "
        "cache, or any SerializableTokenCache.serialize() output. --list shows what was "
        "found; --delete-source removes the source only after the secure copy is verified.",
    )
    add_migrate_arguments(migrate)
    imp = _add(
        sub,
        "import",
        cmd_import,
        "Merge a plaintext JSON cache file into the store.",
        "Merge msal's JSON cache format from --from PATH (or - for stdin) into the "
        "configured store, keeping the newer of two equal entries; --replace replaces the "
        "whole cache instead.",
    )
    add_import_arguments(imp)


def cmd_settings(ctx: _Context) -> int:
    rows = list(describe_settings(ctx.env_prefix))
    if ctx.json:
        ctx.dump(
            {
                "settings": [
                    {
                        "name": r["name"],
                        "flag": "--" + r["name"].replace("_", "-") if r["cli"] else None,
                        "env": r["env"],
                        "type": _rst_to_plain(r["type"]).replace("%%", "%"),
                        "default": None if r["secret"] else r["default"],
                        "secret": r["secret"],
                        "help": _rst_to_plain(r["help"]).replace("%%", "%"),
                    }
                    for r in rows
                ]
            }
        )
        return 0
    ctx.print(
        "Settings: flag (on every command) > environment variable > default. Secrets "
        "(keys, passphrases) only from the environment."
    )
    for r in rows:
        flag = "--" + r["name"].replace("_", "-") if r["cli"] and not r["secret"] else "(no flag)"
        default = "" if r["default"] is None or r["secret"] else f" [default: {r['default']}]"
        ctx.print("")
        ctx.print(f"{flag}  {r['env']}{default}")
        ctx.print(f"    {_rst_to_plain(r['help']).replace('%%', '%')}")
    ctx.print("")
    ctx.print(
        "--env-prefix PREFIX  read PREFIX_* variables instead of MSAL_KEYRING_CACHE_* "
        "(for tools that embed the library)"
    )
    return 0


# -- main ------------------------------------------------------------------------------------------


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        return f"{PROG}: {level}: {record.getMessage()}"


def _setup_logging(verbose: bool, err: TextIO) -> logging.Handler:
    handler = logging.StreamHandler(err)
    handler.setFormatter(_OneLine())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False
    return handler


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    out, err = sys.stdout, sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    wants_json = "--json" in argv
    for each in [parser, *_subparsers(parser)]:
        each.json_errors = wants_json  # type: ignore[attr-defined]
    args = parser.parse_args(argv)
    saved = (logger.level, logger.propagate)
    handler = _setup_logging(bool(args.verbose), err)
    ctx = _Context(args, out, err)
    try:
        return int(args.handler(ctx))
    except ConfigError as exc:
        return _fail(ctx, str(exc), 2)
    except CacheError as exc:
        return _fail(ctx, str(exc), 1)
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:
        # strerror and filename only, never data.
        where = f" {exc.filename}:" if exc.filename else ""
        return _fail(ctx, f"{where.strip()} {exc.strerror or type(exc).__name__}".strip(), 1)
    except Exception as exc:
        if args.verbose:
            raise
        # A bug, not a user error: its message could quote data, so only its type.
        return _fail(
            ctx,
            f"unexpected {type(exc).__name__}; rerun with -v for the traceback and please "
            "report it",
            1,
        )
    finally:
        logger.removeHandler(handler)  # main() may run inside another program
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _fail(ctx: _Context, message: str, code: int) -> int:
    """One line on stderr; with ``--json`` also the one JSON document, if none was printed."""
    line = _one_line(message)
    if ctx.json and not ctx.dumped:
        ctx.dump({"ok": False, "problem": line, "exit": code})
    ctx.err.write(f"{PROG}: error: {line}\n")
    return code


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(action.choices.values())
    return found
