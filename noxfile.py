"""Developer tasks: ``nox -s tests | lint | typecheck | docs | release | bench | compat``."""

from __future__ import annotations

import tarfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite on this interpreter (real daemons: see README)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHONS)
def compat(session: nox.Session) -> None:
    """The fast tests on every supported Python (3.9–3.13)."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "-m",
        "not slow and not secret_service and not redis and not postgres",
        "-q",
        *session.posargs,
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test]", "mypy", "types-requests", "types-redis")
    session.run("mypy", "--strict", "msal_keyring_cache")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (Sphinx + furo + MyST); warnings are errors.

    The configuration table, CLI reference and API pages are generated from the code
    during the build (docs/_ext/docs_gen.py). Output: docs/_build/html.
    """
    session.install(".", "sphinx", "furo", "myst-parser", "pytest")  # pytest: the fixture's docs
    build = ["sphinx-build", "-W", "--keep-going", "-E", "-b", "html"]
    session.run(*build, "docs", "docs/_build/html", *session.posargs)


@nox.session
def release(session: nox.Session) -> None:
    """Build the sdist and wheel, ``twine check`` them, and check the sdist carries the tests."""
    session.install("build", "twine")
    out = session.create_tmp()
    session.run("python", "-m", "build", "--sdist", "--wheel", "--outdir", out, silent=True)
    dists = sorted(str(p) for p in Path(out).iterdir() if p.suffix in {".gz", ".whl"})
    session.run("twine", "check", "--strict", *dists)
    sdist = next(p for p in dists if p.endswith(".tar.gz"))
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = {"LICENSE", "CHANGELOG.md", "README.md", "noxfile.py", "tests/conftest.py",
              "docs/index.md", "docs/conf.py", "examples/flask_app.py"}  # fmt: skip
    missing = sorted(needed - names)
    if missing:
        session.error(f"the sdist lacks {', '.join(missing)}")
    for dist in dists:
        Path(dist).unlink()


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks vs plain msal and msal-extensions; regenerates docs/performance.{md,png}.

    ``nox -s bench -- --quick`` for a smoke run.
    """
    session.install("-e", ".[test]", "msal-extensions", "matplotlib")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session
def mutants(session: nox.Session) -> None:
    """Mutation testing of the core with mutmut 3 (not part of CI; ~35 min on 2 busy cores).

    What is mutated and which tests run: ``[tool.mutmut]`` in pyproject.toml. Prints the
    score and every surviving mutant; ``mutmut show NAME`` in the session shows one.
    ``nox -s mutants -- --max-children 4`` on a bigger machine; one module at a time with
    ``nox -s mutants -- --max-children 1 "msal_keyring_cache.stores.memory*"``.
    The Secret Service tests are included: dbus-daemon and gnome-keyring-daemon must be
    installed (each mutant those tests reach starts its own pair on a private bus).
    Change ``[tool.mutmut]`` or the tests only between runs: mutmut keeps its results in
    ``mutants/`` and re-checks what a change touched; re-check named survivors after adding
    tests with ``nox -s mutants -- NAME …``. Equivalent mutants (listed with the reason in
    tests/mutants_equivalent.txt) are left out of the score; the session fails under 90%.
    See docs/testing.md.
    """
    session.install("-e", ".[test]", "mutmut>=3.3,<4")
    session.run("mutmut", "run", *(session.posargs or ["--max-children", "2"]))
    session.run("python", "-m", "tests.mutation_score", "mutants", "--fail-under", "90")
