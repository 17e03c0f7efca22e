"""Exact change detection on plain files: has the cache file moved on since we saw it?

:class:`FileIdentity` tells whether a file was replaced since we last read or wrote it,
exactly and without reading it: files are only ever replaced whole (``os.replace``) or
appended to, so "same inode" means "same file" and its size tells how much was
appended. We keep the file we saw open, so its inode cannot be freed and reused by a
later file — which is what makes an inode comparison exact where mtime (coarse ticks)
and size are not.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

from .errors import StoreError

__all__ = ["FileIdentity"]


class FileIdentity:
    """Remembers which version of a file we last saw; :meth:`check` says if it moved on."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self._id: Optional[tuple[int, int]] = None
        self._prefix: Optional[bytes] = None  # Windows: the header, which holds a random gen

    def remember(self, fd: Optional[int], prefix: Optional[bytes] = None) -> None:
        """Own ``fd``, open on the version just read or written (``None``: no file)."""
        self.forget()
        if fd is None:
            return
        if os.name == "posix":
            st = os.fstat(fd)
            self._fd, self._id = fd, (st.st_dev, st.st_ino)
        else:  # an open file would block os.replace on Windows
            os.close(fd)
            self._prefix = prefix

    def forget(self) -> None:
        """Close the kept file; the next :meth:`check` reports whether a file exists."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = self._id = self._prefix = None

    @property
    def fd(self) -> Optional[int]:
        """The descriptor kept open on the remembered version (POSIX), if any."""
        return self._fd

    @property
    def inode(self) -> Optional[tuple[int, int]]:
        """``(st_dev, st_ino)`` of the remembered version (POSIX), if any."""
        return self._id

    def changed(self) -> bool:
        """Whether the file now at ``path`` is another version than the one remembered."""
        return self.check()[0]

    def check(self) -> tuple[bool, int]:
        """``(replaced, size)``: whether ``path`` is another version, and its size now.

        Files that are only appended to stay the same version; their size tells the rest.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._id is not None or self._prefix is not None, 0
        except OSError as exc:
            raise StoreError(
                f"Cannot look at {self.path}: {exc.strerror}. Check the directory's permissions."
            ) from None
        if os.name != "posix":
            return self._changed_by_prefix(), st.st_size
        return self._id != (st.st_dev, st.st_ino), st.st_size

    def _changed_by_prefix(self) -> bool:
        try:
            with open(self.path, "rb") as fh:
                return fh.read(len(self._prefix or b"") or 1) != self._prefix
        except FileNotFoundError:
            return self._prefix is not None
        except OSError as exc:
            raise StoreError(f"Cannot read {self.path}: {exc.strerror}.") from None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.forget()
