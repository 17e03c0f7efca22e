"""The docs agree with the code, and every code sample in them runs.

* The generated configuration table (docs/_ext/docs_gen.py) has a row for every setting,
  with its environment variable, type, default and meaning.
* Every error class is explained in troubleshooting.md.
* Every ```python block in docs/*.md runs — none is exempt — in a fresh subprocess with a
  temporary HOME, no keyring or D-Bus of the developer's, and no MSAL_KEYRING_CACHE_*
  variables (through tests/doc_prelude.py). Markers, as comment lines inside the block
  (docs/conf.py strips them from the site):
  ``# doc: loopback`` — msal apps talk to a loopback identity provider whatever authority
  they name; the prose's placeholders (CLIENT_ID, SECRET, KEY …) are defined;
  ``# doc: redis`` / ``# doc: redis-cluster`` — Redis URLs reach a private real server;
  ``# doc: secret-service`` — keyring uses a private real Secret Service;
  ``# doc: then CODE`` — run after the block in its namespace (call what it defines);
  ``# doc: requires TOOL [TOOL ...]`` — needs these programs.
  A missing daemon or tool skips, and fails under CI=true.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from msal_keyring_cache import errors
from msal_keyring_cache.config import Settings, describe_settings
from tests.helpers import ROOT, child_env, require_module, require_tool

DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import docs_gen  # noqa: E402 - from docs/_ext

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
SNIPPET_TIMEOUT = 180


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block whose info string is ``python``."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip(), i + 1
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^ *{re.escape(fence)}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        i += 1
        if info.split()[:1] == ["python"]:
            blocks.append((start, "\n".join(body) + "\n"))
    return blocks


def doc_snippets() -> list[object]:
    params = []
    for page in sorted(DOCS.glob("*.md")):
        for line, code in python_blocks(page.read_text(encoding="utf-8")):
            params.append(pytest.param(page.name, line, code, id=f"{page.name}:{line}"))
    return params


MARKER = re.compile(r"^\s*#\s*doc:\s*([\w-]+)(.*)$", re.MULTILINE)
KNOWN_MARKERS = {"loopback", "redis", "redis-cluster", "secret-service", "then", "requires"}


def _markers(code: str) -> dict[str, list[str]]:
    """Marker name -> its text, one entry per marker line."""
    found: dict[str, list[str]] = {}
    for m in MARKER.finditer(code):
        found.setdefault(m[1], []).append(m[2].strip())
    return found


def snippet_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if not k.startswith("MSAL_KEYRING_CACHE_")}
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        # No credential store of the developer's is ever touched by a doc sample.
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    return env


# Blocks allowed to opt out, by page and first line, until they are made runnable (the lead
# decides at merge): each is a fragment whose names come from a web framework.
NOT_RUN: set[tuple[str, str]] = set()  # (page, first line) of a fragment that cannot run


def _opted_out(page: str, code: str) -> bool:
    first = next((x for x in code.splitlines() if x.strip() and not MARKER.match(x)), "")
    return (page, first.split("  #")[0].strip()) in NOT_RUN


@pytest.mark.parametrize(("page", "line", "code"), doc_snippets())
def test_doc_snippet_runs(
    page: str, line: int, code: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    markers = _markers(code)
    if _opted_out(page, code):
        pytest.skip("a framework fragment (listed in NOT_RUN)")
    assert set(markers) <= KNOWN_MARKERS, f"docs/{page}:{line}: unknown marker"
    for tools in markers.get("requires", []):
        require_tool(*tools.split())
    home = tmp_path / "home"
    home.mkdir()
    env = snippet_env(home)
    env["DOC_OPTIONS"] = json.dumps(
        {"loopback": "loopback" in markers, "then": markers.get("then", [])}
    )
    if "redis" in markers:
        env["DOC_REDIS_URL"] = request.getfixturevalue("redis_server").url
    if "redis-cluster" in markers:
        env["DOC_REDIS_URL"] = request.getfixturevalue("redis_cluster").url
    if "secret-service" in markers:
        service = request.getfixturevalue("secret_service")
        for name in ("DBUS_SESSION_BUS_ADDRESS", "GNOME_KEYRING_CONTROL"):
            if name in service.env:
                env[name] = service.env[name]
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.SecretService.Keyring"
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "tests.doc_prelude", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SNIPPET_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, (
        f"the python block at docs/{page}:{line} failed:\n{done.stdout}\n{done.stderr}"
    )


def test_every_snippet_is_run() -> None:
    # index.md says every python sample is run: no block may opt out.
    snippets = doc_snippets()
    assert len(snippets) >= 12
    for param in snippets:
        page, line, code = param.values  # type: ignore[attr-defined]
        if not _opted_out(page, code):
            assert "no-run" not in _markers(code), f"docs/{page}:{line} is not run"
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    claim = r"(Every|The)\s+`python`\s+code\s+samples?\s+on\s+these\s+pages\s+(is|are)\s+run\s+by"
    assert re.search(claim, index, re.DOTALL)


def test_markers_are_hidden_from_the_site() -> None:
    sys.path.insert(0, str(DOCS))
    try:
        import conf
    finally:
        sys.path.remove(str(DOCS))
    text = "intro\n\n```python\n# doc: loopback\nimport msal  # doc: not a marker line\n```\n"
    source = [text]
    conf.strip_doc_markers(None, "quickstart", source)
    assert source == ["intro\n\n```python\nimport msal  # doc: not a marker line\n```\n"]


def test_block_extraction() -> None:
    text = "x\n```python\na = 1\n```\n````md\n```python\nnested\n```\n````\n```pycon\n>>> 1\n```\n"
    assert python_blocks(text) == [(2, "a = 1\n")]


# -- generated parts ---------------------------------------------------------------


def test_configuration_table_covers_every_setting() -> None:
    table = docs_gen.settings_table_md()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    described = list(describe_settings())
    settings = [f for f in dataclasses.fields(Settings) if "env" in f.metadata]
    assert len(rows) == len(described) == len(settings)
    for row, setting in zip(rows, described):
        assert f"`{setting['name']}`" in row
        assert f"`{setting['env']}`" in row
        assert docs_gen._cell(setting["type"]) in row
        assert docs_gen._cell(setting["help"]) in row
        assert docs_gen._show_default(setting["default"]) in row


def test_configuration_page_includes_the_generated_table() -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert "_generated/configuration-table.md" in page


def test_generated_files_are_written_and_ignored(tmp_path: Path) -> None:
    written = docs_gen.write_generated(str(tmp_path))
    assert set(written) == {*docs_gen.GENERATORS, ".gitignore"}
    assert (tmp_path / ".gitignore").read_text() == "*\n"
    assert docs_gen.write_generated(str(tmp_path)) == []  # unchanged: nothing rewritten


def test_cli_reference_matches_the_parser() -> None:
    text = docs_gen.cli_reference_md()
    parser = docs_gen.build_cli_parser()
    if parser is None:
        assert "not yet available" in text
        return
    common = docs_gen._common_options(parser)
    for path, sub in docs_gen._walk(parser):
        section = text
        if path:
            title = f"## `{' '.join(path)}`"
            assert title in text
            section = text.split(title, 1)[1].split("\n## ", 1)[0]
            assert sub.format_usage().split()[2] in section  # usage of this subcommand
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:
                continue
            if path and tuple(action.option_strings) in common:
                assert "(#settings-options)" in section
                continue
            for name in action.option_strings or [str(action.metavar or action.dest)]:
                assert f"`{name}" in section, f"{name} of {' '.join(path) or 'the command'}"


def test_every_error_class_is_in_troubleshooting() -> None:
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    names = [*errors.__all__, "CorruptCacheError"]
    for name in names:
        assert re.search(rf"^#+ `{name}`", page, re.MULTILINE), f"{name} is not explained"


def test_every_page_is_in_a_toctree() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        if page.name != "index.md":
            assert re.search(rf"^{re.escape(page.stem)}$", index, re.MULTILINE), page.name


@pytest.mark.slow
def test_site_builds_without_warnings(tmp_path: Path) -> None:
    require_module("sphinx", "myst_parser", "furo")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    api = (tmp_path / "html" / "api.html").read_text(encoding="utf-8")
    # autodoc really ran (its reStructuredText was not shown as Markdown text).
    assert ".. py:" not in api
    assert ":module:" not in api
    for name in ["build_cache", "PersistentTokenCache", "Settings", "EncryptedFileStore",
                 *errors.__all__]:  # fmt: skip
        assert f'id="msal_keyring_cache.{name}"' in api, name
    assert 'id="msal_keyring_cache.testing.LoopbackIdentityProvider"' in api
    for page in (tmp_path / "html").glob("*.html"):
        assert "doc: " not in page.read_text(encoding="utf-8"), f"a marker shows on {page.name}"
    config = (tmp_path / "html" / "configuration.html").read_text(encoding="utf-8")
    for row in describe_settings():
        assert row["env"] in config
