"""Sphinx extension: write the generated parts of the docs from the code, at build time.

On ``builder-inited`` it writes Markdown into ``docs/_generated/`` (git-ignored), which
the pages pull in with MyST's ``{include}`` directive:

* ``configuration-table.md`` from :func:`msal_keyring_cache.config.describe_settings`;
* ``cli-reference.md`` from ``msal_keyring_cache.cli.build_parser()`` (a visible note
  while the CLI does not exist yet);
* ``api-optional.md``: autodoc directives for the parts of the API that are optional
  or still being built (the keyring store, the web caches, the CLI module);
* ``other-errors.md``: every ``CacheError`` subclass defined outside ``errors.py``.

The functions are plain Python so ``tests/test_docs.py`` can check them without Sphinx.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import re
from collections.abc import Iterator
from typing import Any, Callable, Optional

GENERATED_DIR = "_generated"


# -- helpers -------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Escape text from the code so Markdown shows it verbatim (no raw HTML, no emphasis)."""
    return re.sub(r"([\\`*_<>|\[\]])", r"\\\1", " ".join(text.split()))


def _cell(text: str) -> str:
    """Text already written as Markdown (``code`` spans) made safe for one table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    """An inline code span that survives any backticks in ``text``."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _show_default(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return _code("1" if value else "0")
    if isinstance(value, float):
        return _code(f"{value:g}")
    return _code(str(value))


def _optional_import(module: str) -> Optional[Any]:
    """Import ``module`` if it exists; ``None`` when it (not one of its imports) is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


# -- the configuration table ------------------------------------------------------------


def cli_flags() -> dict[str, list[str]]:
    """Setting name → the CLI's option strings for it (empty when the CLI is absent)."""
    parser = build_cli_parser()
    flags: dict[str, list[str]] = {}
    if parser is None:
        return flags
    for _, sub in _walk(parser):
        for action in sub._actions:
            if action.option_strings and action.dest not in flags:
                flags.setdefault(action.dest, list(action.option_strings))
    return flags


def settings_table_md() -> str:
    """The configuration reference table, one row per setting of ``Settings``."""
    from msal_keyring_cache.config import DEFAULT_ENV_PREFIX, describe_settings

    flags = cli_flags()
    rows = [
        "| Setting | Environment variable | CLI flag | Type | Default | Meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in describe_settings():
        meaning = row["help"]
        if row["secret"]:
            meaning += " *Secret: never logged, shown or written in clear.*"
        found = flags.get(row["name"]) if row["cli"] else None
        flag = ", ".join(_code(f) for f in found) if found else "—"
        cells = [
            _code(row["name"]),
            _code(row["env"]),
            flag,
            _cell(row["type"]),
            _show_default(row["default"]),
            _cell(meaning),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    note = (
        "Environment variables are shown with the default prefix "
        f"`{DEFAULT_ENV_PREFIX}`; an application that calls "
        '`build_cache(env_prefix="MYTOOL_CACHE")` reads `MYTOOL_CACHE_BACKEND` and so on '
        "instead. An empty variable counts as unset."
    )
    return "\n".join(rows) + "\n\n" + note + "\n"


# -- the CLI reference -------------------------------------------------------------------


def build_cli_parser() -> Optional[argparse.ArgumentParser]:
    """``msal_keyring_cache.cli.build_parser()``, or ``None`` while the CLI is not there."""
    module = _optional_import("msal_keyring_cache.cli")
    build = getattr(module, "build_parser", None)
    if build is None:
        return None
    parser = build()
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError("msal_keyring_cache.cli.build_parser() must return an ArgumentParser")
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, Any]]:
    """(name, one-line help, sub-parser) of each subcommand, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias
                    continue
                seen.add(id(sub))
                yield name, helps.get(name, ""), sub


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for name, _, sub in _subparsers(parser):
        yield from _walk(sub, (*path, name))


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    # argparse wraps usage to the terminal width: fix it so the docs do not depend on it.
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _action_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    extra = []
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        extra.append("one of " + ", ".join(_code(str(c)) for c in action.choices))
    if action.required and action.option_strings:
        extra.append("required")
    out = _escape(text)
    if extra:
        out = (out + " " if out else "") + "(" + "; ".join(extra) + ")"
    return out


def _action_name(action: argparse.Action) -> str:
    if not action.option_strings:
        return _code(str(action.metavar or action.dest))
    takes_value = action.nargs != 0
    metavar = action.metavar or action.dest.upper()
    names = [f"{o} {metavar}" if takes_value else o for o in action.option_strings]
    return ", ".join(_code(n) for n in names)


def _arguments_table(
    parser: argparse.ArgumentParser, common: frozenset[tuple[str, ...]] = frozenset()
) -> list[str]:
    """A table of ``parser``'s arguments, leaving out the ``common`` ones (by option strings)."""
    rows = []
    shared = False
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        if tuple(action.option_strings) in common:
            shared = True
            continue
        rows.append(f"| {_action_name(action)} | {_action_help(parser, action)} |")
    out = ["| Argument | Meaning |", "| --- | --- |", *rows, ""] if rows else []
    if shared:
        out += ["Also takes the [settings options](#settings-options) of the command.", ""]
    return out


def _common_options(parser: argparse.ArgumentParser) -> frozenset[tuple[str, ...]]:
    """Option strings of the top-level options that subcommands repeat (the settings)."""
    return frozenset(
        tuple(a.option_strings)
        for a in parser._actions
        if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
    )


def cli_reference_md() -> str:
    """The CLI reference: usage, description and arguments of every (sub)command."""
    parser = build_cli_parser()
    if parser is None:
        return (
            ":::{note}\nThe CLI reference is not yet available: this build of the package has "
            "no `msal_keyring_cache.cli.build_parser()`. It is generated from the parser as "
            "soon as the command exists.\n:::\n"
        )
    common = _common_options(parser)
    out: list[str] = []
    with _columns(88):
        for path, sub in _walk(parser):
            title = " ".join(path) if path else parser.prog
            out += [f"{'#' * (max(len(path), 1) + 1)} `{title}`", ""]
            desc = sub.description or ""
            if path and not desc:
                desc = _one_line_help(parser, path)
            out += ["```text", sub.format_usage().strip(), "```", ""]
            if desc:
                out += [_escape(desc), ""]
            if path:
                out += _arguments_table(sub, common)
            else:
                out += [*_arguments_table(sub), "### Settings options", "", *_settings_options()]
            if sub.epilog:
                out += ["```text", sub.epilog.strip(), "```", ""]
    return "\n".join(out)


def _settings_options() -> list[str]:
    """Every setting's flag (hidden from ``--help``; ``msal-keyring-cache settings`` lists
    them), accepted by every command. Flags stay whole: the site's CSS never wraps them."""
    from msal_keyring_cache.config import describe_settings

    flags = cli_flags()
    rows = [
        "Every command takes these flags (its `--help` leaves them out; "
        "`msal-keyring-cache settings` lists them). Each wins over its environment variable.",
        "",
        "| Flag | Environment variable | Meaning |",
        "| --- | --- | --- |",
    ]
    for row in describe_settings():
        found = flags.get(row["name"]) if row["cli"] and not row["secret"] else None
        if not found:
            continue
        names = ", ".join(_code(f) for f in found)
        rows.append(f"| {names} | {_code(row['env'])} | {_cell(row['help'])} |")
    rows.append(
        "| `--env-prefix PREFIX` | — | Read `PREFIX_*` variables instead of "
        "`MSAL_KEYRING_CACHE_*`. |"
    )
    return [*rows, ""]


def _one_line_help(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> str:
    current = parser
    text = ""
    for name in path:
        for sub_name, help_text, sub in _subparsers(current):
            if sub_name == name:
                current, text = sub, help_text
                break
    return text


# -- optional API parts and other error classes ------------------------------------------

#: (title, module, object or None for the module, what to say while it is absent)
OPTIONAL_API = [
    ("Keyring store", "msal_keyring_cache.stores.credential", "KeyringStore",
     "the OS credential store (issue 3)"),
    ("Web apps: per-user caches", "msal_keyring_cache.web", "UserCaches",
     "per-user caches on Redis (issue 6)"),
]  # fmt: skip


def api_optional_md() -> str:
    """autodoc directives for the optional or in-progress parts that exist in this build."""
    out: list[str] = []
    for title, module_name, obj, absent in OPTIONAL_API:
        out += [f"## {title}", ""]
        module = _optional_import(module_name)
        if module is None or not hasattr(module, obj):
            out += [":::{note}", f"Not in this build yet: {absent}.", ":::", ""]
            continue
        # autodoc writes reStructuredText: it must run inside eval-rst under MyST.
        out += ["```{eval-rst}", f".. autoclass:: {module_name}.{obj}", "   :members:", "```", ""]
    return "\n".join(out)


def error_classes() -> list[type]:
    """Every ``CacheError`` subclass the package defines, after importing its modules."""
    import msal_keyring_cache
    from msal_keyring_cache.errors import CacheError

    for module in ("stores.credential", "web", "cli"):
        with contextlib.suppress(Exception):
            _optional_import(f"msal_keyring_cache.{module}")
    found: list[type] = []
    todo = [CacheError]
    while todo:
        cls = todo.pop(0)
        if cls.__module__.startswith(msal_keyring_cache.__name__) and cls not in found:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def other_errors_md() -> str:
    """Errors defined outside ``errors.py`` (and ``CorruptCacheError``), from their docstrings."""
    rows = []
    for cls in error_classes():
        if cls.__module__ == "msal_keyring_cache.errors" or cls.__name__ == "CorruptCacheError":
            continue
        doc = inspect.getdoc(cls) or "No description."
        rows += [f"### `{cls.__name__}`", "", f"Defined in `{cls.__module__}`.", "", doc, ""]
    if not rows:
        return "No other error classes in this build.\n"
    return "\n".join(rows)


# -- Sphinx glue ----------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[], str]] = {
    "configuration-table.md": settings_table_md,
    "cli-reference.md": cli_reference_md,
    "api-optional.md": api_optional_md,
    "other-errors.md": other_errors_md,
}


def write_generated(directory: str) -> list[str]:
    """Write every generated file into ``directory``; rewrite only what changed."""
    os.makedirs(directory, exist_ok=True)
    written = []
    texts = {name: generate() for name, generate in GENERATORS.items()}
    texts[".gitignore"] = "*\n"  # the generated files never reach git
    for name, text in texts.items():
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as fh:
                if fh.read() == text:
                    continue
        except FileNotFoundError:
            pass
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(name)
    return written


def _on_builder_inited(app: Any) -> None:
    write_generated(os.path.join(app.srcdir, GENERATED_DIR))


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _on_builder_inited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
