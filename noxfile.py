"""Developer tasks: ``nox -s tests | lint | typecheck | docs | bench | compat``."""

from __future__ import annotations

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
        "pytest", "-m", "not slow and not secret_service and not redis", "-q", *session.posargs
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
