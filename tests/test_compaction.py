"""A compacted file names the file it continues: readers follow it without a full load."""

from __future__ import annotations

import json
from pathlib import Path

from msal_keyring_cache import build_cache, crypto
from msal_keyring_cache.stores import file
from tests.batch_child import entry


def _tokens(cache: object) -> set[str]:
    doc = json.loads(cache.serialize())  # type: ignore[attr-defined]
    assert file.LINK not in doc  # the link never reaches msal's cache
    return set(doc.get("AccessToken", {}))


def test_a_reader_follows_a_compaction_without_decrypting_the_snapshot(
    cache_path: Path, key: str
) -> None:
    writer = build_cache("t", backend="file", path=str(cache_path), key=key)
    reader = build_cache("t", backend="file", path=str(cache_path), key=key)
    writer.merge(entry("first"))
    assert _tokens(reader) == {"first"}
    loads = reader.store.stats.loads
    reader_gen = reader.store._header.gen  # type: ignore[attr-defined]
    for i in range(file.MAX_RECORDS + 5):  # one compaction on the way
        writer.merge(entry(f"k{i}"))
        if i == file.MAX_RECORDS // 2:
            assert _tokens(reader) >= {"first", "k0"}  # the reader is mid-journal
    assert writer.store._header.gen != reader_gen  # type: ignore[attr-defined]
    wanted = {"first"} | {f"k{i}" for i in range(file.MAX_RECORDS + 5)}
    assert _tokens(reader) == wanted
    assert reader.store.stats.loads == loads  # no full load: old records, then the link
    fresh = build_cache("t", backend="file", path=str(cache_path), key=key)
    assert _tokens(fresh) == wanted  # a new reader loads the snapshot and record 1
    for cache in (writer, reader, fresh):
        cache.close()


def test_a_link_to_another_file_means_a_full_load(cache_path: Path, key: str) -> None:
    writer = build_cache("t", backend="file", path=str(cache_path), key=key)
    reader = build_cache("t", backend="file", path=str(cache_path), key=key)
    writer.merge(entry("first"))
    assert _tokens(reader) == {"first"}
    # Replace the file with a compaction that links to some other file.
    blob = crypto.encrypt(
        json.dumps(json.loads(entry("other"))).encode(), crypto.FernetKeys((key,))
    )
    header, _ = crypto.parse_header(blob)
    fkey = crypto.file_key(header, crypto.FernetKeys((key,)))
    link = {file.LINK: {"0" * 32 + ":1": {}}, "AccessToken": {}}
    blob += crypto.seal(json.dumps(link).encode(), fkey, header, 1)
    tmp = cache_path.with_suffix(".new")
    tmp.write_bytes(blob)
    tmp.chmod(0o600)
    tmp.replace(cache_path)
    # (Replaced by hand, the shared change counter did not move: ask the store directly.)
    assert reader.store.read_changes() is None  # "load it whole", never stitched on
    reader.reload()
    assert _tokens(reader) == {"other"}
    writer.close()
    reader.close()
