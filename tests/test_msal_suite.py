"""msal's own token-cache test suite, run with ``PersistentTokenCache`` in place of msal's caches.

The suite is msal's ``tests/test_token_cache.py`` *of the installed msal version*. It is not
vendored: it is read at test time from

* ``$MSAL_TESTS_DIR/test_token_cache.py`` when that variable is set (a checkout's ``tests``
  directory or an unpacked sdist's), else
* the sdist of the installed version, fetched once with ``pip download --no-binary :all:``
  into pytest's cache directory (``.pytest_cache/d/msal-sdist``).

Every ``TokenCache``/``SerializableTokenCache`` the suite makes becomes a
``PersistentTokenCache`` over a real encrypted file. The differences we keep on purpose are
listed in ``EXPECTED_DIFFERENCES`` and documented in docs/migration.md.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tarfile
import types
import unittest
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache import EncryptedFileStore, PersistentTokenCache, generate_key
from msal_keyring_cache.crypto import FernetKeys

from .helpers import require

#: Test ids of msal's suite that fail with a persistent cache on purpose (docs/migration.md).
EXPECTED_DIFFERENCES: dict[str, str] = {}


def _suite_source(cache_dir: Path) -> str:
    given = os.environ.get("MSAL_TESTS_DIR")
    if given:
        path = Path(given) / "test_token_cache.py"
        require(path.is_file(), f"MSAL_TESTS_DIR has no test_token_cache.py ({path})")
        return path.read_text(encoding="utf-8")
    wanted = version("msal")
    sdist = cache_dir / f"msal-{wanted}.tar.gz"
    if not sdist.exists():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", f"msal=={wanted}", "--dest", str(cache_dir)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        require(sdist.exists(), f"msal {wanted}'s sdist could not be downloaded: {done.stderr}")
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(f"msal-{wanted}/tests/test_token_cache.py")
        require(member is not None, f"msal {wanted}'s sdist holds no tests/test_token_cache.py")
        assert member is not None
        return io.TextIOWrapper(member, encoding="utf-8").read()


def _load_suite(source: str, root: Path) -> types.ModuleType:
    # Their file imports ``unittest`` through their own tests package; we have ours.
    source = source.replace("from tests import unittest", "import unittest")
    module = types.ModuleType("msal_token_cache_suite")
    counter = iter(range(10**6))

    class FileBackedCache(PersistentTokenCache):
        """A PersistentTokenCache over its own encrypted file, made like msal's caches."""

        def __init__(self) -> None:
            path = root / f"cache-{next(counter)}" / "token_cache.bin"
            super().__init__(EncryptedFileStore(str(path), FernetKeys((generate_key(),))))

    root_logger = logging.getLogger()
    saved = (root_logger.level, list(root_logger.handlers))
    try:  # the suite calls logging.basicConfig(level=DEBUG): keep it from the session
        exec(compile(source, "msal/tests/test_token_cache.py", "exec"), module.__dict__)  # noqa: S102
    finally:
        root_logger.setLevel(saved[0])
        root_logger.handlers[:] = saved[1]
    # The substitution: every cache the suite makes is ours.
    module.TokenCache = FileBackedCache  # type: ignore[attr-defined]
    module.SerializableTokenCache = FileBackedCache  # type: ignore[attr-defined]
    return module


@pytest.mark.slow
def test_msal_token_cache_suite_passes_with_persistent_cache(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    cache_dir = Path(request.config.cache.mkdir("msal-sdist"))
    module = _load_suite(_suite_source(cache_dir), tmp_path)
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    assert suite.countTestCases() >= 20  # the real suite, not an empty shell
    result = unittest.TestResult()
    suite.run(result)
    failed: dict[str, Any] = {t.id().split(".", 1)[1]: tb for t, tb in result.failures}
    failed.update({t.id().split(".", 1)[1]: tb for t, tb in result.errors})
    unexpected = {name: tb for name, tb in failed.items() if name not in EXPECTED_DIFFERENCES}
    assert not unexpected, "\n\n".join(f"{name}:\n{tb}" for name, tb in unexpected.items())
    assert result.testsRun == suite.countTestCases()
    assert not set(EXPECTED_DIFFERENCES) - set(failed), "a documented difference went away"


def test_the_substitute_really_is_persistent(tmp_path: Path) -> None:
    """The cache the suite runs against stores each change (a fresh object reads it back)."""
    module = _load_suite("from tests import unittest\n", tmp_path)
    cache = module.TokenCache()
    cache.add({"client_id": "c", "scope": ["s"], "token_endpoint": "https://x/t",
               "response": {"access_token": "a", "expires_in": 3600}})  # fmt: skip
    assert cache.has_state_changed  # msal's meaning: changed since the last serialize()
    again = PersistentTokenCache(EncryptedFileStore(cache.store.path, cache.store.key_source))
    assert len(list(again.search("AccessToken"))) == 1
    cache.serialize()
    assert not cache.has_state_changed
