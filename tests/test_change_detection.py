"""Change detection (msal_keyring_cache.watch) seen from outside: another process writes, we notice.

Written for mutants of watch.py that no test killed. The writer is a real separate
process where the promise is about other processes (the shared ``.gen`` counter).
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest

from msal_keyring_cache.errors import StoreError
from msal_keyring_cache.watch import FileIdentity, Generation
from tests.helpers import PYTHON, ROOT, child_env


def _value(path: Path) -> int:
    return int.from_bytes(path.read_bytes(), "little")


def _child_steps(path: Path, *steps: str) -> None:
    """Another process calls ``begin``/``end`` on the counter at ``path``."""
    code = (
        "import sys; from msal_keyring_cache.watch import Generation\n"
        "g = Generation(sys.argv[1])\n"
        "for step in sys.argv[2:]:\n"
        "    getattr(g, step)()\n"
    )
    subprocess.run([PYTHON, "-c", code, str(path), *steps], cwd=ROOT, env=child_env(),
                   check=True, timeout=60)  # fmt: skip


def _looked(reader: Generation) -> None:
    """An exact check ran: the reader vouches for what it peeked before it."""
    reader.vouch(reader.peek())


# -- the shared counter ----------------------------------------------------------------------


def test_a_reader_trusts_the_counter_until_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "cache.bin.gen"
    first = Generation(str(path))
    assert first.peek() == -1  # no counter yet: exact checks only
    first.vouch(-1)
    assert not first.unchanged()
    _child_steps(path, "begin", "end")
    assert _value(path) == 2  # odd during the write, even after it
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    reader = Generation(str(path))
    assert reader.peek() == 2
    assert not reader.unchanged()  # nothing vouched for before an exact check
    _looked(reader)
    assert reader.unchanged()
    _child_steps(path, "begin")  # a write in progress in another process
    assert not reader.unchanged()
    _looked(reader)  # an odd value is never trusted, even after an exact check
    assert not reader.unchanged()
    _child_steps(path, "end")
    assert not reader.unchanged()
    _looked(reader)
    assert reader.unchanged()
    reader.RECHECK = 0.0  # its time for an exact check comes at once
    _looked(reader)
    assert not reader.unchanged()


def test_a_writer_killed_mid_write_leaves_the_counter_odd_until_the_next_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache.bin.gen"
    _child_steps(path, "begin")  # killed before its end
    assert _value(path) == 1
    writer = Generation(str(path))
    writer.begin()  # odd already: stays odd
    assert _value(path) == 1
    writer.end()
    assert _value(path) == 2
    writer.end()  # even already: stays
    assert _value(path) == 2


def test_the_counter_never_returns_to_a_value_a_reader_trusted(tmp_path: Path) -> None:
    path = tmp_path / "cache.bin.gen"
    old = os.umask(0o022)
    try:
        writer = Generation(str(path))
        writer.begin()  # creates the counter file, private whatever the umask
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    writer.end()
    reader = Generation(str(path))
    _looked(reader)
    seen = set()
    for _ in range(70):
        writer.begin()
        writer.end()
        seen.add(_value(path))
        assert not reader.unchanged()
    assert len(seen) == 70


def test_a_counter_file_replaced_by_hand_is_mapped_again(tmp_path: Path) -> None:
    path = tmp_path / "cache.bin.gen"
    _child_steps(path, "begin", "end", "begin", "end")
    reader = Generation(str(path))
    reader.RECHECK = 0.0
    _looked(reader)
    assert reader.peek() == 4
    path.unlink()  # deleted by hand; the next writer makes a new one
    _child_steps(path, "begin", "end")
    _looked(reader)  # the exact check notices the new file and maps it
    assert reader.peek() == 2
    reader.close()
    assert reader.peek() == 2  # mapped again on use


def test_a_counter_that_is_not_a_regular_file_is_never_trusted(tmp_path: Path) -> None:
    path = tmp_path / "cache.bin.gen"
    path.mkdir()
    writer = Generation(str(path))
    writer.begin()  # no error: readers check exactly instead
    writer.end()
    reader = Generation(str(path))
    _looked(reader)
    assert reader.peek() == -1
    assert not reader.unchanged()
    short = tmp_path / "short.gen"
    short.write_bytes(b"\2\0\0")  # too short to map
    reader = Generation(str(short))
    _looked(reader)
    assert reader.peek() == -1
    assert not reader.unchanged()


def test_a_counter_word_with_its_top_bit_set_is_still_trusted(tmp_path: Path) -> None:
    # The counter is one unsigned 64-bit word: a value of 2**63 or more (written by hand,
    # or by a tool that does not wrap as begin/end do) is a value like any other, and a
    # reader vouches for it; the next write wraps it (mod 2**63) and is seen.
    path = tmp_path / "cache.bin.gen"
    value = 2**64 - 2  # even: no write in progress
    path.write_bytes(value.to_bytes(8, "little"))
    reader = Generation(str(path))
    assert reader.peek() == value
    _looked(reader)
    assert reader.unchanged()
    _child_steps(path, "begin", "end")
    assert not reader.unchanged()
    assert _value(path) == 0  # (value + 1) % 2**63 = 2**63 - 1 (odd), then 0


def test_this_process_s_own_writes_wrap_a_counter_word_with_its_top_bit_set(
    tmp_path: Path,
) -> None:
    # As above, with the writer in this process: past 2**64 the word would not fit.
    path = tmp_path / "cache.bin.gen"
    path.write_bytes((2**64 - 2).to_bytes(8, "little"))
    writer = Generation(str(path))
    writer.begin()
    assert _value(path) % 2 == 1  # a write in progress
    writer.end()
    assert _value(path) == 0
    writer.close()


def test_a_process_s_own_first_write_makes_its_counter_usable_at_once(tmp_path: Path) -> None:
    # No counter file when it first looked; its own write creates one: the next look
    # maps it, without waiting out the retry interval for a missing file.
    path = tmp_path / "cache.bin.gen"
    store = Generation(str(path))
    assert store.peek() == -1  # no counter yet (and the next try is RECHECK away)
    store.begin()
    store.end()
    assert store.peek() == 2
    _looked(store)
    assert store.unchanged()


def test_a_counter_mapped_anew_mid_write_is_not_trusted(tmp_path: Path) -> None:
    # The counter file is replaced (deleted by hand, made again by a writer that is in
    # the middle of its write: 1). A reader that trusted the old one maps the new one:
    # nothing it vouched for before carries over to it.
    path = tmp_path / "cache.bin.gen"
    _child_steps(path, "begin", "end", "begin", "end")
    reader = Generation(str(path))
    _looked(reader)
    assert reader.unchanged()
    path.unlink()
    _child_steps(path, "begin")
    assert _value(path) == 1
    reader.RECHECK = 0.0  # its time to compare the mapped file with the path comes at once
    assert reader.peek() == -1  # the new file, mapped: odd
    assert not reader.unchanged()


def test_a_link_planted_at_the_counter_path_is_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"\x02" + b"\0" * 7)
    path = tmp_path / "cache.bin.gen"
    path.symlink_to(target)
    writer = Generation(str(path))
    writer.begin()
    writer.end()
    assert target.read_bytes() == b"\x02" + b"\0" * 7
    reader = Generation(str(path))
    _looked(reader)
    assert reader.peek() == -1  # not mapped through the link either: exact checks only


def test_a_counter_that_cannot_be_written_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "plain").write_bytes(b"")
    path = tmp_path / "plain" / "cache.bin.gen"  # inside a file: cannot be created
    writer = Generation(str(path))
    with caplog.at_level(logging.WARNING, logger="msal_keyring_cache"):
        writer.begin()
        writer.end()
        Generation(str(path)).begin()
    warnings = [r.getMessage() for r in caplog.records if "change counter" in r.getMessage()]
    assert len(warnings) == 1
    assert str(path) in warnings[0]
    assert "within 1 s instead of at once" in warnings[0]


# -- file identity ---------------------------------------------------------------------------


def test_identity_tells_a_replaced_file_from_an_appended_one(tmp_path: Path) -> None:
    path = tmp_path / "cache.bin"
    identity = FileIdentity(str(path))
    assert identity.check() == (False, 0)  # nothing seen, nothing there
    assert not identity.changed()
    path.write_bytes(b"12345")
    assert identity.check() == (True, 5)  # another process created it

    fd = os.open(path, os.O_RDONLY)
    identity.remember(fd)
    assert identity.fd == fd
    assert identity.inode == (path.stat().st_dev, path.stat().st_ino)
    assert identity.check() == (False, 5)
    with open(path, "ab") as fh:
        fh.write(b"678")
    assert identity.check() == (False, 8)  # appended: the same version, longer
    new = tmp_path / "new"
    new.write_bytes(b"ab")
    os.replace(new, path)
    assert identity.check() == (True, 2)
    assert identity.changed()
    path.unlink()
    assert identity.check() == (True, 0)

    identity.forget()
    assert (identity.fd, identity.inode) == (None, None)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # the kept descriptor was closed
    assert identity.check() == (False, 0)
    identity.remember(None)
    assert identity.fd is None


def test_identity_cannot_look_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"")
    identity = FileIdentity(str(tmp_path / "plain" / "cache.bin"))
    with pytest.raises(StoreError, match=r"Cannot look at .*cache\.bin: Not a directory\. Check"):
        identity.check()


def test_forgetting_a_descriptor_already_closed_elsewhere_is_quiet(tmp_path: Path) -> None:
    # The kept descriptor was closed behind the identity's back (EBADF on close): forget
    # still forgets, without an error.
    path = tmp_path / "cache.bin"
    path.write_bytes(b"x")
    identity = FileIdentity(str(path))
    fd = os.open(path, os.O_RDONLY)
    identity.remember(fd)
    os.close(fd)
    identity.forget()
    assert identity.fd is None
    assert identity.changed() is True  # a file is there, none is remembered
