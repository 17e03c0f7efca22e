"""Private files (msal_keyring_cache.files): what a caller sees on disk and in errors.

Written for mutants of files.py that no test killed: each test names a promise of the
module's docstring (0600 files, 0700 directories, atomic replace, nothing left behind,
hostile paths refused without blocking) and checks it on the real file system.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from msal_keyring_cache.errors import ConfigError, StoreError
from msal_keyring_cache.files import (
    atomic_write,
    check_regular,
    ensure_private_dir,
    leftovers,
    loose_permissions,
    move_aside,
    open_regular,
    read_file,
    read_file_keep_open,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> object:
    old = os.umask(0o022)
    yield
    os.umask(old)


# -- directories ---------------------------------------------------------------------------


def test_every_missing_directory_is_made_0700_and_existing_ones_keep_their_mode(
    tmp_path: Path, umask_022: object
) -> None:
    kept = tmp_path / "kept"
    kept.mkdir(mode=0o755)
    kept.chmod(0o755)
    deep = kept / "a" / "b" / "c"
    ensure_private_dir(str(deep))
    assert [_mode(p) for p in (kept / "a", kept / "a" / "b", deep)] == [0o700] * 3
    assert _mode(kept) == 0o755  # not ours to change
    ensure_private_dir(str(deep))  # already there: nothing happens
    assert deep.is_dir()


def test_a_file_in_the_way_of_a_directory_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(
        StoreError, match=r"Cannot create directory .*plain/sub: File exists\. Check its parent"
    ):
        ensure_private_dir(str(tmp_path / "plain" / "sub"))
    with pytest.raises(StoreError, match=r"Cannot create directory .*: File exists"):
        ensure_private_dir(str(tmp_path / "plain"))


@pytest.mark.parametrize("attempt", range(4))
def test_directories_made_at_once_by_many_threads_all_succeed(tmp_path: Path, attempt: int) -> None:
    # Several processes may create the cache directory at once: theirs is as good as ours,
    # and each caller returns only once the whole path exists.
    target = tmp_path / "x" / "y" / "z"
    errors: list[object] = []
    start = threading.Barrier(8)

    def make() -> None:
        start.wait()
        try:
            ensure_private_dir(str(target))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        if not target.is_dir():
            errors.append("returned before the directory existed")

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert _mode(target) == 0o700


# -- reading ---------------------------------------------------------------------------------


def test_read_file_returns_everything_even_beyond_one_read(tmp_path: Path) -> None:
    path = tmp_path / "big"
    data = os.urandom(200_000)  # more than one 64 KiB read
    path.write_bytes(data)
    assert read_file(str(path)) == data
    assert read_file(str(tmp_path / "missing")) is None
    path.write_bytes(b"")
    assert read_file(str(path)) == b""


def test_a_file_whose_size_the_kernel_does_not_report_is_read_to_its_end() -> None:
    # /proc files say size 0 and come in pieces: every piece is kept, in order.
    with open("/proc/kallsyms", "rb") as fh:
        expected = fh.read()
    assert len(expected) > 65536
    assert read_file("/proc/kallsyms") == expected


def test_a_file_that_grows_while_read_is_read_to_its_end(tmp_path: Path) -> None:
    path = tmp_path / "grows"
    path.write_bytes(b"a" * 10)
    found = read_file_keep_open(str(path))
    assert found is not None
    data, fd = found
    try:
        assert data == b"a" * 10
        assert os.fstat(fd).st_ino == path.stat().st_ino  # open on the version just read
    finally:
        os.close(fd)


def test_hostile_paths_are_refused_with_the_library_errors(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match=r"fifo is not a regular file"):
        read_file(str(fifo))  # refused at once: no writer needed
    (tmp_path / "dir").mkdir()
    with pytest.raises(StoreError, match=r"dir is not a regular file"):
        read_file(str(tmp_path / "dir"))
    target = tmp_path / "target"
    target.write_bytes(b"secret")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ConfigError, match=r"link is a symbolic link; refusing to follow it"):
        read_file(str(tmp_path / "link"))
    with pytest.raises(ConfigError, match=r"the path contains a NUL character"):
        read_file(str(tmp_path / "a\0b"))
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(StoreError, match=r"Cannot open .*plain/x: Not a directory\."):
        read_file(str(tmp_path / "plain" / "x"))
    os.mkfifo(tmp_path / "fifo-w")  # opened for writing: ENXIO, no reader
    with pytest.raises(StoreError, match=r"fifo-w is not a regular file"):
        open_regular(str(tmp_path / "fifo-w"), os.O_WRONLY)


def test_check_regular_tells_links_files_and_the_rest_apart(tmp_path: Path) -> None:
    check_regular(str(tmp_path / "missing"))  # nothing there yet: fine
    (tmp_path / "plain").write_bytes(b"x")
    check_regular(str(tmp_path / "plain"))
    (tmp_path / "link").symlink_to(tmp_path / "plain")
    with pytest.raises(ConfigError, match=r"link is a symbolic link"):
        check_regular(str(tmp_path / "link"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(StoreError, match=r"fifo is not a regular file \(a directory, FIFO"):
        check_regular(str(tmp_path / "fifo"))
    with pytest.raises(ConfigError, match=r"Cannot use '.*a\\x00b': ValueError\."):
        check_regular(str(tmp_path / "a\0b"))
    with pytest.raises(ConfigError, match=r"Cannot use '.*plain/x': Not a directory\."):
        check_regular(str(tmp_path / "plain" / "x"))


# -- writing ---------------------------------------------------------------------------------


def test_atomic_write_makes_a_private_file_and_keeps_a_read_only_descriptor_on_it(
    tmp_path: Path, umask_022: object
) -> None:
    path = tmp_path / "new" / "cache.bin"
    data = os.urandom(300_000)
    fd = atomic_write(str(path), data)
    try:
        assert path.read_bytes() == data
        assert _mode(path) == 0o600
        assert _mode(path.parent) == 0o700
        assert os.fstat(fd).st_ino == path.stat().st_ino  # the new version, still open
        assert os.pread(fd, 10, 0) == data[:10]
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.write(fd, b"x")  # read-only: a remount read-only is not blocked
    finally:
        os.close(fd)
    os.close(atomic_write(str(path), b"second"))
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["cache.bin"]  # no temporary file left


def test_atomic_write_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    os.close(atomic_write("cache.bin", b"here"))
    assert (tmp_path / "cache.bin").read_bytes() == b"here"
    assert os.listdir(tmp_path) == ["cache.bin"]  # nothing made elsewhere on the way


def test_a_failed_atomic_write_is_a_store_error_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "cache.bin").mkdir()  # os.replace of a file over a directory fails
    with pytest.raises(StoreError, match=r"Cannot write .*cache\.bin: Is a directory\. Check"):
        atomic_write(str(tmp_path / "cache.bin"), b"data")
    assert os.listdir(tmp_path) == ["cache.bin"]  # its temporary file removed
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    (tmp_path / "link.bin").symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        atomic_write(str(tmp_path / "link.bin"), b"data")
    assert target.read_bytes() == b"keep"


def test_a_damaged_file_is_moved_aside_and_listed_among_the_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "cache.bin"
    path.write_bytes(b"damaged")
    aside = move_aside(str(path), "bad header")
    assert aside is not None
    assert re.fullmatch(r".*/cache\.bin\.corrupt-\d{8}T\d{6}-[0-9a-f]{6}", aside)
    assert Path(aside).read_bytes() == b"damaged"
    assert not path.exists()
    assert move_aside(str(path), "bad header") is None  # nothing there any more
    tmp = tmp_path / ".cache.bin.0123456789ab.tmp"
    tmp.write_bytes(b"")
    for other in ("cache.bin", "other.bin.corrupt-1", ".other.bin.x.tmp", ".cache.bin.x.new",
                  "cache.bin.tmp", "xcache.bin.corrupt-1"):  # fmt: skip
        (tmp_path / other).write_bytes(b"")
    assert leftovers(str(path)) == sorted([aside, str(tmp)])
    assert leftovers(str(tmp_path / "missing-dir" / "cache.bin")) == []


def test_moving_aside_what_cannot_be_moved_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "cache.bin"
    path.write_bytes(b"damaged")
    with pytest.raises(StoreError, match=r"damaged \(bad header\) and could not be moved aside"):
        move_aside(str(path / "inside"), "bad header")  # ENOTDIR, not "missing"


def test_loose_permissions_name_the_mode_that_lets_others_read(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"")
    path.chmod(0o600)
    assert loose_permissions(str(path)) is None
    path.chmod(0o640)
    assert loose_permissions(str(path)) == "0o640"
    path.chmod(0o604)
    assert loose_permissions(str(path)) == "0o604"
    assert loose_permissions(str(tmp_path / "missing")) is None


def test_a_name_too_long_for_the_file_system_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / ("c" * 250)  # its temporary file's name is longer than 255 bytes
    with pytest.raises(StoreError, match=r"Cannot write .*: File name too long\. Check"):
        atomic_write(str(path), b"data")
    assert os.listdir(tmp_path) == []


def test_leftovers_beside_a_file_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache.bin").write_bytes(b"damaged")
    aside = move_aside("cache.bin", "bad header")
    assert aside is not None
    assert leftovers("cache.bin") == [os.path.join(".", os.path.basename(aside))]


def test_a_damaged_file_s_name_is_dated_in_utc_whatever_the_local_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9 all year: local time is another day-hour
    time.tzset()
    try:
        path = tmp_path / "cache.bin"
        path.write_bytes(b"x")
        before = time.gmtime()
        aside = move_aside(str(path), "bad header")
        after = time.gmtime()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert aside is not None
    stamp = aside.split(".corrupt-")[1][:15]
    assert stamp in {time.strftime("%Y%m%dT%H%M%S", t) for t in (before, after)}


def test_a_parent_made_by_another_process_meanwhile_still_gets_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process makes the first missing directory between our look and our mkdir:
    # theirs is used, and the directories below it are still made (0700).
    real = os.mkdir
    raced: list[str] = []

    def mkdir(path: str, mode: int = 0o777) -> None:
        if not raced:
            raced.append(path)
            real(path, 0o700)  # the other process
            raise FileExistsError(errno.EEXIST, "File exists", path)
        real(path, mode)

    monkeypatch.setattr(os, "mkdir", mkdir)
    target = tmp_path / "a" / "b" / "c"
    ensure_private_dir(str(target))
    assert raced == [str(tmp_path / "a")]
    assert target.is_dir()
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_a_read_that_fails_is_a_store_error_and_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.bin"
    path.write_bytes(b"data")
    opened: list[int] = []
    real_open = os.open

    def remember(*args: Any, **kw: Any) -> int:
        fd = real_open(*args, **kw)
        opened.append(fd)
        return fd

    def failing(fd: int, n: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "open", remember)
    monkeypatch.setattr(os, "read", failing)
    with pytest.raises(StoreError, match=r"Cannot read .*Input/output error"):
        read_file_keep_open(str(path))
    monkeypatch.undo()
    assert len(opened) == 1
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(opened[0])  # closed


def test_a_file_that_cannot_be_looked_at_after_opening_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: fstat of the just-opened descriptor fails. What was opened is
    # unknown, so it is refused like a FIFO or device, and the descriptor is closed.
    path = tmp_path / "c.bin"
    path.write_bytes(b"data")

    real = os.fstat
    calls: list[int] = []

    def failing(fd: int) -> os.stat_result:
        calls.append(fd)
        if len(calls) == 1:  # open_regular's own; later ones are pytest's
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "fstat", failing)
    with pytest.raises(StoreError, match="is not a regular file"):
        open_regular(str(path), os.O_RDONLY)
    monkeypatch.undo()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(calls[0])  # closed
