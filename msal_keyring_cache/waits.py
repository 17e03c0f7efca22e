"""Calls the library cannot interrupt, bounded by abandoning them.

A blocking call into a third party (keyring over D-Bus, an SQL driver without a client-side
timeout) cannot be cancelled from Python. :func:`abandon_after` runs it in a daemon thread
and stops *waiting* at the limit: the caller gets the library's error on time, and the
abandoned thread ends whenever the call does.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

__all__ = ["abandon_after"]

T = TypeVar("T")


def abandon_after(
    limit: float, fn: Callable[[], T], error: Callable[[], BaseException], name: str
) -> T:
    """``fn()``, or ``raise error()`` once ``limit`` seconds passed without an answer.

    ``fn``'s own exception is raised in the caller's thread. ``name`` names the thread.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(limit):
        raise error()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
