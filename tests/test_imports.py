"""Imports in the package go one way and never in a circle (issue 11).

Every ``import`` in every module counts — at the top, inside functions, under
``TYPE_CHECKING`` — because a function-level import is still a dependency, only a late
one. A module may import from its own layer or any layer above it in this table, never
from one below:

====  ==============================================  =====================================
 #    modules                                          owns
====  ==============================================  =====================================
 0    ``errors``                                       every public exception
 1    ``files``, ``locking``, ``batch``, ``watch``,    OS files, locks, group commit,
      ``waits``, ``crypto``, ``config``                change counters, bounded waits, …
 2    ``stores``, ``stores.*``                         where the bytes live (Store protocol)
 3    ``cache``, ``http_cache``                        the msal adapters (tokens, discovery)
 4    ``factory``                                      settings → store → cache
 5    everything else (``manage``, ``doctor``,         features built on the above, and
      ``sources``, ``compat``, ``azure``, ``web``,     the package's own ``__init__``
      ``cli``, ``testing`` …)
====  ==============================================  =====================================

A module this table does not name lands in the last layer, so a new feature module needs
no edit here; a new *core* module does.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

import pytest

from tests.helpers import ROOT

PACKAGE = "msal_keyring_cache"
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("files", "locking", "batch", "watch", "waits", "crypto", "config", "index"),
    ("stores",),
    ("cache", "http_cache"),
    ("factory",),
]
LAST = len(LAYERS)


def layer(module: str) -> int:
    """The layer of a dotted module name (the package's ``__init__`` is the top one)."""
    parts = module.split(".")[1:]  # without the package name
    if not parts:
        return LAST
    for index, names in enumerate(LAYERS):
        if parts[0] in names:
            return index
    return LAST


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> Optional[str]:
    if node.level == 0:
        return node.module
    base = importer.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (ancestor packages' ``__init__`` left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_package, node)
            if base is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    found = set()
    for target in targets:
        while target and target not in known:  # `import a.b.c` of a non-module name
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    names = set(known)
    return {name: imports(name, path, names) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
        for src, targets in edges.items()
        for dst in targets
        if layer(dst) > layer(src)
    )


def _edge(text: str) -> tuple[str, str]:
    src, _, rest = text.partition(" (layer ")
    return src, rest.split(" imports ", 1)[1].split(" (layer ", 1)[0]


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_no_upward_import() -> None:
    assert upward(graph()) == []


def test_the_walker_sees_what_it_must() -> None:
    edges = graph()
    assert len(edges) > 20
    # top-level, relative, function-level and TYPE_CHECKING imports all count
    assert "msal_keyring_cache.stores.base" in edges["msal_keyring_cache.cache"]
    assert "msal_keyring_cache.crypto" in edges["msal_keyring_cache.stores.file"]
    assert "msal_keyring_cache.stores.file" in edges["msal_keyring_cache.factory"]  # in a function
    assert "msal_keyring_cache.stores.credential" in edges["msal_keyring_cache.factory"]
    assert layer("msal_keyring_cache.stores.credential") == 2
    assert layer("msal_keyring_cache.something_new") == LAST


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_cycle_finder(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(edges) == expected


def test_upward_finder() -> None:
    edges = {"msal_keyring_cache.errors": {"msal_keyring_cache.cache"}}
    assert upward(edges) == [
        "msal_keyring_cache.errors (layer 0) imports msal_keyring_cache.cache (layer 3)"
    ]
